"""The learner: count once, then merge the best pair and fold the deltas back, until done.

`merge_loop` is the contract's loop over any group of shards (in-process `GridShards`, or the
stage's Ray actors): pick the eligible pair with the largest P (stats.py), apply it to every
grid, add the deltas to the statistics. `learn_arrays` runs it on arrays in memory.
"""
from __future__ import annotations

import numpy as np

from pipeline.bpe.constants import MAX_SIDE
from pipeline.bpe.shard import GridShards
from pipeline.bpe.stats import Stats
from pipeline.bpe.vocab import Merge
from schemas.base import InputError


def merge_loop(group, stats: Stats, V: int, target: int, merges: list[Merge], on_merge=None) -> str:
    """The contract's loop: merges are appended to `merges` until `target`; returns why it stopped."""
    while len(merges) < target:
        choice = stats.pop_best()
        if choice is None:
            return "no eligible pair left"
        new_id = V + len(merges)
        deltas, done = group.merge(choice.a, choice.b, new_id, *choice.offset)
        stats.add(deltas)
        stats.refresh()
        merges.append(Merge(new_id, (choice.a, choice.b), choice.frequency, choice.consistency,
                            choice.priority, choice.offset, choice.histogram, done))
        if on_merge is not None:
            on_merge(merges)
    return "requested merges reached"


def start_stats(group, sigma: float, min_frequency: int, alpha: float | None, alpha_rel: float | None) -> Stats:
    """Count every occurrence once and fix alpha (alpha_rel * the largest initial F)."""
    stats = Stats(sigma, min_frequency)
    for deltas in group.count():
        stats.add(deltas)
        del deltas
    stats.alpha = alpha if alpha is not None else (alpha_rel or 0.0) * stats.max_frequency()
    stats.refresh()
    return stats


def learn_arrays(grids: list, codebook_size: int, merges: int, *, alpha: float | None = None,
                 alpha_rel: float | None = None, sigma: float = 1.0, min_frequency: int = 2,
                 shard_cells: int = 1 << 24) -> tuple[list[Merge], GridShards, float]:
    """Learn from 2D integer arrays in memory (no files, no checkpoints); returns (merges, group, alpha).

    The group holds the final segmentation (`group.segmentation()`).
    """
    arrays = [np.asarray(g) for g in grids]
    for i, a in enumerate(arrays):  # the kernels trust their input: check it here, like codegrids does for files
        if a.ndim != 2 or not (1 <= a.shape[0] <= MAX_SIDE and 1 <= a.shape[1] <= MAX_SIDE):
            raise InputError(f"grid {i} has shape {a.shape}: expected 2D, 1..{MAX_SIDE} per side")
        if a.size and (a.min() < 0 or a.max() >= codebook_size):
            raise InputError(f"grid {i} has codes outside [0, {codebook_size})")
    codes = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.int32) if arrays else np.empty(0, np.int32)
    group = GridShards(codes, np.array([a.shape[0] for a in arrays], np.int32),
                       np.array([a.shape[1] for a in arrays], np.int32), codebook_size, shard_cells)
    stats = start_stats(group, sigma, min_frequency, alpha, alpha_rel)
    out: list[Merge] = []
    merge_loop(group, stats, codebook_size, merges, out)
    return out, group, stats.alpha
