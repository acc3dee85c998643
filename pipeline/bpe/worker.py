"""One worker of a learning run: some of the grids and one partition of the pair statistics.

Per merge a worker does two things, in two phases, so that the workers can run in parallel:
`merge` applies the chosen pair to its grids and cuts the resulting deltas by the partition
that owns each pair (one part per partition); `reduce` adds the parts addressed to its own
partition by every worker, refreshes the pairs that changed, and returns its best pair as a
candidate. The next merge is the best candidate of all workers (`stats.best_of`). Sums of
integers are exact, so the candidates and therefore the vocabulary do not depend on how the
grids or the pairs are split.
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.bpe.pair_filter import PairFilter, usable
from pipeline.bpe.shard import Deltas, GridShards
from pipeline.bpe.stats import Choice, Stats, split_deltas


class LearnerWorker:
    def __init__(self, shards: GridShards, partition: int, partitions: int, sigma: float, min_frequency: int):
        if not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} outside [0, {partitions})")
        self.shards, self.partition, self.partitions = shards, partition, partitions
        self.stats = Stats(sigma, min_frequency, shards.codebook_size)
        self.merged = 0  # instances merged by the last `merge`
        self.chunks = shards.count_chunks()
        self.pair_filter: PairFilter | None = None  # for the first count only
        # where the time and the traffic go (the cost model in docs/learn.md is built from these)
        self.profile = {"count_s": 0.0, "merge_s": 0.0, "reduce_s": 0.0, "steps": 0, "sent_bytes": 0, "kept_bytes": 0}

    @property
    def count_rounds(self) -> int:
        return len(self.chunks)

    @property
    def filters_pairs(self) -> bool:
        """Whether the first count should be preceded by the base pair filter (pair_filter.py)."""
        return usable(self.shards.codebook_size, self.stats.min_frequency)

    def base_pair_counts(self) -> np.ndarray:
        t0 = time.perf_counter()
        counts = self.shards.base_pair_counts()
        self.profile["count_s"] += time.perf_counter() - t0
        return counts

    def set_filter(self, pair_filter: PairFilter | None) -> None:
        self.pair_filter = pair_filter

    def count(self, r: int) -> list[Deltas]:
        """Every occurrence in the r-th piece of the grids (a piece at a time bounds the memory), cut by partition."""
        if r >= len(self.chunks):
            return [Deltas.empty() for _ in range(self.partitions)]
        t0 = time.perf_counter()
        parts = split_deltas(self.shards.count(self.chunks[r], self.pair_filter), self.partitions)
        self.profile["count_s"] += time.perf_counter() - t0
        return parts

    def absorb(self, *parts: Deltas) -> None:
        """Add deltas of pairs this partition owns (from any worker) to its statistics."""
        for d in parts:
            self.stats.add(d)

    def max_frequency(self) -> int:
        """The largest F of this partition's pairs, counting those the filter kept out of the table."""
        left_out = self.pair_filter.max_left_out if self.pair_filter is not None else 0
        return max(self.stats.max_frequency(), left_out)

    def start(self, alpha: float) -> Choice | None:
        """Fix alpha (in count units, the same on every partition) and queue every counted pair."""
        self.pair_filter = None
        self.stats.alpha = float(alpha)
        self.stats.refresh()
        return self.stats.best()

    def merge(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> list[Deltas]:
        t0 = time.perf_counter()
        deltas, self.merged = self.shards.merge(a, b, new_tok, uy, ux)
        parts = split_deltas(deltas, self.partitions)
        p = self.profile
        p["merge_s"] += time.perf_counter() - t0
        p["steps"] += 1
        sizes = [16 * len(d) for d in parts]  # an int64 key and an int64 change per entry
        p["kept_bytes"] += sizes[self.partition]
        p["sent_bytes"] += sum(sizes) - sizes[self.partition]
        return parts

    def reduce(self, *parts: Deltas) -> tuple[Choice | None, int]:
        """Fold this step's deltas for this partition in; returns (its candidate, instances merged here)."""
        t0 = time.perf_counter()
        self.absorb(*parts)
        self.stats.refresh()
        best = self.stats.best()
        self.profile["reduce_s"] += time.perf_counter() - t0
        return best, self.merged

    def resources(self) -> dict:
        """This worker's memory (structures, process peak) and profile."""
        import os
        import resource

        return {"pid": os.getpid(), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "shard_bytes": self.shards.memory_bytes(), "stats_bytes": self.stats.memory_bytes(),
                **{f"stats_{k}_bytes": v for k, v in self.stats.memory_parts().items()},
                "cells": int(self.shards.n_cells), "live_entries": self.stats.live_entries,
                "heap_rebuilds": self.stats.rebuilds, **{k: round(v, 4) if isinstance(v, float) else v
                                                         for k, v in self.profile.items()}}

