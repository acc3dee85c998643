"""Shards of the corpus: grids, their instances, where pairs occur, and pending deltas.

A `Shard` answers two questions for the statistics: "count everything" (once) and "apply merge
(a, b) -> id with mode offset u*" (every step). Both return the change of the pair statistics
as `Deltas`; shards never see each other. `GridShards` splits one process's grids into shards of
bounded size (this bounds the temporary memory of the initial count) and forwards to each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pipeline.numba_cache import njit

from pipeline.bpe import shard_kernels as K
from pipeline.bpe.hashtable import ResizableArray, capacity, grow, new_table
from pipeline.bpe.instances import init_instances, segmentation
from pipeline.bpe.pair_filter import PairFilter, count_base_pairs


@dataclass
class Deltas:
    """Signed changes of occurrence counts: `keys` pack (a, b, offset) as in `occurrence_key`."""

    keys: np.ndarray
    d: np.ndarray

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @staticmethod
    def empty() -> "Deltas":
        return Deltas(np.empty(0, np.int64), np.empty(0, np.int64))


def _resized(arr: np.ndarray, n: int, fill=0) -> np.ndarray:
    out = np.full(n, fill, dtype=arr.dtype)
    out[: min(n, arr.shape[0])] = arr[:n]
    return out


@njit(cache=True)
def _link_cells(owner, nxt):
    """Rebuild cell lists from owners (resuming from a saved segmentation)."""
    tail = np.arange(owner.shape[0], dtype=np.int32)
    nxt[:] = -1
    for cell in range(owner.shape[0]):
        x = owner[cell]
        if x != cell:
            nxt[tail[x]] = cell
            tail[x] = cell


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique without its overhead (it is several times slower than sort + diff here)."""
    v = np.sort(values)
    if v.shape[0] < 2:
        return v
    keep = np.empty(v.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(v[1:], v[:-1], out=keep[1:])
    return v[keep]


COUNT_CELLS = 1 << 20  # cells counted at a time: bounds the temporary memory of the first count (and object store use)
ARENA_SLACK = 8  # token lists keep 1/8 spare room; when full, dead entries are dropped before growing


class Shard:
    def __init__(self, codes: np.ndarray, heights, widths, codebook_size: int,
                 owner: np.ndarray | None = None, tok: np.ndarray | None = None):
        heights = np.asarray(heights, dtype=np.int32)
        widths = np.asarray(widths, dtype=np.int32)
        sizes = heights.astype(np.int64) * widths
        self.gstart = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.gstart[1:])
        if self.gstart[-1] >= 2**31:
            raise ValueError("a shard holds at most 2**31 cells: use more workers")
        self.gh, self.gw = heights, widths
        self.V = int(codebook_size)
        self.owner, self.nxt, self.tok = init_instances(np.asarray(codes, dtype=np.int32))
        if owner is not None:
            self.owner = np.asarray(owner, dtype=np.int32).copy()
            self.tok = np.asarray(tok, dtype=np.int32).copy()
            _link_cells(self.owner, self.nxt)
        self.max_cells = int(sizes.max()) if len(sizes) else 1
        self.mark = np.zeros(self.max_cells, dtype=np.int64)
        self.buf_x = np.empty(self.max_cells, dtype=np.int32)
        self.buf_y = np.empty(self.max_cells, dtype=np.int32)
        self.meta = np.zeros(K.META_SIZE, np.int64)
        self.dt = new_table(16 * self.max_cells)
        self.dkey = np.empty(16 * self.max_cells, np.int64)
        self.dval = np.empty(16 * self.max_cells, np.int64)
        # instances of token t, ascending anchors: tl_arena[tl_start[t] : tl_start[t] + tl_len[t]] (dead ones dropped lazily)
        n_tok = max(self.V, int(self.tok.max()) + 1 if self.tok.size else 0)
        room = max(1024, self.n_cells // ARENA_SLACK)
        arena, self.tl_start, self.tl_len, top = K.index_tokens(self.owner, self.tok, n_tok, room)
        self._arena = ResizableArray(arena.shape[0], np.int32, None)  # grows in place (hashtable.py)
        self._arena.array[:] = arena
        del arena
        self.tl_arena = self._arena.array
        self.meta[K.M_TL_TOP] = top

    @property
    def n_grids(self) -> int:
        return len(self.gh)

    @property
    def n_cells(self) -> int:
        return int(self.gstart[-1])

    def count_chunks(self, cells: int = COUNT_CELLS) -> list[tuple[int, int]]:
        """Grid ranges of about `cells` cells each, to count one at a time."""
        out, g = [], 0
        while g < self.n_grids:
            end = max(g + 1, int(np.searchsorted(self.gstart, self.gstart[g] + cells, side="right")) - 1)
            out.append((g, end))
            g = end
        return out

    def _occurrences(self, g0: int, g1: int) -> np.ndarray:
        return K.occurrences(self.owner, self.nxt, self.tok, self.gstart[g0:g1 + 1], self.gw[g0:g1], self.gh[g0:g1],
                             self.mark, self.buf_x, self.meta)

    def count(self, g0: int = 0, g1: int | None = None, pair_filter: PairFilter | None = None) -> Deltas:
        """Every occurrence in grids [g0, g1) of the current segmentation, as deltas from nothing
        (without the base pairs `pair_filter` leaves out)."""
        keys = self._occurrences(g0, self.n_grids if g1 is None else g1)
        if pair_filter is not None:
            keys = pair_filter.apply(keys)
        keys.sort()
        return Deltas(*K.run_counts(keys))

    def count_base_pairs(self, counts: np.ndarray) -> None:
        """Add this shard's base pairs to dense saturating counters (pair_filter.py)."""
        for g0, g1 in self.count_chunks():
            count_base_pairs(self._occurrences(g0, g1), self.V, counts)

    def _live(self, t: int) -> np.ndarray:
        """The live instances of token t, ascending (a view into the arena, valid until it changes)."""
        if t >= self.tl_len.shape[0]:
            return np.empty(0, np.int32)
        start = int(self.tl_start[t])
        n = K.compact_live(self.tl_arena, start, int(self.tl_len[t]), t, self.owner, self.tok)
        self.tl_len[t] = n
        return self.tl_arena[start : start + n]

    def _candidates(self, a: int, b: int) -> np.ndarray:
        """Anchors of the instances X that may merge with a b neighbour, ascending."""
        if a == b or self._listed(a) <= self._listed(b):  # the shorter list (dead entries included) is scanned
            return self._live(a)
        return sorted_unique(K.partners_before(self._live(b), a, self.owner, self.nxt, self.tok, self.gstart, self.gw,
                                               self.gh))

    def _listed(self, t: int) -> int:
        return int(self.tl_len[t]) if t < self.tl_len.shape[0] else 0

    def _reserve(self, new_tok: int, n: int) -> None:
        """Room for a list of up to n instances of new_tok at the arena's top."""
        if new_tok >= self.tl_start.shape[0]:
            size = max(2 * self.tl_start.shape[0], new_tok + 1, 64)
            self.tl_start, self.tl_len = _resized(self.tl_start, size), _resized(self.tl_len, size)
        top = int(self.meta[K.M_TL_TOP])
        if top + n <= self.tl_arena.shape[0]:
            return
        top = K.compact_arena(self.tl_arena, self.tl_start, self.tl_len, new_tok, self.owner, self.tok)
        self.meta[K.M_TL_TOP] = top
        want = top + n + max(1024, top // ARENA_SLACK)
        if want > self.tl_arena.shape[0]:
            size = max(want, self.tl_arena.shape[0] + self.tl_arena.shape[0] // 4)
            self.tl_arena = None
            self.tl_arena = self._arena.resize(size)

    def merge(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> tuple[Deltas, int]:
        """Apply one merge to every grid of the shard; returns (deltas, instance merges done)."""
        # each instance merge takes a distinct live a and b: at most that many new instances (list lengths bound them)
        n_a, n_b = self._listed(a), self._listed(b)
        self._reserve(new_tok, n_a // 2 if a == b else min(n_a, n_b))
        xs = self._candidates(a, b)
        top = int(self.meta[K.M_TL_TOP])
        self.tl_start[new_tok] = top
        i, total = 0, 0
        while i < xs.shape[0]:
            i, done = K.merge_candidates(
                xs, i, a, b, new_tok, uy, ux, self.owner, self.nxt, self.tok, self.gstart, self.gw, self.gh,
                self.mark, self.buf_x, self.buf_y, self.max_cells, self.dt, self.dkey, self.dval, self.meta,
                self.tl_arena)
            total += done
            if i < xs.shape[0]:
                self._grow_deltas(4 * self.max_cells)
        self.tl_len[new_tok] = int(self.meta[K.M_TL_TOP]) - top
        return Deltas(*K.drain_deltas(self.dt, self.dkey, self.dval, self.meta)), total

    def _grow_deltas(self, need: int) -> None:
        n = int(self.meta[K.M_NDELTA])
        while 2 * (n + need) > capacity(self.dt):
            self.dt = grow(self.dt)
        if n + need > self.dkey.shape[0]:
            cap = max(2 * self.dkey.shape[0], n + need)
            self.dkey, self.dval = _resized(self.dkey, cap), _resized(self.dval, cap)

    def segmentation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, anchors, per-grid offsets into both) in grid order, anchors ascending."""
        return segmentation(self.owner, self.tok, self.gstart)

    def memory_bytes(self) -> int:
        arrays = [self.owner, self.nxt, self.tok, self.dt, self.dkey, self.dval, self.tl_start, self.tl_len,
                  self.tl_arena, self.mark, self.buf_x, self.buf_y]
        return int(sum(x.nbytes for x in arrays))


def concat_deltas(parts: list[Deltas]) -> Deltas:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Deltas.empty()
    if len(parts) == 1:
        return parts[0]
    return Deltas(np.concatenate([p.keys for p in parts]), np.concatenate([p.d for p in parts]))


def grid_starts(heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """For every cell, the first cell of its grid (turns grid-local anchors into shard cells and back)."""
    sizes = heights.astype(np.int64) * widths
    starts = np.zeros(len(sizes), np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    return np.repeat(starts, sizes).astype(np.int32)


class GridShards:
    """Concatenated row-major grids held as Shards of at most `shard_cells` cells each.

    `owner` / `tok` (optional, per cell, anchors local to each grid) restore a saved segmentation.
    """

    def __init__(self, codes: np.ndarray, heights: np.ndarray, widths: np.ndarray, codebook_size: int,
                 shard_cells: int = 1 << 24, owner: np.ndarray | None = None, tok: np.ndarray | None = None):
        self.heights, self.widths, self.codebook_size = heights, widths, int(codebook_size)
        self.shards: list[Shard] = []
        self.grid_ranges: list[tuple[int, int]] = []
        offsets = np.zeros(len(heights) + 1, np.int64)
        np.cumsum(heights.astype(np.int64) * widths, out=offsets[1:])
        g = 0
        while g < len(heights):
            end = int(np.searchsorted(offsets, offsets[g] + shard_cells, side="right")) - 1
            end = max(end, g + 1)
            c0, c1 = int(offsets[g]), int(offsets[end])
            s_owner = s_tok = None
            if owner is not None:
                s_owner = owner[c0:c1] + grid_starts(heights[g:end], widths[g:end])
                s_tok = tok[c0:c1]
            self.shards.append(Shard(codes[c0:c1], heights[g:end], widths[g:end], codebook_size, s_owner, s_tok))
            self.grid_ranges.append((g, end))
            g = end

    def count_chunks(self) -> list[tuple[int, int, int]]:
        """(shard, first grid, end grid) pieces to count one at a time (never all occurrences at once)."""
        return [(i, g0, g1) for i, s in enumerate(self.shards) for g0, g1 in s.count_chunks()]

    def count(self, chunk: tuple[int, int, int], pair_filter: PairFilter | None = None) -> Deltas:
        i, g0, g1 = chunk
        return self.shards[i].count(g0, g1, pair_filter)

    def base_pair_counts(self) -> np.ndarray:
        """Dense saturating counts of every base pair (index a * V + b) in these grids."""
        counts = np.zeros(self.codebook_size * self.codebook_size, np.uint8)
        for s in self.shards:
            s.count_base_pairs(counts)
        return counts

    def merge(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> tuple[Deltas, int]:
        parts, total = [], 0
        for s in self.shards:
            d, done = s.merge(a, b, new_tok, uy, ux)
            parts.append(d)
            total += done
        return concat_deltas(parts), total

    def segmentation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, anchors, per-grid offsets) of every grid, in order."""
        toks, ancs, offs = [], [], [np.zeros(1, np.int64)]
        base = 0
        for s in self.shards:
            t, a, o = s.segmentation()
            toks.append(t)
            ancs.append(a)
            offs.append(o[1:] + base)
            base += int(o[-1])
        cat = lambda xs, dt: np.concatenate(xs) if xs else np.empty(0, dt)  # noqa: E731
        return cat(toks, np.int32), cat(ancs, np.int32), np.concatenate(offs)

    def local_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(owner with anchors local to each grid, tok) of every cell: the segmentation to save."""
        owners, toks = [], []
        for s, (g0, g1) in zip(self.shards, self.grid_ranges):
            owners.append(s.owner - grid_starts(self.heights[g0:g1], self.widths[g0:g1]))
            toks.append(s.tok)
        return (np.concatenate(owners) if owners else np.empty(0, np.int32),
                np.concatenate(toks) if toks else np.empty(0, np.int32))

    @property
    def n_cells(self) -> int:
        return sum(s.n_cells for s in self.shards)

    def memory_bytes(self) -> int:
        return sum(s.memory_bytes() for s in self.shards)
