"""Checkpoints of a learning run: the merges so far plus the segmentation they produced.

Resuming rebuilds every statistic from the saved segmentation, which determines them exactly,
so a resumed run ends with the same vocabulary as an uninterrupted one. A checkpoint is used only
if the inputs and settings match: inputs by content identity (path, rows, size and the store's
stamp: ETag or mtime) before anything is read, and by the fingerprint of the accepted grids
once they are; otherwise resuming refuses with one line naming the difference. A checkpoint that
cannot be read (truncated pointer, corrupt state file) is refused with one line too.

Layout: <dir>/checkpoint.json (written last, atomically where the filesystem allows) names the
state directory <dir>/state-<merges>/ holding one npz per row range (see shard_group.py).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pipeline import storage
from pipeline.bpe.vocab import Merge
from schemas.base import InputError, StorageOptions

log = logging.getLogger(__name__)
POINTER = "checkpoint.json"


@dataclass
class Saved:
    merges: list[Merge]
    alpha: float
    state_dir: str
    settings: dict[str, Any]
    corpus: str | None = None  # fingerprint of the accepted grids the state belongs to


class Checkpoint:
    def __init__(self, directory: str, options: StorageOptions | None = None):
        self.dir, self.options = directory, options

    @property
    def pointer(self) -> str:
        return storage.join(self.dir, POINTER)

    def load(self) -> Saved | None:
        if not storage.exists(self.pointer, self.options):
            return None
        try:
            data = json.loads(storage.read_text(self.pointer, self.options))
            return Saved([Merge.from_json(m) for m in data["merges"]], float(data["alpha"]),
                         storage.join(self.dir, data["state"]), dict(data["settings"]), data.get("corpus"))
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise InputError(f"checkpoint {self.pointer} is unreadable ({type(err).__name__}: {err}); delete "
                             f"{self.dir} to start over") from None

    def save(self, merges: list[Merge], alpha: float, settings: dict[str, Any], write_state,
             corpus: str | None = None) -> None:
        """`write_state(directory)` writes the segmentation; the pointer moves only once it is complete."""
        name = f"state-{len(merges):07d}"
        state_dir = storage.join(self.dir, name)
        storage.makedirs(state_dir, self.options)
        write_state(state_dir)
        try:
            previous = self.load()
        except InputError:  # a damaged pointer is simply replaced
            previous = None
        body = {"merges": [m.to_json() for m in merges], "alpha": alpha, "state": name, "settings": settings,
                "corpus": corpus}
        storage.write_text(self.pointer, json.dumps(body, allow_nan=False) + "\n", self.options)
        if previous is not None and previous.state_dir != state_dir:
            fs, p = storage.get_fs(previous.state_dir, self.options)
            try:
                fs.rm(p, recursive=True)
            except FileNotFoundError:
                pass
        log.info("checkpoint: %d merges -> %s", len(merges), state_dir)


def differences(saved: Saved, settings: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's run and this one, one short phrase each."""
    out = []
    for key, now in settings.items():
        then = saved.settings.get(key)
        if then == now:
            continue
        if key == "inputs":
            out.append(_input_changes(then or [], now))
        else:
            out.append(f"{key} {then!r} -> {now!r}")
    return out


def _input_changes(then: list, now: list) -> str:
    old = {str(e[0]): e for e in then if isinstance(e, (list, tuple)) and e}
    new = {str(e[0]): e for e in now}
    added = [p for p in new if p not in old]
    removed = [p for p in old if p not in new]
    changed = [p for p in new if p in old and list(old[p]) != list(new[p])]
    parts = []
    for label, paths in (("new", added), ("removed", removed), ("changed", changed)):
        if paths:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            parts.append(f"{len(paths)} {label} ({paths[0].rsplit('/', 1)[-1]}{more})")
    return "inputs changed: " + ", ".join(parts or ["in order"])


def check_compatible(saved: Saved, settings: dict[str, Any], where: str) -> None:
    diffs = differences(saved, settings)
    if diffs:
        raise InputError(f"cannot resume from {where}: {'; '.join(diffs)} (start afresh without --resume, or with "
                         f"resume: auto, which does so by itself when the inputs change)")
