"""The count of every live (pair, offset) of one partition, one int64 word per entry.

A hash multimap with linear probing, homed by the pair alone, so all offsets of a pair lie in the
probe run that starts at the pair's home slot (stats.py reads F, the histogram and S from one
short scan). Entries whose count reaches zero are deleted (backward shift); the table grows and
shrinks in place (`rehash_in_place`, hashtable.ResizableArray).

A word packs the entry as `(a, b, offset, count)` in the widths this run actually needs, not the
occurrence keys' fixed 21 + 21 + 21 bits: ids below 2^ib, offsets below 2^ob, and the count in
the cb = 63 - 2 ib - ob bits left (the sign bit stays clear, so EMPTY = -1 is never a word).
With V = 8192, 8,192 merges and 32 x 32 grids that is 14 + 14 + 16 bits and a 19-bit count: half
the memory of a (key, count) pair of words. The widths start small and widen when a key needs
more (`repack`: the words are rewritten in place, and since homes come from the full pair no
entry moves). A count that does not fit (>= SAT = 2^cb - 1) is kept in a small overflow table
keyed by the occurrence key, its word holding SAT: at most total occurrences / SAT entries can
be there, a few hundred at 100K grids. The overflow table is rebuilt from the words whenever
the table is resized or it fills, which also clears entries whose count fell back below SAT.
"""
from __future__ import annotations

import numpy as np
from pipeline.numba_cache import njit

from pipeline.bpe.constants import ID_BITS, ID_MASK, OFF_BITS, OFF_MASK, OFF_SPAN
from pipeline.bpe.hashtable import EMPTY, ResizableArray, mix, new_table, slot_for

WORD_BITS = 63
MIN_COUNT_BITS = 4  # below this nearly every count would overflow
MAX_COUNT_BITS = WORD_BITS  # a cap on the count field (tests lower it to send most counts to the overflow table)
FIRST_OFFSET_BITS = 12  # the base pairs' offsets (0, 1) and (1, 0) pack below 2^12
T_LIVE = 0  # meta: live entries
T_OVERFLOW = 1  # meta: used slots of the overflow table
T_CHANGED = 2  # meta: pairs noted in `changed` since the last refresh


def _count_bits(id_bits: int, off_bits: int) -> int:
    return WORD_BITS - 2 * id_bits - off_bits


def layout(id_bits: int, off_bits: int) -> tuple[int, int, int]:
    """(ib, ob, cb) of words for ids < 2^id_bits and packed offsets < 2^off_bits."""
    cb = _count_bits(id_bits, off_bits)
    if cb < MIN_COUNT_BITS:
        raise ValueError(f"token ids of {id_bits} bits and offsets of {off_bits} bits leave {cb} bits for a count "
                         f"in the pair table (at least {MIN_COUNT_BITS}): fewer merges or smaller grids")
    return (int(id_bits), int(off_bits), int(min(cb, MAX_COUNT_BITS)))


def offset_bits(max_height: int) -> int:
    """Bits of the largest packed offset in grids of at most `max_height` rows (constants.py's packing)."""
    return int(max(1, max_height) * OFF_SPAN - 1).bit_length()


def fits(max_id: int, max_height: int) -> bool:
    """Whether ids up to `max_id` in grids of up to `max_height` rows leave a count field (the
    learner checks this before it starts: ids < 2^19 always fit, ids < 2^21 in grids of up to 64 rows)."""
    return _count_bits(int(max_id).bit_length(), offset_bits(max_height)) >= MIN_COUNT_BITS


@njit(cache=True)
def home(pair, cap):
    """Home slot of a pair: multiply-shift of the hash's high half (partitions use the low half)."""
    return np.int64(((mix(pair) >> np.uint64(32)) * np.uint64(cap)) >> np.uint64(32))


@njit(cache=True)
def step(i, cap):
    return i + 1 if i + 1 < cap else 0


@njit(cache=True, inline="always")
def packed_pair(pair, lay):
    return ((pair >> ID_BITS) << lay[0]) | (pair & ID_MASK)


@njit(cache=True, inline="always")
def word_packed_pair(w, lay):
    return w >> (lay[1] + lay[2])


@njit(cache=True, inline="always")
def word_pair(w, lay):
    """The pair (a << ID_BITS | b) of a word."""
    p = w >> (lay[1] + lay[2])
    return ((p >> lay[0]) << ID_BITS) | (p & ((np.int64(1) << lay[0]) - 1))


@njit(cache=True, inline="always")
def word_offset(w, lay):
    return (w >> lay[2]) & ((np.int64(1) << lay[1]) - 1)


@njit(cache=True, inline="always")
def word_key(w, lay):
    """The occurrence key (pair << OFF_BITS | offset) of a word."""
    return (word_pair(w, lay) << OFF_BITS) | word_offset(w, lay)


@njit(cache=True, inline="always")
def word_count(w, lay, ov):
    sat = (np.int64(1) << lay[2]) - 1
    c = w & sat
    if c == sat:
        return ov[2 * slot_for(ov, word_key(w, lay)) + 1]
    return c


@njit(cache=True)
def _overflow_put(ov, key, c, meta):
    s = slot_for(ov, key)
    if ov[2 * s] == EMPTY:
        ov[2 * s] = key
        meta[T_OVERFLOW] += 1
    ov[2 * s + 1] = c


@njit(cache=True, inline="always")
def _store(t, i, packed_key, key, c, lay, ov, meta):
    """Write count c of an entry into slot i (SAT and the overflow table when it does not fit)."""
    sat = (np.int64(1) << lay[2]) - 1
    if c >= sat:
        t[i] = (packed_key << lay[2]) | sat
        _overflow_put(ov, key, c, meta)
    else:
        t[i] = (packed_key << lay[2]) | c


@njit(cache=True)
def delete(t, i, cap, lay):
    """Backward-shift deletion: later entries of the run move up so every run stays unbroken."""
    j = i
    while True:
        t[i] = EMPTY
        while True:
            j = step(j, cap)
            w = t[j]
            if w == EMPTY:
                return
            h = home(word_pair(w, lay), cap)
            stays = (i < h <= j) if i <= j else (h > i or h <= j)
            if not stays:
                break
        t[i] = t[j]
        i = j


@njit(cache=True)
def apply(keys, d, j0, t, lay, ov, changed, meta, started):
    """Add signed deltas keys[j0:] / d[j0:]. Returns (j, why): j = len(keys) when all are in,
    else it stopped before keys[j] because that key needs wider fields (why 1) or the overflow
    table may be full (why 2). `started` (after the first count): note each changed pair in
    `changed` (meta[T_CHANGED] of them) and ignore deltas to absent entries, which are of pairs dropped
    as hopeless (they only ever lose occurrences)."""
    cap = np.int64(t.shape[0])
    id_lim = np.int64(1) << lay[0]
    off_lim = np.int64(1) << lay[1]
    ov_room = (ov.shape[0] >> 2) - 1  # overflow slots kept below half load
    for j in range(j0, keys.shape[0]):
        key = keys[j]
        pair = key >> OFF_BITS
        off = key & OFF_MASK
        if (pair >> ID_BITS) >= id_lim or (pair & ID_MASK) >= id_lim or off >= off_lim:
            return j, 1
        if meta[T_OVERFLOW] >= ov_room:
            return j, 2
        pk = (packed_pair(pair, lay) << lay[1]) | off
        i = home(pair, cap)
        while True:
            w = t[i]
            if w == EMPTY or (w >> lay[2]) == pk:
                break
            i = step(i, cap)
        if w == EMPTY:
            if (started and d[j] <= 0) or d[j] == 0:
                continue
            c = d[j]
            if c < 0:
                raise ValueError("negative occurrence count: shards and statistics disagree")
            meta[T_LIVE] += 1
            _store(t, i, pk, key, c, lay, ov, meta)
        else:
            c = word_count(w, lay, ov) + d[j]
            if c < 0:
                raise ValueError("negative occurrence count: shards and statistics disagree")
            if c == 0:
                delete(t, i, cap, lay)
                meta[T_LIVE] -= 1
            else:
                _store(t, i, pk, key, c, lay, ov, meta)
        if started:
            changed[meta[T_CHANGED]] = pair
            meta[T_CHANGED] += 1
    return keys.shape[0], 0


@njit(cache=True)
def drop_pair(t, lay, pair, meta):
    """Delete every entry of a pair (its run from the home slot; a deletion shifts the next entry in)."""
    cap = np.int64(t.shape[0])
    pp = packed_pair(pair, lay)
    i = home(pair, cap)
    while t[i] != EMPTY:
        if word_packed_pair(t[i], lay) == pp:
            delete(t, i, cap, lay)
            meta[T_LIVE] -= 1
        else:
            i = step(i, cap)


@njit(cache=True)
def pair_histogram(t, lay, ov, pair, offs, cnts):
    """(packed offset, count) of a pair into offs/cnts sorted by offset, i.e. by (dy, dx); returns
    how many offsets the pair has. Only as many as the buffers hold are written: a larger result
    means call again with buffers of that size."""
    cap = np.int64(t.shape[0])
    room = offs.shape[0]
    pp = packed_pair(pair, lay)
    i = home(pair, cap)
    n = 0
    while True:
        w = t[i]
        if w == EMPTY:
            return n
        if word_packed_pair(w, lay) == pp:
            if n < room:
                o = word_offset(w, lay)
                c = word_count(w, lay, ov)
                m = n
                while m > 0 and offs[m - 1] > o:
                    offs[m] = offs[m - 1]
                    cnts[m] = cnts[m - 1]
                    m -= 1
                offs[m] = o
                cnts[m] = c
            n += 1
        i = step(i, cap)


@njit(cache=True)
def first_slot(t, lay, i, cap):
    """Whether slot i holds the first entry of its pair's probe run (each pair is then seen once)."""
    pp = word_packed_pair(t[i], lay)
    j = home(word_pair(t[i], lay), cap)
    while word_packed_pair(t[j], lay) != pp:
        j = step(j, cap)
    return j == i


@njit(cache=True)
def frequency(t, lay, ov, i, cap):
    """F of the pair whose run starts at slot i (its entries lie between i and the run's end)."""
    pp = word_packed_pair(t[i], lay)
    f = np.int64(0)
    j = i
    while t[j] != EMPTY:
        if word_packed_pair(t[j], lay) == pp:
            f += word_count(t[j], lay, ov)
        j = step(j, cap)
    return f


@njit(cache=True)
def frequencies(t, lay, ov, floor):
    """(largest F, number of pairs with F >= floor), in one front-to-back pass."""
    cap = np.int64(t.shape[0])
    best = np.int64(0)
    n = 0
    for i in range(cap):
        if t[i] != EMPTY and first_slot(t, lay, i, cap):
            f = frequency(t, lay, ov, i, cap)
            best = max(best, f)
            if f >= floor:
                n += 1
    return best, n


@njit(cache=True)
def mark_hopeless(t, lay, ov, min_frequency):
    """Per slot, 1 where its entry's pair has F below min_frequency; and how many such entries."""
    cap = np.int64(t.shape[0])
    drop = np.zeros(cap, np.uint8)
    n = 0
    for s in range(cap):
        if t[s] != EMPTY and first_slot(t, lay, s, cap) and frequency(t, lay, ov, s, cap) < min_frequency:
            pp = word_packed_pair(t[s], lay)
            j = s
            while t[j] != EMPTY:
                if word_packed_pair(t[j], lay) == pp:
                    drop[j] = 1
                    n += 1
                j = step(j, cap)
    return drop, n


@njit(cache=True)
def rehash_in_place(t, lay, old_cap, new_cap, drop):
    """Re-home the entries of slots [0, old_cap) into slots [0, new_cap) of the same array (which
    holds max(old_cap, new_cap) slots), leaving out those marked in `drop` (empty: none).

    Entries are taken out in slot order and put where they belong among the entries already
    placed; one found in the way, not placed yet, changes places with the one carried and is
    carried on. Placed entries never move again and only placed entries lie between one's home
    and its slot, so every probe run ends up unbroken. No second table: growing costs only the
    new slots (the caller extends the array with realloc, which moves no data)."""
    done = np.zeros(new_cap, np.uint8)
    dropping = drop.shape[0] > 0
    for s in range(old_cap):
        if t[s] == EMPTY or (s < new_cap and done[s]):
            continue
        w = t[s]
        t[s] = EMPTY
        if dropping and drop[s]:
            continue
        while True:
            i = home(word_pair(w, lay), new_cap)
            while done[i]:
                i = step(i, new_cap)
            w2 = t[i]
            t[i] = w
            done[i] = 1
            if w2 == EMPTY:
                break
            if dropping and drop[i]:
                break
            w = w2


@njit(cache=True)
def _saturated(t, lay, ov, sat):
    n = 0
    for i in range(t.shape[0]):
        if t[i] != EMPTY and word_count(t[i], lay, ov) >= sat:
            n += 1
    return n


@njit(cache=True)
def repack(t, old, new, ov, new_ov, meta):
    """Rewrite every word from layout `old` to `new` in place (homes do not change); counts that do
    not fit the new count field go to `new_ov`, which must have room for them."""
    meta[T_OVERFLOW] = 0
    for i in range(t.shape[0]):
        w = t[i]
        if w != EMPTY:
            key = word_key(w, old)
            c = word_count(w, old, ov)
            pk = (packed_pair(key >> OFF_BITS, new) << new[1]) | (key & OFF_MASK)
            _store(t, i, pk, key, c, new, new_ov, meta)


@njit(cache=True)
def entries(t, lay, ov):
    """(occurrence keys, counts) of every entry, in slot order."""
    n = 0
    for i in range(t.shape[0]):
        if t[i] != EMPTY:
            n += 1
    keys = np.empty(n, np.int64)
    counts = np.empty(n, np.int64)
    k = 0
    for i in range(t.shape[0]):
        if t[i] != EMPTY:
            keys[k] = word_key(t[i], lay)
            counts[k] = word_count(t[i], lay, ov)
            k += 1
    return keys, counts


def _overflow_table(entries_: int) -> np.ndarray:
    return new_table(max(16, entries_))


class PairTable:
    """The words (`t`), their layout (`lay`), the overflow table (`ov`) and the live count, for
    the kernels above; resizing and widening happen here."""

    def __init__(self, codebook_size: int, slots: int = 1 << 13):
        self._words = ResizableArray(slots)
        self.t = self._words.array
        self.lay = layout(max(1, int(codebook_size)).bit_length(), FIRST_OFFSET_BITS)
        self.ov = _overflow_table(16)
        self.meta = np.zeros(3, np.int64)  # live entries, overflow slots used, changed pairs noted

    @property
    def live(self) -> int:
        return int(self.meta[T_LIVE])

    @property
    def capacity(self) -> int:
        return int(self.t.shape[0])

    def add(self, keys: np.ndarray, d: np.ndarray, changed: np.ndarray, started: bool) -> None:
        j = 0
        while True:
            j, why = apply(keys, d, j, self.t, self.lay, self.ov, changed, self.meta, started)
            if why == 0:
                return
            if why == 1:
                self._widen(keys[j:])
            else:
                self._relayout(self.lay, 2 * int(self.meta[T_OVERFLOW]) + 16)

    def _widen(self, keys: np.ndarray) -> None:
        """Widen ids and offsets to fit every key of `keys` (the rest of a batch: once, not per key)."""
        pairs = keys >> OFF_BITS
        ids = max(int((pairs >> ID_BITS).max()), int((pairs & ID_MASK).max()))
        offs = int((keys & OFF_MASK).max())
        new = layout(max(self.lay[0], ids.bit_length()), max(self.lay[1], offs.bit_length()))
        self._relayout(new, 16 + int(self.meta[T_OVERFLOW]))

    def _relayout(self, new: tuple[int, int, int], room: int = 16) -> None:
        """Rewrite the words in layout `new` with a fresh overflow table: the entries whose counts
        do not fit the new field, and room for `room` more (stale entries are left behind)."""
        sat = (1 << new[2]) - 1
        ov = _overflow_table(_saturated(self.t, self.lay, self.ov, sat) + room)
        repack(self.t, self.lay, new, self.ov, ov, self.meta)
        self.lay, self.ov = new, ov

    def resize(self, cap: int, drop: np.ndarray | None = None) -> None:
        """Re-home every entry (but those marked in `drop`) in a table of `cap` slots, in place."""
        old = self.capacity
        if cap > old:
            self.t = None
            self.t = self._words.resize(cap)
        rehash_in_place(self.t, self.lay, old, cap, np.empty(0, np.uint8) if drop is None else drop)
        if cap < old:
            self.t = None
            self.t = self._words.resize(cap)
        self._relayout(self.lay)

    def entries(self) -> dict[int, int]:
        keys, counts = entries(self.t, self.lay, self.ov)
        return dict(zip(keys.tolist(), counts.tolist()))

    def memory_parts(self) -> dict[str, int]:
        return {"table": int(self.t.nbytes), "overflow": int(self.ov.nbytes)}
