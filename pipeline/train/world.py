"""The one seam between the training loop and where it runs: this rank, the world size, the device and
the source of this rank's micro-batches. Everything else in loop.py is the same under both executors.

- `ray_world()`: inside a Ray Train worker. Rank and world size from Ray Train's context, the device
  Ray Train picked, batches from the rank's Ray Dataset (`stream.micro_batches`).
- `LocalWorld`: this process is the only rank (world 1; no Ray Train, no Ray Data, no
  torch.distributed). Its batches are read with `stream.read_rows`, item by item as Ray Data maps them
  and cut into micro-batches of `batch_size` as `iter_batches` cuts them, so a local run and a
  one-worker Ray Train run of the same config train on the same rows, step by step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol

import numpy as np

from pipeline.train import stream
from schemas.base import StorageOptions

if TYPE_CHECKING:
    import torch


class World(Protocol):
    rank: int
    size: int
    device: "torch.device"

    def micro_batches(self, start_step: int, batch_size: int) -> Iterator[tuple[int, dict]]:
        """(step, numpy batch of `batch_size` sequences with their `step` and `row`) in training order, from `start_step` on."""


@dataclass(frozen=True)
class RayWorld:
    rank: int
    size: int
    device: "torch.device"

    def micro_batches(self, start_step: int, batch_size: int) -> Iterator[tuple[int, dict]]:
        return stream.micro_batches(self.rank, start_step, batch_size)


def ray_world() -> RayWorld:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return RayWorld(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


@dataclass(frozen=True)
class LocalWorld:
    """Rank 0 of 1 in this process, reading `rows` (rank 0's sequences of the stage, `stream.Assignment.rows[0]`)."""

    path: str  # sequences.parquet
    rows: np.ndarray
    per_step: int  # sequences per step (grad_accum x batch_size)
    first_step: int  # where the items start, as the Ray datasets of the same run would
    device: "torch.device"
    options: StorageOptions | None = None
    rank: int = 0
    size: int = 1

    def micro_batches(self, start_step: int, batch_size: int) -> Iterator[tuple[int, dict]]:
        return stream.by_step(self._batches(start_step, batch_size), self.rank, start_step)

    def _batches(self, start_step: int, batch_size: int) -> Iterator[dict]:
        for first, rows in stream.items(self.rows, self.per_step, self.first_step):
            if first + len(rows) // self.per_step <= start_step:
                continue  # the whole item is before the resume point: not even read
            table = stream.read_item(self.path, first, rows, self.per_step, self.options)
            for start in range(0, table.num_rows, batch_size):
                part = table.slice(start, batch_size)
                yield {c: part.column(c).to_numpy(zero_copy_only=False) for c in part.column_names}
