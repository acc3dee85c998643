"""Which base pairs can ever merge, known before the first count tables a single occurrence.

A pair of two base codes only loses occurrences once merging starts (every new occurrence
involves the token just made), so a base pair whose frequency over the whole corpus is below
min_frequency can never merge. Most of the first count's (pair, offset) entries belong to such
pairs (~60% on the synthetic corpora), and the table must hold them until every grid is counted.
So a cheaper pass goes first: every worker counts the base pairs of its grids in a dense V x V
array of 8-bit counters that stop at 255; the arrays are summed (saturating) over the workers,
and the count then tables only the pairs whose sum reaches min_frequency. The sums are exact
below 255, which is all the comparison needs.

Dense means V^2 bytes per worker (64 MB for V = 8192): it is used up to V = MAX_CODEBOOK and
min_frequency <= 255; otherwise the count tables every pair and the statistics drop the rare
ones once it is done (the result is the same, only the first count's peak memory differs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.bpe.constants import ID_BITS, ID_MASK, OFF_BITS
from pipeline.numba_cache import njit

MAX_CODEBOOK = 16384  # V^2 counters = 256 MB at most
SATURATED = 255


def usable(codebook_size: int, min_frequency: int) -> bool:
    return 1 < min_frequency <= SATURATED and 0 < codebook_size <= MAX_CODEBOOK


@njit(cache=True)
def _base_index(key, V):
    """a * V + b of an occurrence key's pair when both are base codes, else -1."""
    pair = key >> OFF_BITS
    a = pair >> ID_BITS
    b = pair & ID_MASK
    return a * V + b if a < V and b < V else np.int64(-1)


@njit(cache=True)
def count_base_pairs(keys, V, counts):
    """Add the base pairs among occurrence keys to dense saturating counters (index a * V + b)."""
    for j in range(keys.shape[0]):
        i = _base_index(keys[j], V)
        if i >= 0 and counts[i] < SATURATED:
            counts[i] += 1


@njit(cache=True)
def add_saturating(total, part):
    """total += part, in place, stopping at 255."""
    for i in range(total.shape[0]):
        s = np.int64(total[i]) + part[i]
        total[i] = SATURATED if s > SATURATED else s


@njit(cache=True)
def keep_keys(keys, V, keep):
    """Keys whose pair is not a base pair or is a base pair marked in `keep` (packed bits), compacted in place."""
    n = 0
    for j in range(keys.shape[0]):
        i = _base_index(keys[j], V)
        if i >= 0 and not (keep[i >> 3] >> (i & 7)) & 1:
            continue
        keys[n] = keys[j]
        n += 1
    return keys[:n]


@njit(cache=True)
def pack_keep(total, min_frequency):
    """(bit i set where total[i] >= min_frequency, packed little-endian; the largest total below it)."""
    keep = np.zeros((total.shape[0] + 7) >> 3, np.uint8)
    max_left_out = 0
    for i in range(total.shape[0]):
        c = total[i]
        if c >= min_frequency:
            keep[i >> 3] |= np.uint8(1 << (i & 7))
        elif c > max_left_out:
            max_left_out = c
    return keep, max_left_out


@dataclass
class PairFilter:
    """The base pairs to table in the first count, and the largest frequency of those left out.

    `keep` packs one bit per pair a * V + b (little bit order). `max_left_out` is exact (all below
    min_frequency < 255): alpha_rel needs the largest frequency of all pairs, tabled or not.
    """

    codebook_size: int
    keep: np.ndarray
    max_left_out: int

    @staticmethod
    def from_total(total: np.ndarray, codebook_size: int, min_frequency: int) -> "PairFilter":
        keep, max_left_out = pack_keep(total, min_frequency)
        return PairFilter(int(codebook_size), keep, int(max_left_out))

    def apply(self, keys: np.ndarray) -> np.ndarray:
        return keep_keys(keys, self.codebook_size, self.keep)


def slice_bounds(codebook_size: int, parts: int) -> np.ndarray:
    """Cuts of the V * V counters into `parts` slices, each a whole number of bytes of `keep` bits
    (a multiple of 8 counters), so the slices' filters join by concatenation."""
    n = codebook_size * codebook_size
    cuts = (np.arange(parts + 1, dtype=np.int64) * n // parts) // 8 * 8
    cuts[-1] = n
    return cuts


def join_slices(codebook_size: int, keeps: list[np.ndarray], left_outs: list[int]) -> PairFilter:
    """The filter from the slices' packed bits (in slice order) and their largest left-out totals."""
    return PairFilter(int(codebook_size), np.concatenate(keeps), int(max(left_outs, default=0)))


def combine(parts, codebook_size: int, min_frequency: int) -> PairFilter:
    """The filter from every worker's dense counts (an iterable: one array is held at a time)."""
    total = None
    for part in parts:
        if total is None:
            total = part if part.flags.writeable else part.copy()
        else:
            add_saturating(total, part)
        del part
    if total is None:
        total = np.zeros(codebook_size * codebook_size, np.uint8)
    return PairFilter.from_total(total, codebook_size, min_frequency)
