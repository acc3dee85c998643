"""Pair statistics of one partition and its candidate for the next merge.

The pairs are partitioned by a hash of the pair (`split_deltas`): a partition holds every
(pair, offset) count of its pairs over the whole corpus, so F, H, S and P of a pair are complete
in one place, and its best eligible pair is a candidate; the next merge is the best of all
partitions' candidates (`best_of`). One process may hold the only partition.

The counts of every live (pair, offset) are in a `PairTable` (pair_table.py: one packed word per
entry, all offsets of a pair in one short probe run, so F, the histogram, S and the mode offset
come from one scan, with no per-pair record). Counts are sums of shard deltas (exact integers, so
any split of the corpus gives the same values); an entry whose count reaches zero is deleted, so
memory follows the live occurrences; the table is kept at 50-70% load. Every new occurrence
involves the token just made, so once a step is folded in, no pair in the table can ever gain an
occurrence again: a pair whose F is below min_frequency then can never merge, and all its entries
are dropped (after the first count and whenever a step takes a pair below it). The table holds
only pairs that may still merge; the (only negative) deltas that later arrive for a dropped pair
are ignored. The first count tables no hopeless base pair at all when `pair_filter` can tell them
beforehand.

The candidate comes from a lazy max-heap of (P, F, pair) ordered by (P, F, -a, -b) that holds
only pairs with P >= a floor: at a rebuild, the floor is the P of the HEAP_PAIRS-th best pair and
every pair at or above it is queued; afterwards a pair is pushed whenever its histogram changes
and its new P is at or above the floor. A pair's P changes only with its histogram, so every pair
left out has P below the floor and any valid entry beats them all: the top entry counts only if
it still equals the pair's current (P, F), recomputed on the spot, otherwise it is stale and
dropped; when no valid entry is left the heap is rebuilt. (A floor on F instead would be useless
with a large alpha: P = F + alpha * S bounds a left-out pair only by F + alpha, so nearly every
pair had to be queued: 0.18 GB per worker at 100K grids.)

S is computed in one canonical order (offsets sorted by (dy, dx); integer sums for the mean),
the same as the reference, so floats and therefore ties are bit-identical everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pipeline.numba_cache import njit

from pipeline.bpe.constants import ID_BITS, ID_MASK, OFF_BIAS, OFF_BITS, OFF_SPAN
from pipeline.bpe.hashtable import EMPTY, mix
from pipeline.bpe.instances import unpack_offset
from pipeline.bpe.pair_table import (T_CHANGED, T_LIVE, PairTable, drop_pair, first_slot, frequencies, frequency, home,
                                     mark_hopeless, pair_histogram, word_pair)
from pipeline.bpe.shard import Deltas, _resized

MAX_LOAD = 0.7  # linear probing stays fast up to ~0.7 load
GROW_LOAD = 0.5  # load right after a resize
HEAP_PAIRS = 1 << 16  # pairs queued by a rebuild: the best by P
SHRINK_LOAD = 0.25  # below it, the table shrinks back to GROW_LOAD
S_NHEAP = 0  # heap meta: queued entries


@njit(cache=True)
def consistency(offs, cnts, n, f, sigma):
    sum_y = np.int64(0)
    sum_x = np.int64(0)
    for i in range(n):
        dy, dx = unpack_offset(offs[i])
        sum_y += cnts[i] * dy
        sum_x += cnts[i] * dx
    mean_y = sum_y / f
    mean_x = sum_x / f
    denom = 2.0 * sigma * sigma
    acc = 0.0
    for i in range(n):
        dy, dx = unpack_offset(offs[i])
        d2 = (dy - mean_y) * (dy - mean_y) + (dx - mean_x) * (dx - mean_x)
        acc += cnts[i] * math.exp(-d2 / denom)
    return acc / f


@njit(cache=True)
def _scores(t, lay, ov, pair, alpha, sigma, offs, cnts):
    """(F, S, P) of a pair now; buffers grow when a pair has more offsets than they hold."""
    n = pair_histogram(t, lay, ov, pair, offs, cnts)
    if n > offs.shape[0]:
        offs = np.empty(2 * n, np.int64)
        cnts = np.empty(offs.shape[0], np.int64)
        n = pair_histogram(t, lay, ov, pair, offs, cnts)
    f = np.int64(0)
    for i in range(n):
        f += cnts[i]
    if f == 0:
        return f, 0.0, 0.0
    s = consistency(offs, cnts, n, f, sigma)
    return f, s, f + alpha * s


@njit(cache=True)
def _better(hP, hR, i, j):
    if hP[i] != hP[j]:
        return hP[i] > hP[j]
    if hR[2 * i] != hR[2 * j]:
        return hR[2 * i] > hR[2 * j]
    return hR[2 * i + 1] < hR[2 * j + 1]


@njit(cache=True)
def _swap(hP, hR, i, j):
    hP[i], hP[j] = hP[j], hP[i]
    hR[2 * i], hR[2 * j] = hR[2 * j], hR[2 * i]
    hR[2 * i + 1], hR[2 * j + 1] = hR[2 * j + 1], hR[2 * i + 1]


@njit(cache=True)
def _push(hP, hR, meta, p, f, pair):
    i = meta[S_NHEAP]
    meta[S_NHEAP] = i + 1
    hP[i] = p
    hR[2 * i] = f
    hR[2 * i + 1] = pair
    while i > 0:
        parent = (i - 1) // 2
        if not _better(hP, hR, i, parent):
            break
        _swap(hP, hR, i, parent)
        i = parent


@njit(cache=True)
def _sift_down(hP, hR, i, n):
    while True:
        left = 2 * i + 1
        if left >= n:
            return
        best = left
        if left + 1 < n and _better(hP, hR, left + 1, left):
            best = left + 1
        if not _better(hP, hR, best, i):
            return
        _swap(hP, hR, i, best)
        i = best


@njit(cache=True)
def _pop(hP, hR, meta):
    n = meta[S_NHEAP] - 1
    meta[S_NHEAP] = n
    _swap(hP, hR, 0, n)
    _sift_down(hP, hR, 0, n)


@njit(cache=True)
def _refresh(pairs, t, lay, ov, tmeta, alpha, sigma, p_floor, min_frequency, hP, hR, meta, offs, cnts):
    for pair in pairs:
        f, s, p = _scores(t, lay, ov, pair, alpha, sigma, offs, cnts)
        if f < min_frequency:
            if f > 0:
                drop_pair(t, lay, pair, tmeta)  # hopeless from now on (module docstring)
        elif p >= p_floor:
            _push(hP, hR, meta, p, f, pair)


@njit(cache=True)
def _peek_best(t, lay, ov, alpha, sigma, min_frequency, hP, hR, meta, offs, cnts):
    """Drop stale entries until the top equals its pair's current (P, F); returns (pair, F, S, P) or pair -1.

    The valid top stays queued: once merged, the pair's statistics change and it goes stale itself.
    """
    while meta[S_NHEAP] > 0:
        pair = hR[1]
        f, s, p = _scores(t, lay, ov, pair, alpha, sigma, offs, cnts)
        if f == hR[0] and p == hP[0] and f >= min_frequency:
            return pair, f, s, p
        _pop(hP, hR, meta)
    return np.int64(-1), np.int64(0), 0.0, 0.0


@njit(cache=True)
def _home_keys(pairs, t):
    cap = np.int64(t.shape[0])
    out = np.empty(pairs.shape[0], np.int64)
    for i in range(pairs.shape[0]):
        out[i] = (home(pairs[i], cap) << 32) | i
    return out


def _by_home(pairs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Pairs in home-slot order, so a pass over them reads the table front to back (~10x fewer misses)."""
    if pairs.shape[0] >= 1 << 32:
        return pairs
    order = np.sort(_home_keys(pairs, t)) & 0xFFFFFFFF
    return pairs[order]


@njit(cache=True)
def _dedup_sorted(v):
    if v.shape[0] == 0:
        return v
    n = 1
    for i in range(1, v.shape[0]):
        if v[i] != v[i - 1]:
            v[n] = v[i]
            n += 1
    return v[:n]


@njit(cache=True)
def _priorities(t, lay, ov, alpha, sigma, min_frequency, out, offs, cnts):
    """P of every pair with F >= min_frequency into `out` (sized by `frequencies`); returns how many."""
    cap = np.int64(t.shape[0])
    n = 0
    for i in range(cap):
        if t[i] != EMPTY and first_slot(t, lay, i, cap) and frequency(t, lay, ov, i, cap) >= min_frequency:
            f, s, p = _scores(t, lay, ov, word_pair(t[i], lay), alpha, sigma, offs, cnts)
            out[n] = p
            n += 1
    return n


@njit(cache=True)
def _fill(t, lay, ov, alpha, sigma, min_frequency, p_floor, hP, hR, meta, offs, cnts):
    """Queue every pair with F >= min_frequency and P >= p_floor (the heap must have room): appended,
    then heapified bottom-up (O(n))."""
    cap = np.int64(t.shape[0])
    n = 0
    for i in range(cap):
        if t[i] != EMPTY and first_slot(t, lay, i, cap) and frequency(t, lay, ov, i, cap) >= min_frequency:
            pair = word_pair(t[i], lay)
            f, s, p = _scores(t, lay, ov, pair, alpha, sigma, offs, cnts)
            if p >= p_floor:
                hP[n] = p
                hR[2 * n] = f
                hR[2 * n + 1] = pair
                n += 1
    for i in range(n // 2 - 1, -1, -1):
        _sift_down(hP, hR, i, n)
    meta[S_NHEAP] = n


@dataclass
class Choice:
    """The pair picked for the next merge, with everything the vocabulary records about it."""

    a: int
    b: int
    frequency: int
    consistency: float
    priority: float
    offset: tuple[int, int]
    histogram: list[tuple[int, int, int]]

    def rank(self) -> tuple[float, int, int, int]:
        """The contract's order: larger P, then larger F, then the smaller (a, b)."""
        return (self.priority, self.frequency, -self.a, -self.b)


def best_of(choices) -> Choice | None:
    """The first in the contract's order among partitions' candidates (None where a partition has none)."""
    return max((c for c in choices if c is not None), key=Choice.rank, default=None)


@njit(cache=True)
def _partition_order(keys, parts):
    """Stable counting sort of occurrence keys by the partition owning their pair: (order, bounds)."""
    owner = np.empty(keys.shape[0], np.int64)
    bounds = np.zeros(parts + 1, np.int64)
    for i in range(keys.shape[0]):
        p = np.int64((mix(keys[i] >> OFF_BITS) & np.uint64(0xFFFFFFFF)) % np.uint64(parts))  # low half: tables home by the high one
        owner[i] = p
        bounds[p + 1] += 1
    for p in range(parts):
        bounds[p + 1] += bounds[p]
    fill = bounds[:parts].copy()
    order = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        order[fill[owner[i]]] = i
        fill[owner[i]] += 1
    return order, bounds


def split_deltas(deltas: Deltas, parts: int) -> list[Deltas]:
    """Deltas cut by the partition that owns each pair (a hash of the pair, so every (pair, offset)
    of a pair lands in one partition and F, H and S are complete there)."""
    if parts == 1:
        return [deltas]
    order, bounds = _partition_order(deltas.keys, parts)
    keys, d = deltas.keys[order], deltas.d[order]
    return [Deltas(keys[bounds[p]:bounds[p + 1]], d[bounds[p]:bounds[p + 1]]) for p in range(parts)]


class Stats:
    """The statistics of one partition. `codebook_size` V tells base pairs (both ids < V) apart."""

    def __init__(self, sigma: float, min_frequency: int, codebook_size: int, alpha: float = 0.0):
        if not sigma > 0:
            raise ValueError("sigma must be > 0")
        if min_frequency < 1:
            raise ValueError("min_frequency must be >= 1")
        self.sigma, self.min_frequency, self.alpha = float(sigma), int(min_frequency), float(alpha)
        self.V = int(codebook_size)
        self.table = PairTable(self.V)
        self.changed = np.empty(1 << 12, np.int64)
        self.hP, self.hR = np.empty(1 << 10, np.float64), np.empty(2 << 10, np.int64)
        self.offs, self.cnts = np.empty(256, np.int64), np.empty(256, np.int64)
        self.meta = np.zeros(1, np.int64)  # the heap's size
        self.started = False  # the first refresh (after the first count) queues from the whole table
        self.p_floor = -math.inf  # pairs with P below it are not queued
        self.heap_base = 0  # heap size after the last rebuild: stale entries beyond ~2x that trigger one
        self.rebuilds = 0

    @property
    def live_entries(self) -> int:
        return self.table.live

    @property
    def capacity(self) -> int:
        return self.table.capacity

    def entries(self) -> dict[int, int]:
        """Every live (occurrence key, count): for tests and checks, not the hot path."""
        return self.table.entries()

    def add(self, deltas: Deltas) -> None:
        """Accumulate deltas (call `refresh` once every part of the step is in)."""
        n = len(deltas)
        if n == 0:
            return
        if self.live_entries + n > MAX_LOAD * self.capacity:
            self.table.resize(int((self.live_entries + n) / GROW_LOAD) + 1)
        if self.started:
            used = int(self.table.meta[T_CHANGED])
            if used + n > self.changed.shape[0]:
                self.changed = _resized(self.changed, max(2 * self.changed.shape[0], used + n))
        self.table.add(deltas.keys, deltas.d, self.changed, self.started)

    def max_frequency(self) -> int:
        tb = self.table
        return int(frequencies(tb.t, tb.lay, tb.ov, 1 << 62)[0])

    def refresh(self) -> None:
        """Recompute (F, S, P) of every pair changed since the last refresh and queue those above the floor."""
        if not self.started:
            self._start()
            return
        tb = self.table
        changed = self.changed[: int(tb.meta[T_CHANGED])]
        changed.sort()
        pairs = _dedup_sorted(changed)
        tb.meta[T_CHANGED] = 0
        if self.live_entries < SHRINK_LOAD * self.capacity and self.capacity > 1 << 16:
            tb.resize(int(self.live_entries / GROW_LOAD) + 16)  # dropped pairs left it mostly empty
        if int(self.meta[S_NHEAP]) + pairs.shape[0] > 2 * self.heap_base + (1 << 16):
            self._rebuild()  # stale entries piled up
            return
        pairs = _by_home(pairs, tb.t)
        self._reserve_heap(int(self.meta[S_NHEAP]) + pairs.shape[0])
        _refresh(pairs, tb.t, tb.lay, tb.ov, tb.meta, self.alpha, self.sigma, self.p_floor, self.min_frequency,
                 self.hP, self.hR, self.meta, self.offs, self.cnts)

    def _start(self) -> None:
        """After the first count: drop hopeless pairs, size the table to the rest, queue."""
        self.started = True
        tb = self.table
        drop, n = mark_hopeless(tb.t, tb.lay, tb.ov, self.min_frequency)
        tb.meta[T_LIVE] -= n
        tb.resize(int(self.live_entries / ((GROW_LOAD + MAX_LOAD) / 2)) + 16, drop)
        del drop
        self._rebuild()

    def _rebuild(self) -> None:
        """Queue the HEAP_PAIRS pairs of largest P (and any tied with the last): the floor is that P."""
        tb = self.table
        _, n = frequencies(tb.t, tb.lay, tb.ov, self.min_frequency)
        self.p_floor, queued = -math.inf, n
        if n > HEAP_PAIRS:
            ps = np.empty(n, np.float64)
            _priorities(tb.t, tb.lay, tb.ov, self.alpha, self.sigma, self.min_frequency, ps, self.offs, self.cnts)
            self.p_floor = float(np.partition(ps, n - HEAP_PAIRS)[n - HEAP_PAIRS])
            queued = int(np.count_nonzero(ps >= self.p_floor))
            del ps
        self.meta[S_NHEAP] = 0
        size = max(1024, 2 * queued + (1 << 16))
        if not size <= self.hP.shape[0] <= 2 * size:  # else the old arrays are reused: no second heap at once
            self.hP = self.hR = None
            self.hP, self.hR = np.empty(size, np.float64), np.empty(2 * size, np.int64)
        _fill(tb.t, tb.lay, tb.ov, self.alpha, self.sigma, self.min_frequency, self.p_floor, self.hP, self.hR,
              self.meta, self.offs, self.cnts)
        self.heap_base = int(self.meta[S_NHEAP])
        self.rebuilds += 1

    def _reserve_heap(self, n: int) -> None:
        if n > self.hP.shape[0]:
            cap = max(2 * self.hP.shape[0], n)
            self.hP, self.hR = _resized(self.hP, cap), _resized(self.hR, 2 * cap)

    def _peek(self):
        tb = self.table
        return _peek_best(tb.t, tb.lay, tb.ov, self.alpha, self.sigma, self.min_frequency, self.hP, self.hR,
                          self.meta, self.offs, self.cnts)

    def best(self) -> Choice | None:
        """The eligible pair with the largest (P, F, -a, -b), or None (it stays queued)."""
        pair, f, s, p = self._peek()
        if pair < 0 and self.p_floor > -math.inf:  # every queued pair is gone: the best is among the rest
            self._rebuild()
            pair, f, s, p = self._peek()
        if pair < 0:
            return None
        hist = self.histogram(int(pair))
        mode = min(hist, key=lambda h: (-h[2], h[0], h[1]))
        return Choice(int(pair) >> ID_BITS, int(pair) & ID_MASK, int(f), float(s), float(p), (mode[0], mode[1]), hist)

    def histogram(self, pair: int) -> list[tuple[int, int, int]]:
        tb = self.table
        offs, cnts = self.offs, self.cnts
        n = pair_histogram(tb.t, tb.lay, tb.ov, pair, offs, cnts)
        if n > offs.shape[0]:  # more offsets than the buffers hold: read again into buffers that fit
            offs, cnts = np.empty(n, np.int64), np.empty(n, np.int64)
            n = pair_histogram(tb.t, tb.lay, tb.ov, pair, offs, cnts)
        return [(int(o) // OFF_SPAN, int(o) % OFF_SPAN - OFF_BIAS, int(c)) for o, c in zip(offs[:n], cnts[:n])]

    def memory_bytes(self) -> int:
        return int(sum(self.memory_parts().values()))

    def memory_parts(self) -> dict[str, int]:
        return {**self.table.memory_parts(), "heap": int(self.hP.nbytes + self.hR.nbytes),
                "changed": int(self.changed.nbytes)}
