"""The learner: count once, then merge the best pair and fold the deltas back, until done.

`merge_loop` is the contract's loop over a set of workers (worker.py), wherever they run: this
process (`LocalWorkers`) or Ray actors (the learn stage's `RayWorkers`). Both offer `start`
(count every occurrence, fix alpha, return each partition's candidate) and `run` (apply the
next merge, or several where the workers choose them themselves, and say what was merged).
`learn_arrays` runs it on arrays in memory.
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.bpe.constants import MAX_SIDE
from pipeline.bpe.pair_filter import combine
from pipeline.bpe.shard import GridShards
from pipeline.bpe.stats import Choice, best_of
from pipeline.bpe.vocab import Merge
from pipeline.bpe.worker import LearnerWorker
from schemas.base import InputError


def merge_loop(workers, candidates: list[Choice | None] | None, V: int, target: int, merges: list[Merge],
               on_merge=None, boundary=None) -> str:
    """The contract's loop: merges are appended to `merges` until `target`; returns why it stopped.

    `workers.run` does up to `count` merges per call: one in this process and over Ray calls or the
    compiled graph, many over the mesh transport (the actors then choose the merges themselves and
    keep the candidates). `boundary(n)` is the next merge count after n at which `on_merge` must see
    the workers' state exactly that far (a checkpoint): no call runs past it."""
    while len(merges) < target:
        count = target - len(merges)
        if boundary is not None:
            count = max(1, min(count, boundary(len(merges)) - len(merges)))
        done, candidates, exhausted = workers.run(candidates, V + len(merges), count)
        for choice, merged in done:
            merges.append(Merge(V + len(merges), (choice.a, choice.b), choice.frequency, choice.consistency,
                                choice.priority, choice.offset, choice.histogram, merged))
            if on_merge is not None:
                on_merge(merges)
        if exhausted and len(merges) < target:
            return "no eligible pair left"
        if not done:
            raise RuntimeError(f"the workers did no merge after {len(merges)} and say pairs are left (a bug)")
    return "requested merges reached"


def one_step(workers, candidates: list[Choice | None], next_id: int, count: int):
    """`run` for workers that take one merge per call (`step`): the best candidate, applied everywhere."""
    choice = best_of(candidates)
    if choice is None:
        return [], candidates, True
    candidates, merged = workers.step(choice.a, choice.b, next_id, *choice.offset)
    return [(choice, merged)], candidates, False


def fix_alpha(alpha: float | None, alpha_rel: float | None, max_frequency: int) -> float:
    """alpha in count units: given, or alpha_rel times the largest F before the first merge."""
    return float(alpha) if alpha is not None else (alpha_rel or 0.0) * max_frequency


class LocalWorkers:
    """Workers in this process, stepped one after the other (tests, learn_arrays, `--workers 0`)."""

    def __init__(self, workers: list[LearnerWorker]):
        self.workers = workers
        self.step_s, self.steps = 0.0, 0  # time the driver spends per merge, everything included

    def start(self, alpha: float | None, alpha_rel: float | None) -> tuple[float, list[Choice | None]]:
        ws = self.workers
        if ws[0].filters_pairs:
            w0 = ws[0]
            f = combine((w.base_pair_counts() for w in ws), w0.shards.codebook_size, w0.stats.min_frequency)
            for w in ws:
                w.set_filter(f)
        for r in range(max(w.count_rounds for w in ws)):
            parts = [w.count(r) for w in ws]
            for j, w in enumerate(ws):
                w.absorb(*[p[j] for p in parts])
            del parts
        alpha = fix_alpha(alpha, alpha_rel, max(w.max_frequency() for w in ws))
        return alpha, [w.start(alpha) for w in ws]

    def run(self, candidates: list[Choice | None], next_id: int, count: int):
        return one_step(self, candidates, next_id, count)

    def step(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> tuple[list[Choice | None], int]:
        t0 = time.perf_counter()
        parts = [w.merge(a, b, new_tok, uy, ux) for w in self.workers]
        out = [w.reduce(*[p[j] for p in parts]) for j, w in enumerate(self.workers)]
        self.step_s += time.perf_counter() - t0
        self.steps += 1
        return [c for c, _ in out], sum(n for _, n in out)

    def resources(self) -> list[dict]:
        return [w.resources() for w in self.workers]

    def segmentation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, anchors, per-grid offsets) of every grid, workers in order."""
        parts = [w.shards.segmentation() for w in self.workers]
        offs, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offs.append(p[2][1:] + base)
            base += int(p[2][-1])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), np.concatenate(offs)


def learn_arrays(grids: list, codebook_size: int, merges: int, *, alpha: float | None = None,
                 alpha_rel: float | None = None, sigma: float = 1.0, min_frequency: int = 2,
                 shard_cells: int = 1 << 24, workers: int = 1) -> tuple[list[Merge], LocalWorkers, float]:
    """Learn from 2D integer arrays in memory (no files, no checkpoints); returns (merges, workers, alpha).

    `workers` > 1 splits the grids and the pair statistics as a Ray run would, in this process.
    The workers hold the final segmentation (`.segmentation()`).
    """
    arrays = [np.asarray(g) for g in grids]
    for i, a in enumerate(arrays):  # the kernels trust their input: check it here, like codegrids does for files
        if a.ndim != 2 or not (1 <= a.shape[0] <= MAX_SIDE and 1 <= a.shape[1] <= MAX_SIDE):
            raise InputError(f"grid {i} has shape {a.shape}: expected 2D, 1..{MAX_SIDE} per side")
        if a.size and (a.min() < 0 or a.max() >= codebook_size):
            raise InputError(f"grid {i} has codes outside [0, {codebook_size})")
    bounds = np.linspace(0, len(arrays), workers + 1).round().astype(int)
    ws = []
    for p in range(workers):
        part = arrays[bounds[p]:bounds[p + 1]]
        codes = np.concatenate([a.reshape(-1) for a in part]).astype(np.int32) if part else np.empty(0, np.int32)
        shards = GridShards(codes, np.array([a.shape[0] for a in part], np.int32),
                            np.array([a.shape[1] for a in part], np.int32), codebook_size, shard_cells)
        ws.append(LearnerWorker(shards, p, workers, sigma, min_frequency))
    local = LocalWorkers(ws)
    alpha, candidates = local.start(alpha, alpha_rel)
    out: list[Merge] = []
    merge_loop(local, candidates, codebook_size, merges, out)
    return out, local, alpha
