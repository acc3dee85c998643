"""One pass over the held-out sample: token usage, shape groups, and exemplar candidates per token.

Batches keep memory bounded; everything is accumulated in mergeable form (counts, per-(token,
shape) groups with their first instance, the K instances with the smallest pseudo-random
priority per token), so the result does not depend on the batch size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.vocab import Vocabulary
from pipeline.codegrids import Grids
from pipeline.metrics import progress
from pipeline.report.segment import Segmented, instance_table, segment

POS_BITS = 21  # a position packs (grid index, anchor); anchors are < 1024 * 1024


def pack_pos(grid: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    return (np.asarray(grid, np.int64) << POS_BITS) | np.asarray(anchor, np.int64)


def unpack_pos(pos: int) -> tuple[int, int]:
    return int(pos) >> POS_BITS, int(pos) & ((1 << POS_BITS) - 1)


def _priority(pos: np.ndarray) -> np.ndarray:
    """splitmix64 of the position: a fixed pseudo-random order, so exemplars spread over the sample."""
    with np.errstate(over="ignore"):
        z = pos.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _run_starts(*keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal key tuples in sorted arrays."""
    n = keys[0].shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


@dataclass
class ShapeGroups:
    """Instances grouped by (token, shape hash): how many, and the first one (packed position)."""

    token: np.ndarray
    shape_hash: np.ndarray
    count: np.ndarray
    first: np.ndarray

    @staticmethod
    def empty() -> "ShapeGroups":
        return ShapeGroups(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64))

    def merged_with(self, other: "ShapeGroups") -> "ShapeGroups":
        t = np.concatenate([self.token, other.token])
        h = np.concatenate([self.shape_hash, other.shape_hash])
        c = np.concatenate([self.count, other.count])
        f = np.concatenate([self.first, other.first])
        order = np.lexsort((f, h, t))
        t, h, c, f = t[order], h[order], c[order], f[order]
        starts = _run_starts(t, h)
        if starts.size == 0:
            return ShapeGroups.empty()
        return ShapeGroups(t[starts], h[starts], np.add.reduceat(c, starts), f[starts])


@dataclass
class Candidates:
    """Up to k instances per token: those with the smallest priority."""

    token: np.ndarray
    priority: np.ndarray
    pos: np.ndarray

    @staticmethod
    def empty() -> "Candidates":
        return Candidates(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.int64))

    def merged_with(self, other: "Candidates", k: int) -> "Candidates":
        t = np.concatenate([self.token, other.token])
        p = np.concatenate([self.priority, other.priority])
        q = np.concatenate([self.pos, other.pos])
        order = np.lexsort((q, p, t))
        t, p, q = t[order], p[order], q[order]
        starts = _run_starts(t)
        run_start = np.repeat(starts, np.diff(np.append(starts, t.shape[0])))
        keep = (np.arange(t.shape[0]) - run_start) < k
        return Candidates(t[keep], p[keep], q[keep])

    def of(self, token: int) -> list[int]:
        lo, hi = np.searchsorted(self.token, [token, token + 1])
        return [int(x) for x in self.pos[lo:hi]]


@dataclass
class Analysis:
    usage: np.ndarray  # int64 per token id: occurrences in the encoded sample
    grids: int
    cells: int
    shapes: ShapeGroups  # learned tokens only
    candidates: Candidates  # learned tokens, or base codes when the vocabulary has no merges
    base_candidates: bool

    def shapes_of(self, token: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hashes, counts, first positions) of a token's shapes, most common first (ties: first seen)."""
        lo, hi = np.searchsorted(self.shapes.token, [token, token + 1])
        h, c, f = self.shapes.shape_hash[lo:hi], self.shapes.count[lo:hi], self.shapes.first[lo:hi]
        order = np.lexsort((f, -c))
        return h[order], c[order], f[order]


def analyze(vocab: Vocabulary, grids: Grids, batch_grids: int = 2000, exemplar_pool: int = 8,
            encoder: BpeEncoder | None = None) -> Analysis:
    encoder = encoder or BpeEncoder(vocab)
    V = vocab.codebook_size
    base = len(vocab.merges) == 0
    usage = np.zeros(vocab.size, np.int64)
    shapes, cands = ShapeGroups.empty(), Candidates.empty()
    offsets = grids.offsets
    starts = list(range(0, len(grids), batch_grids))
    for lo in progress(starts, "report: encoding the held-out sample", stage="report", unit="batch"):
        hi = min(len(grids), lo + batch_grids)
        seg = segment(encoder, grids.codes[offsets[lo] : offsets[hi]], grids.heights[lo:hi], grids.widths[lo:hi])
        usage += np.bincount(seg.tokens, minlength=vocab.size).astype(np.int64)
        pos = pack_pos(seg.grid_of_token() + lo, seg.anchors)
        tab = instance_table(seg)
        learned = seg.tokens >= V
        t = seg.tokens[learned].astype(np.int64)
        shapes = shapes.merged_with(ShapeGroups(t, tab.shape_hash[learned], np.ones(t.shape[0], np.int64), pos[learned]))
        pick = np.ones_like(learned) if base else learned
        if exemplar_pool > 0:
            batch = Candidates(seg.tokens[pick].astype(np.int64), _priority(pos[pick]), pos[pick])
            cands = cands.merged_with(batch, exemplar_pool)
    return Analysis(usage, len(grids), int(offsets[-1]), shapes, cands, base)


def segment_grids(encoder: BpeEncoder, grids: Grids, index: list[int]) -> dict[int, tuple[Segmented, int]]:
    """Segment only the grids `index` (sample indices); maps each to (segmentation, its position in it)."""
    index = sorted(set(index))
    if not index:
        return {}
    o = grids.offsets
    codes = np.concatenate([grids.codes[o[i] : o[i + 1]] for i in index])
    seg = segment(encoder, codes, grids.heights[index], grids.widths[index])
    return {g: (seg, j) for j, g in enumerate(index)}
