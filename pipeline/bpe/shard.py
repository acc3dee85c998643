"""Shards of the corpus: grids, their instances, where pairs occur, and pending deltas.

A `Shard` answers two questions for the statistics: "count everything" (once) and "apply merge
(a, b) -> id with mode offset u*" (every step). Both return the change of the pair statistics
as `Deltas`; shards never see each other. `GridShards` splits one process's grids into shards of
bounded size (this bounds the temporary memory of the initial count) and forwards to each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from pipeline.bpe import shard_kernels as K
from pipeline.bpe.constants import ID_BITS, ID_MASK, OFF_BITS
from pipeline.bpe.hashtable import capacity, grow, new_table
from pipeline.bpe.instances import init_instances, segmentation


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


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and where each run starts (plus the end)."""
    if sorted_keys.shape[0] == 0:
        return sorted_keys[:0], np.zeros(1, np.int64)
    starts = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate(([0], starts, [sorted_keys.shape[0]])).astype(np.int64)
    return sorted_keys[starts[:-1]], starts


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
        # where base-code pairs occur (filled by count): a * V + b of each pair, run starts, X anchors
        self.base_keys = np.empty(0, np.int64)
        self.base_start = np.zeros(1, np.int64)
        self.base_anchors = np.empty(0, np.int32)
        # instances of merged token V + k: tl_arena[tl_start[k] : tl_start[k] + tl_len[k]]
        self.tl_start = np.zeros(0, np.int64)
        self.tl_len = np.zeros(0, np.int64)
        self.tl_arena = np.empty(max(1024, self.n_cells // 4), np.int32)

    @property
    def n_grids(self) -> int:
        return len(self.gh)

    @property
    def n_cells(self) -> int:
        return int(self.gstart[-1])

    def count(self) -> Deltas:
        """Every occurrence of the current segmentation, as deltas from nothing; indexes places."""
        keys, los = K.occurrences(self.owner, self.nxt, self.tok, self.gstart, self.gw, self.gh,
                                  self.mark, self.buf_x, self.meta)
        if self.V <= 1 << 15:
            # (a * V + b) and a 31-bit anchor fit one int64: sorting values beats argsort ~10x.
            packed = K.packed_base_places(keys, los, self.V)
            del los
            packed.sort()
            self.base_keys, self.base_start, self.base_anchors = K.unpack_base_places(packed, self.V)
            del packed
        else:
            pairs = keys >> OFF_BITS
            base = ((pairs >> ID_BITS) < self.V) & ((pairs & ID_MASK) < self.V)
            pairs = pairs[base]
            order = np.argsort(pairs, kind="stable")
            pairs = pairs[order]
            self.base_anchors = los[base][order]
            self.base_keys, self.base_start = _runs((pairs >> ID_BITS) * self.V + (pairs & ID_MASK))
            del pairs, base, order, los
        keys.sort()
        deltas = Deltas(*K.run_counts(keys))
        del keys
        self._index_merged_tokens()
        return deltas

    def _index_merged_tokens(self) -> None:
        anchors = np.flatnonzero(self.owner == np.arange(self.n_cells, dtype=np.int32)).astype(np.int32)
        toks = self.tok[anchors]
        merged = toks >= self.V
        anchors, toks = anchors[merged], toks[merged].astype(np.int64) - self.V
        order = np.lexsort((anchors, toks))
        anchors, toks = anchors[order], toks[order]
        n_tok = int(toks.max()) + 1 if toks.size else 0
        self.tl_start = np.zeros(n_tok, np.int64)
        self.tl_len = np.bincount(toks, minlength=n_tok).astype(np.int64)
        self.tl_start[1:] = np.cumsum(self.tl_len[:-1])
        self.tl_arena = _resized(self.tl_arena, max(self.tl_arena.shape[0], 2 * anchors.shape[0]))
        self.tl_arena[: anchors.shape[0]] = anchors
        self.meta[K.M_TL_TOP] = anchors.shape[0]

    def _live(self, t: int) -> np.ndarray:
        k = t - self.V
        if k >= self.tl_len.shape[0]:
            return np.empty(0, np.int32)
        start = int(self.tl_start[k])
        n = K.compact_live(self.tl_arena, start, int(self.tl_len[k]), t, self.owner, self.tok)
        self.tl_len[k] = n
        return self.tl_arena[start : start + n].copy()

    def _candidates(self, a: int, b: int) -> np.ndarray:
        """Anchors of the instances X that may merge with a b neighbour, ascending."""
        if a < self.V and b < self.V:
            dense = self.base_keys.dtype.type(a * self.V + b)  # same dtype: no cast of the whole array per call
            i = int(np.searchsorted(self.base_keys, dense))
            if i == self.base_keys.shape[0] or self.base_keys[i] != dense:
                return np.empty(0, np.int32)
            return sorted_unique(self.base_anchors[self.base_start[i] : self.base_start[i + 1]])
        xs = self._live(a) if a >= self.V else None
        ys = self._live(b) if b >= self.V and a != b else None
        if xs is not None and (ys is None or xs.shape[0] <= ys.shape[0]):
            return xs
        return sorted_unique(K.partners_before(ys, a, self.owner, self.nxt, self.tok, self.gstart, self.gw, self.gh,
                                           self.mark, self.buf_x, self.meta))

    def merge(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> tuple[Deltas, int]:
        """Apply one merge to every grid of the shard; returns (deltas, instance merges done)."""
        xs = self._candidates(a, b)
        k = new_tok - self.V
        if k >= self.tl_start.shape[0]:
            size = max(2 * self.tl_start.shape[0], k + 1, 64)
            self.tl_start, self.tl_len = _resized(self.tl_start, size), _resized(self.tl_len, size)
        top = int(self.meta[K.M_TL_TOP])
        if top + xs.shape[0] > self.tl_arena.shape[0]:
            self.tl_arena = _resized(self.tl_arena, max(2 * self.tl_arena.shape[0], top + xs.shape[0]))
        self.tl_start[k] = top
        i, total = 0, 0
        while i < xs.shape[0]:
            i, done = K.merge_candidates(
                xs, i, a, b, new_tok, uy, ux, self.owner, self.nxt, self.tok, self.gstart, self.gw, self.gh,
                self.mark, self.buf_x, self.buf_y, self.max_cells, self.dt, self.dkey, self.dval, self.meta,
                self.tl_arena)
            total += done
            if i < xs.shape[0]:
                self._grow_deltas(4 * self.max_cells)
        self.tl_len[k] = int(self.meta[K.M_TL_TOP]) - top
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
        arrays = [self.owner, self.nxt, self.tok, self.dt, self.dkey, self.dval, self.base_keys, self.base_start,
                  self.base_anchors, self.tl_start, self.tl_len, self.tl_arena]
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
        self.heights, self.widths = heights, widths
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

    def count(self):
        """Every occurrence, as deltas, one shard at a time (never all of them in memory at once)."""
        for s in self.shards:
            yield s.count()

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

    def memory_bytes(self) -> int:
        return sum(s.memory_bytes() for s in self.shards)
