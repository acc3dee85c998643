"""Open-addressing hash tables keyed by non-negative int64, for numba hot loops.

numba's typed dicts are several times slower in tight loops. A table here is one flat int64
array of (key, value) slots, interleaved so that a lookup costs one cache miss: slot s holds
its key at t[2s] (-1 when empty) and its value at t[2s + 1]. Values are usually dense indices
into caller-owned record arrays. Capacity is a power of two; callers `grow` at half load.
"""
from __future__ import annotations

import mmap

import numpy as np
from pipeline.numba_cache import njit

EMPTY = -1


@njit(cache=True)
def mix(key):
    x = np.uint64(key)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@njit(cache=True)
def slot_for(t, key):
    """Slot holding `key`, or the empty slot where it belongs (then t[2*slot] == EMPTY)."""
    mask = np.int64((t.shape[0] >> 1) - 1)
    i = np.int64(mix(key) & np.uint64(mask))
    while True:
        k = t[2 * i]
        if k == key or k == EMPTY:
            return i
        i = (i + 1) & mask


@njit(cache=True)
def get(t, key):
    """Value stored for `key`, or -1."""
    s = slot_for(t, key)
    if t[2 * s] == EMPTY:
        return np.int64(-1)
    return t[2 * s + 1]


def capacity(t: np.ndarray) -> int:
    return t.shape[0] >> 1


def new_table(entries: int) -> np.ndarray:
    """A table with room for `entries` keys at half load."""
    cap = 1 << max(4, int(2 * entries - 1).bit_length())
    return np.full(2 * cap, EMPTY, dtype=np.int64)


@njit(cache=True)
def grow(t):
    """Double the capacity, keeping every mapping."""
    out = np.full(t.shape[0] * 2, EMPTY, dtype=np.int64)
    for s in range(t.shape[0] >> 1):
        k = t[2 * s]
        if k != EMPTY:
            j = slot_for(out, k)
            out[2 * j] = k
            out[2 * j + 1] = t[2 * s + 1]
    return out


@njit(cache=True)
def clear_keys(t, keys, n):
    """Empty a table that holds exactly keys[:n]: wiping each probe run from its home slot is O(n)."""
    if 8 * n >= (t.shape[0] >> 1):
        t[:] = EMPTY
        return
    mask = np.int64((t.shape[0] >> 1) - 1)
    for j in range(n):
        i = np.int64(mix(keys[j]) & np.uint64(mask))
        while t[2 * i] != EMPTY:
            t[2 * i] = EMPTY
            i = (i + 1) & mask


class ResizableArray:
    """A flat array that grows without a second copy of itself.

    Growing a table by rehashing into a new array holds the old and the new one at once (2.4x the
    table at the growth step: the run's peak), and so does growing the token lists' arena. Here the
    array lives in a private anonymous mapping that `resize` extends with mremap (Linux), moving
    pages instead of data, so growing costs only the new part (a table then re-homes its entries
    in place, `stats._rehash_in_place`). Where the mapping cannot be resized, the array is copied
    (the old peak, nothing worse).
    """

    def __init__(self, n: int, dtype=np.int64, fill=EMPTY):
        self.dtype, self.fill = np.dtype(dtype), fill
        self._map: mmap.mmap | None = None
        try:
            self._map = mmap.mmap(-1, self._bytes(n), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (AttributeError, OSError, ValueError):  # no private anonymous maps here
            self.array = np.full(n, 0 if fill is None else fill, self.dtype)
            return
        self.array = np.frombuffer(self._map, self.dtype, count=n)
        if fill is not None:  # else left as the kernel gives it (zeros), and untouched pages cost nothing
            self.array[:] = fill

    def _bytes(self, n: int) -> int:
        return max(n * self.dtype.itemsize, 8)

    def resize(self, n: int) -> np.ndarray:
        """The array with n entries: the first min(n, old) kept, any new ones `fill`."""
        old = self.array.shape[0]
        if self._map is not None:
            self.array = None  # the mapping cannot move while a view of it exists
            try:
                self._map.resize(self._bytes(n))
                self.array = np.frombuffer(self._map, self.dtype, count=n)
            except (OSError, ValueError, SystemError, BufferError):  # refused (a view still exists?): copy once
                kept = np.frombuffer(self._map, self.dtype, count=min(n, old))
                self.array = np.full(n, 0 if self.fill is None else self.fill, self.dtype)
                self.array[: kept.shape[0]] = kept
                del kept
                self._map = None
                return self.array
        else:
            out = np.full(n, 0 if self.fill is None else self.fill, self.dtype)
            out[: min(n, old)] = self.array[: min(n, old)]
            self.array = out
            return out
        if n > old and self.fill is not None:
            self.array[old:] = self.fill
        return self.array
