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

    @property
    def count_rounds(self) -> int:
        return len(self.chunks)

    def count(self, r: int) -> list[Deltas]:
        """Every occurrence in the r-th piece of the grids (a piece at a time bounds the memory), cut by partition."""
        if r >= len(self.chunks):
            return [Deltas.empty() for _ in range(self.partitions)]
        return split_deltas(self.shards.count(self.chunks[r]), self.partitions)

    def absorb(self, *parts: Deltas) -> None:
        """Add deltas of pairs this partition owns (from any worker) to its statistics."""
        for d in parts:
            self.stats.add(d)

    def max_frequency(self) -> int:
        return self.stats.max_frequency()

    def start(self, alpha: float) -> Choice | None:
        """Fix alpha (in count units, the same on every partition) and queue every counted pair."""
        self.stats.alpha = float(alpha)
        self.stats.refresh()
        return self.stats.best()

    def merge(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> list[Deltas]:
        deltas, self.merged = self.shards.merge(a, b, new_tok, uy, ux)
        return split_deltas(deltas, self.partitions)

    def reduce(self, *parts: Deltas) -> tuple[Choice | None, int]:
        """Fold this step's deltas for this partition in; returns (its candidate, instances merged here)."""
        self.absorb(*parts)
        self.stats.refresh()
        return self.stats.best(), self.merged

    def memory_bytes(self) -> int:
        return self.shards.memory_bytes() + self.stats.memory_bytes()
