"""A stage's checkpoints on storage, and which one to resume from.

    <root>/checkpoint-step-00000040/   the files every rank wrote for step 40, then COMPLETE.json

A checkpoint counts once it is complete on storage: every rank wrote its files into a local
directory and copied them up, all ranks met at a barrier, then rank 0 wrote `COMPLETE.json` (the
step and the size of every file) last. Resume takes the newest checkpoint whose marker is valid and
whose files are all there with those sizes; a checkpoint cut short by a killed process has no marker
and is ignored. This does not depend on Ray Train having registered the checkpoint before a worker
died (Ray's checkpoint registry is not used at all).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

from pipeline import storage
from schemas.base import StorageOptions

log = logging.getLogger(__name__)
MARKER = "COMPLETE.json"
_NAME = re.compile(r"checkpoint-step-(\d{8})$")


def _name(step: int) -> str:
    return f"checkpoint-step-{step:08d}"


@dataclass(frozen=True)
class CheckpointStore:
    root: str  # local path or s3:// URL
    options: StorageOptions | None = None

    def path(self, step: int) -> str:
        return storage.join(self.root, _name(step))

    def _listing(self) -> dict[int, str]:
        if not storage.exists(self.root, self.options):
            return {}
        fs, p = storage.get_fs(self.root, self.options)
        out = {}
        for entry in fs.ls(p, detail=False):
            m = _NAME.search(entry.rstrip("/"))
            if m:
                out[int(m.group(1))] = self.path(int(m.group(1)))
        return out

    def _complete(self, path: str) -> dict | None:
        """The marker of a complete checkpoint, or None."""
        marker = storage.join(path, MARKER)
        try:
            info = json.loads(storage.read_text(marker, self.options))
            fs, p = storage.get_fs(path, self.options)
            sizes = {os.path.relpath(f, p): int(d["size"]) for f, d in fs.find(p, detail=True).items()}
        except (FileNotFoundError, ValueError, KeyError):
            return None
        files = info.get("files", {})
        if not isinstance(files, dict) or any(sizes.get(name) != size for name, size in files.items()):
            return None
        return info

    def latest(self) -> tuple[int, str] | None:
        """(step, path) of the newest complete checkpoint."""
        for step, path in sorted(self._listing().items(), reverse=True):
            if self._complete(path) is not None:
                return step, path
            log.warning("ignoring incomplete checkpoint %s", path)
        return None

    def save(self, step: int, rank: int, write: Callable[[str], None], barrier: Callable[[], None]) -> str:
        """Every rank calls this: `write(local_dir)` writes this rank's files (names unique across ranks)."""
        dest = self.path(step)
        if rank == 0 and storage.exists(dest, self.options):  # left by an attempt that died before completing it
            fs, p = storage.get_fs(dest, self.options)
            fs.rm(p, recursive=True)
        barrier()
        with tempfile.TemporaryDirectory(prefix="vbpe-ckpt-") as tmp:
            write(tmp)
            _upload(tmp, dest, self.options)
        barrier()
        if rank == 0:
            fs, p = storage.get_fs(dest, self.options)
            files = {os.path.relpath(f, p): int(d["size"]) for f, d in fs.find(p, detail=True).items()}
            storage.write_text(storage.join(dest, MARKER), json.dumps({"step": step, "files": files}, indent=1), self.options)
        barrier()
        return dest

    def prune(self, keep: int) -> None:
        """Keep the newest `keep` complete checkpoints; drop older ones and incomplete ones older than those."""
        listing = sorted(self._listing().items(), reverse=True)
        kept = 0
        for step, path in listing:
            if kept < keep:
                kept += self._complete(path) is not None
                continue
            fs, p = storage.get_fs(path, self.options)
            fs.rm(p, recursive=True)


def _upload(local: str, dest: str, options: StorageOptions | None) -> None:
    names = [os.path.relpath(os.path.join(r, f), local) for r, _, fs_ in os.walk(local) for f in fs_]
    if not storage.is_remote(dest):
        for name in names:
            target = os.path.join(dest, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(local, name), target)
        return
    fs, p = storage.get_fs(dest, options)
    for name in names:
        fs.put_file(os.path.join(local, name), f"{p.rstrip('/')}/{name}")
