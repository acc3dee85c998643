"""Training data streamed to the workers through Ray Data: each worker reads only its own sequences.

The driver knows, for every optimizer step, which sequences form the global batch (the plan,
`curriculum.py`) and which worker trains on which of them (`batches.assign`), from the small
`category`, `n_tokens` and `n_targets` columns alone. Worker r gets the Ray Dataset `rank<r>`:
items of a few consecutive steps (the row indices of its sequences, in training order), mapped by
Ray Data tasks that read just the row groups holding those rows from `sequences.parquet`. A worker
thus never holds more than a few micro-batches of sequences, whatever the size of the data, and
the order is fixed by the plan, not by which Ray Data task finishes first (`preserve_order`).

A run that resumes at step s gets datasets that start at step s; a worker group Ray restarts
within one run skips the batches before its checkpoint (they carry their step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline import storage
from schemas.base import StorageOptions

ROWS_PER_ITEM = 2048  # per rank: a task reads about (workers + 4) x this many rows, whole row groups


@dataclass(frozen=True)
class Assignment:
    """Every rank's sequences, step by step: rows[r] has steps x grad_accum x batch_size row indices."""

    rows: list[np.ndarray]
    targets: np.ndarray  # per step: target tokens of the whole global batch (the loss normaliser)
    per_step: int  # sequences one rank trains on per step (grad_accum x batch_size)


def assign(plan: np.ndarray, lengths: np.ndarray, targets: np.ndarray, batch_size: int, grad_accum: int, world: int,
           steps: int) -> Assignment:
    """Global batch of step s = plan positions [s G, (s + 1) G) (wrapping around), sorted by length and cut into
    micro-batches; micro-batch m of rank r is number m * world + r (same lengths on all ranks at each micro-step)."""
    g = batch_size * grad_accum * world
    rows = plan[np.arange(steps * g) % len(plan)].reshape(steps, g)
    order = np.argsort(lengths[rows], axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1).reshape(steps, grad_accum, world, batch_size)
    per_rank = [np.ascontiguousarray(ordered[:, :, r, :]).reshape(-1) for r in range(world)]
    return Assignment(per_rank, targets[rows].sum(axis=1).astype(np.int64), grad_accum * batch_size)


def read_rows(path: str, rows: np.ndarray, options: StorageOptions | None = None,
              columns: tuple[str, ...] = ("input_ids", "labels")):
    """The given rows (repeats allowed, any order) of a Parquet file, reading only the row groups that hold them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with storage.open_file(path, options=options) as f:
        pf = pq.ParquetFile(f)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        if len(rows) and (rows.min() < 0 or rows.max() >= starts[-1]):
            raise IndexError(f"{path}: row index out of range [0, {starts[-1]})")
        group = np.searchsorted(starts, rows, side="right") - 1  # the row group of every row
        groups = np.unique(group)
        table = pf.read_row_groups(groups.tolist(), columns=list(columns))
    base = np.concatenate([[0], np.cumsum(starts[groups + 1] - starts[groups])[:-1]])  # where each group starts in `table`
    local = base[np.searchsorted(groups, group)] + rows - starts[group]
    return table.take(pa.array(local, pa.int64()))


def read_item(path: str, first_step: int, rows: np.ndarray, per_step: int, options: StorageOptions | None):
    """One item (its first step + row indices) -> its sequences, with their step and row."""
    import pyarrow as pa

    table = read_rows(path, rows, options)
    steps = first_step + np.arange(len(rows)) // per_step
    return table.append_column("step", pa.array(steps, pa.int64())).append_column("row", pa.array(rows, pa.int64()))


def items(rows: np.ndarray, per_step: int, first_step: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first step, row indices) of one rank's items from `first_step` on: a few steps each, in training order.
    Ray Data maps these (rank_datasets); the local executor reads them in this process (world.py)."""
    steps = len(rows) // per_step
    steps_per_item = max(1, ROWS_PER_ITEM // per_step)
    for s in range(first_step, steps, steps_per_item):
        yield s, rows[s * per_step : min(steps, s + steps_per_item) * per_step]


def _read_item(batch, path: str, per_step: int, options: StorageOptions | None):
    """Ray Data map: one item -> its sequences (read_item)."""
    first = int(batch.column("first_step")[0].as_py())
    rows = np.asarray(batch.column("rows")[0].values.to_numpy(zero_copy_only=False), np.int64)
    return read_item(path, first, rows, per_step, options)


def rank_datasets(path: str, assignment: Assignment, first_step: int, options: StorageOptions | None,
                  cpus_per_task: float) -> dict:
    """{"rank<r>": Ray Dataset of rank r's sequences from `first_step` on}, in training order."""
    import pyarrow as pa
    import ray.data

    per_step = assignment.per_step
    out = {}
    for r, rows in enumerate(assignment.rows):
        tables = [pa.table({"first_step": pa.array([s], pa.int64()), "rows": pa.array([chunk], pa.list_(pa.int64()))})
                  for s, chunk in items(rows, per_step, first_step)]
        if not tables:
            tables = [pa.table({"first_step": pa.array([], pa.int64()), "rows": pa.array([], pa.list_(pa.int64()))})]
        out[f"rank{r}"] = ray.data.from_arrow(tables).map_batches(
            _read_item, batch_size=1, batch_format="pyarrow", zero_copy_batch=True, num_cpus=cpus_per_task,
            fn_kwargs={"path": path, "per_step": per_step, "options": options},
        )
    return out


def data_config():
    """Every worker reads its own dataset whole (no splitting), in order."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))


def micro_batches(rank: int, start_step: int, batch_size: int) -> Iterator[tuple[int, dict]]:
    """Worker side: (step, numpy batch of batch_size sequences) in training order, from `start_step` on."""
    import ray.train

    shard = ray.train.get_dataset_shard(f"rank{rank}")
    yield from by_step(shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2), rank, start_step)


def by_step(batches: Iterator[dict], rank: int, start_step: int) -> Iterator[tuple[int, dict]]:
    """(step, batch) for the micro-batches from `start_step` on; a batch mixing two steps is a bug upstream."""
    for batch in batches:
        steps = batch["step"]
        if steps[0] != steps[-1]:
            raise RuntimeError(f"rank {rank}: a micro-batch spans steps {steps[0]} and {steps[-1]}")
        if steps[0] >= start_step:
            yield int(steps[0]), batch


def collate(batch: dict, pad_id: int, ignore: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (input_ids, attention_mask, labels) int64 arrays of one numpy batch."""
    ids_list, labels_list = batch["input_ids"], batch["labels"]
    width = max(len(x) for x in ids_list)
    ids = np.full((len(ids_list), width), pad_id, np.int64)
    labels = np.full((len(ids_list), width), ignore, np.int64)
    mask = np.zeros((len(ids_list), width), np.int64)
    for i, (a, b) in enumerate(zip(ids_list, labels_list)):
        ids[i, : len(a)] = a
        labels[i, : len(b)] = b
        mask[i, : len(a)] = 1
    return ids, mask, labels
