"""Batch geometry of a stage, and prepared sequences read whole (for evaluation of small sets).

A step consumes one global batch of batch_size * grad_accum * world_size sequences from the plan
(the last one is completed with the plan's first sequences, so nothing is dropped); which worker
trains on which sequence of it is `stream.assign`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.train.sequences import IGNORE
from schemas.base import StorageOptions


@dataclass
class Sequences:
    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    targets: np.ndarray  # per row: labels that some position predicts (labels[1:] != IGNORE)

    @classmethod
    def read(cls, path: str, options: StorageOptions | None = None) -> "Sequences":
        with storage.open_file(path, options=options) as f:
            table = pq.read_table(f, columns=["input_ids", "labels"])
        ids_col = table.column("input_ids").combine_chunks()
        lab_col = table.column("labels").combine_chunks()
        offsets = ids_col.offsets.to_numpy().astype(np.int64)
        labels = lab_col.values.to_numpy(zero_copy_only=False)
        if not np.array_equal(offsets, lab_col.offsets.to_numpy()):
            raise ValueError(f"{path}: input_ids and labels differ in length")
        counted = (labels != IGNORE).astype(np.int64)
        counted[offsets[:-1][np.diff(offsets) > 0]] = 0  # a row's first label has nothing before it to predict it
        targets = np.add.reduceat(counted, offsets[:-1]) if len(labels) else np.zeros(len(offsets) - 1, np.int64)
        targets[np.diff(offsets) == 0] = 0
        return cls(ids_col.values.to_numpy(zero_copy_only=False), labels, offsets, targets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return self.offsets[rows + 1] - self.offsets[rows]

    def collate(self, rows: list[int] | np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Right-padded (input_ids, attention_mask, labels) as int64 arrays."""
        width = int(self.lengths(np.asarray(rows)).max())
        ids = np.full((len(rows), width), pad_id, np.int64)
        labels = np.full((len(rows), width), IGNORE, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            a, b = self.offsets[r], self.offsets[r + 1]
            ids[i, : b - a] = self.ids[a:b]
            labels[i, : b - a] = self.labels[a:b]
            mask[i, : b - a] = 1
        return ids, mask, labels


@dataclass(frozen=True)
class Geometry:
    batch_size: int
    grad_accum: int
    world_size: int
    steps: int  # optimizer steps in the stage

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @classmethod
    def of(cls, n_plan: int, batch_size: int, grad_accum: int, world_size: int, max_steps: int | None = None) -> "Geometry":
        steps = math.ceil(n_plan / (batch_size * grad_accum * world_size))
        return cls(batch_size, grad_accum, world_size, min(steps, max_steps) if max_steps else steps)
