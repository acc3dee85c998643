"""Checkpoints of a learning run: the merges so far plus the segmentation they produced.

Resuming rebuilds every statistic from the saved segmentation, which determines them exactly,
so a resumed run ends with the same vocabulary as an uninterrupted one. A checkpoint is used only
if the inputs and settings match; otherwise resuming refuses with the differences.

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


class Checkpoint:
    def __init__(self, directory: str, options: StorageOptions | None = None):
        self.dir, self.options = directory, options

    def load(self) -> Saved | None:
        pointer = storage.join(self.dir, POINTER)
        if not storage.exists(pointer, self.options):
            return None
        data = json.loads(storage.read_text(pointer, self.options))
        return Saved([Merge.from_json(m) for m in data["merges"]], float(data["alpha"]),
                     storage.join(self.dir, data["state"]), data["settings"])

    def save(self, merges: list[Merge], alpha: float, settings: dict[str, Any], write_state) -> None:
        """`write_state(directory)` writes the segmentation; the pointer moves only once it is complete."""
        name = f"state-{len(merges):07d}"
        state_dir = storage.join(self.dir, name)
        storage.makedirs(state_dir, self.options)
        write_state(state_dir)
        previous = self.load()
        body = {"merges": [m.to_json() for m in merges], "alpha": alpha, "state": name, "settings": settings}
        storage.write_text(storage.join(self.dir, POINTER), json.dumps(body) + "\n", self.options)
        if previous is not None and previous.state_dir != state_dir:
            fs, p = storage.get_fs(previous.state_dir, self.options)
            try:
                fs.rm(p, recursive=True)
            except FileNotFoundError:
                pass
        log.info("checkpoint: %d merges -> %s", len(merges), state_dir)


def check_compatible(saved: Saved, settings: dict[str, Any], where: str) -> None:
    diffs = [f"{k}: checkpoint {saved.settings.get(k)!r}, now {v!r}" for k, v in settings.items() if saved.settings.get(k) != v]
    if diffs:
        raise InputError(f"cannot resume from {where}, the run differs:\n  " + "\n  ".join(diffs))
