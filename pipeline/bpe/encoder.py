"""Encode code grids with a learned vocabulary: the contract's sequential application, fast.

Per grid, (merge rank, X anchor) entries for every occurrence of a vocabulary pair: those of the
first count in a sorted array, those that merges create in a min-heap. Taking them in (rank,
anchor) order is exactly "apply the merges in id order, each scanning X in increasing anchor
order", because merge k only creates occurrences that involve token V + k, whose pairs all rank
after k. Only merges that occur cost anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pipeline.numba_cache import njit

from pipeline.bpe.constants import FORWARD, MAX_FORWARD
from pipeline.bpe.hashtable import get, new_table, slot_for
from pipeline.bpe.instances import absorb, choose_partner, init_instances, neighbours, segmentation, step_inside
from pipeline.bpe.shard_kernels import pair_key
from pipeline.bpe.vocab import Vocabulary


@njit(cache=True)
def _rank_table(table, a, b):
    for r in range(a.shape[0]):
        s = slot_for(table, pair_key(a[r], b[r]))
        if table[2 * s] == -1:  # a pair can only merge once; a repeat could never apply
            table[2 * s] = pair_key(a[r], b[r])
            table[2 * s + 1] = r


@njit(cache=True)
def _heap_push(heap, n, v):
    if n == heap.shape[0]:
        grown = np.empty(2 * n, np.int64)
        grown[:n] = heap
        heap = grown
    i = n
    heap[i] = v
    while i > 0:
        p = (i - 1) >> 1
        if heap[p] <= v:
            break
        heap[i] = heap[p]
        i = p
    heap[i] = v
    return heap, n + 1


@njit(cache=True)
def _heap_pop(heap, n):
    top = heap[0]
    n -= 1
    v = heap[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and heap[c + 1] < heap[c]:
            c += 1
        if heap[c] >= v:
            break
        heap[i] = heap[c]
        i = c
    if n > 0:
        heap[i] = v
    return top, n


@njit(cache=True)
def _push_if_ranked(heap, n, table, tok, lo, hi):
    r = get(table, pair_key(tok[lo], tok[hi]))
    if r >= 0:
        heap, n = _heap_push(heap, n, (r << 32) | np.int64(lo))
    return heap, n


@njit(cache=True)
def encode_grids(owner, nxt, tok, gstart, gw, gh, table, m_a, m_b, m_dy, m_dx, V):
    """Encode every grid in place; returns (tokens, anchors, per-grid offsets) in anchor order."""
    max_cells = 1
    for g in range(gstart.shape[0] - 1):
        max_cells = max(max_cells, gstart[g + 1] - gstart[g])
    mark = np.zeros(max_cells, np.int64)
    buf = np.empty(max_cells, np.int32)
    first = np.empty(MAX_FORWARD * max_cells, np.int64)  # entries of the initial occurrences, sorted once
    heap = np.empty(4 * max_cells, np.int64)  # entries pushed by merges
    stamp = 0
    low = (np.int64(1) << 32) - 1
    for g in range(gstart.shape[0] - 1):
        gs = gstart[g]
        w = gw[g]
        h = gh[g]
        n0 = 0
        for x in range(gs, gstart[g + 1]):
            row = (x - gs) // w
            col = (x - gs) - row * w
            for step in FORWARD:
                if step_inside(step, row, col, h, w):
                    r = get(table, pair_key(tok[x], tok[x + step[0] * w + step[1]]))
                    if r >= 0:
                        first[n0] = (r << 32) | np.int64(x)
                        n0 += 1
        first[:n0].sort()
        # Two streams, merged on the fly: the sorted initial entries and a heap of the entries that
        # merges push (always of a later rank); most entries never go through the heap.
        i0 = 0
        n = 0
        while i0 < n0 or n > 0:
            if n == 0 or (i0 < n0 and first[i0] < heap[0]):
                e = first[i0]
                i0 += 1
            else:
                e, n = _heap_pop(heap, n)
            r = e >> 32
            x = e & low
            if owner[x] != x or tok[x] != m_a[r]:
                continue
            stamp += 1
            k = neighbours(owner, nxt, x, gs, w, h, mark, stamp, buf)
            y = choose_partner(tok, x, buf, k, m_b[r], gs, w, m_dy[r], m_dx[r])
            if y < 0:
                continue
            absorb(owner, nxt, tok, x, y, V + r)
            stamp += 1
            k = neighbours(owner, nxt, x, gs, w, h, mark, stamp, buf)
            for i in range(k):
                nb = buf[i]
                heap, n = _push_if_ranked(heap, n, table, tok, min(x, nb), max(x, nb))
    return segmentation(owner, tok, gstart)


@dataclass
class Encoded:
    """Token ids and anchors (cell r * W + c) of every grid; grid i is [offsets[i], offsets[i+1])."""

    tokens: np.ndarray
    anchors: np.ndarray
    offsets: np.ndarray


class BpeEncoder:
    """A vocabulary compiled for encoding; reusable across batches (cheap to rebuild, too)."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        m = vocab.merge_table()
        self.m_a, self.m_b = m[:, 0].copy(), m[:, 1].copy()
        self.m_dy, self.m_dx = m[:, 3].copy(), m[:, 4].copy()
        self.table = new_table(max(16, len(m)))
        _rank_table(self.table, self.m_a, self.m_b)

    def encode(self, codes: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> Encoded:
        """Encode concatenated row-major grids (as in `codegrids.Grids`)."""
        return self.encode_with_cells(codes, heights, widths)[0]

    def encode_with_cells(self, codes: np.ndarray, heights: np.ndarray, widths: np.ndarray):
        """`encode`, also returning (owner, nxt, gstart): which instance covers every cell, for callers
        that need token shapes (the report)."""
        heights = np.asarray(heights, np.int32)
        widths = np.asarray(widths, np.int32)
        gstart = np.zeros(len(heights) + 1, np.int64)
        np.cumsum(heights.astype(np.int64) * widths, out=gstart[1:])
        codes = np.asarray(codes, np.int32)
        if codes.shape[0] != gstart[-1]:
            raise ValueError(f"{codes.shape[0]} codes for grids of {gstart[-1]} cells")
        if codes.size and (codes.min() < 0 or codes.max() >= self.vocab.codebook_size):
            raise ValueError(f"codes outside [0, {self.vocab.codebook_size})")
        owner, nxt, tok = init_instances(codes)
        tokens, anchors, offsets = encode_grids(owner, nxt, tok, gstart, widths, heights, self.table,
                                                self.m_a, self.m_b, self.m_dy, self.m_dx, self.vocab.codebook_size)
        return Encoded(tokens, anchors, offsets), owner, nxt, gstart

    def encode_grid(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grid = np.asarray(grid)
        enc = self.encode(grid.reshape(-1), [grid.shape[0]], [grid.shape[1]])
        return enc.tokens, enc.anchors
