"""numba kernels of one shard: list occurrences, find a merge's candidates, apply it, keep deltas.

Where the instances of a token are, without a per-pair place index: every token has a list of
its instances in increasing anchor order (a base code's cells from the start; a merged token's
instances appended in the step that creates them, which visits X in anchor order). Instances
die (absorbed by a merge), so a list keeps dead entries until it is read: the scan keeps only
those still alive, compacting the list as it goes. A merge's X candidates are the live
instances of a, or, when b is rarer, the a-neighbours of the live instances of b.

Deltas: (a, b, offset) -> signed count change since the last drain, in a small hash table that
stays in cache. A key packs the pair and the offset (see `occurrence_key`).

`merge_candidates` stops *before* an instance merge that might not fit in the delta table and
returns its position; the Python side grows the table and calls again from there.
"""
from __future__ import annotations

import numpy as np
from pipeline.numba_cache import njit

from pipeline.bpe.constants import ID_BITS, MAX_FORWARD, NEIGHBOURS, OFF_BITS
from pipeline.bpe.hashtable import EMPTY, clear_keys, slot_for
from pipeline.bpe.instances import absorb, choose_partner, neighbours, pack_offset, step_inside, touches

M_NDELTA = 0
M_STAMP = 1
M_TL_TOP = 2  # end of the token-list arena
META_SIZE = 4


@njit(cache=True)
def pair_key(a, b):
    return (np.int64(a) << ID_BITS) | np.int64(b)


@njit(cache=True)
def occurrence_key(tok, lo, hi, gs, w):
    """(pair << OFF_BITS) | offset of the occurrence between instances lo < hi of one grid."""
    lr = (lo - gs) // w
    hr = (hi - gs) // w
    off = pack_offset(hr - lr, (hi - gs) - hr * w - ((lo - gs) - lr * w))
    return (pair_key(tok[lo], tok[hi]) << OFF_BITS) | off


@njit(cache=True)
def occurrences(owner, nxt, tok, gstart, gw, gh, mark, buf, meta):
    """Keys of every occurrence in the grids gstart[0] .. gstart[-1] of the current segmentation."""
    n_cells = gstart[gstart.shape[0] - 1] - gstart[0]
    keys = np.empty(MAX_FORWARD * n_cells, np.int64)  # each occurrence owns at least one distinct cell adjacency
    m = 0
    for g in range(gstart.shape[0] - 1):
        gs = gstart[g]
        w = gw[g]
        h = gh[g]
        for x in range(gs, gstart[g + 1]):
            if owner[x] != x:
                continue
            meta[M_STAMP] += 1
            n = neighbours(owner, nxt, x, gs, w, h, mark, meta[M_STAMP], buf)
            for i in range(n):
                y = buf[i]
                if y > x:
                    keys[m] = occurrence_key(tok, x, y, gs, w)
                    m += 1
    return keys[:m]


@njit(cache=True)
def index_tokens(owner, tok, n_tok, room):
    """Every instance, listed by token in increasing anchor order: (arena with `room` spare slots,
    per-token start, per-token length)."""
    lens = np.zeros(n_tok, np.int64)
    n = 0
    for x in range(owner.shape[0]):
        if owner[x] == x:
            lens[tok[x]] += 1
            n += 1
    starts = np.zeros(n_tok, np.int64)
    for t in range(1, n_tok):
        starts[t] = starts[t - 1] + lens[t - 1]
    arena = np.empty(n + room, np.int32)
    fill = starts.copy()
    for x in range(owner.shape[0]):
        if owner[x] == x:
            t = tok[x]
            arena[fill[t]] = x
            fill[t] += 1
    return arena, starts, lens, n


@njit(cache=True)
def compact_arena(arena, starts, lens, n_tok, owner, tok):
    """Drop the dead entries of every token list, in place (lists lie in token order); returns the new top."""
    top = 0
    for t in range(n_tok):
        s = starts[t]
        starts[t] = top
        for i in range(s, s + lens[t]):
            x = arena[i]
            if owner[x] == x and tok[x] == t:
                arena[top] = x
                top += 1
        lens[t] = top - starts[t]
    return top


@njit(cache=True)
def run_counts(sorted_keys):
    """Distinct values of a sorted array and how often each occurs."""
    n = 0
    for i in range(sorted_keys.shape[0]):
        if i == 0 or sorted_keys[i] != sorted_keys[i - 1]:
            n += 1
    uniq = np.empty(n, np.int64)
    counts = np.zeros(n, np.int64)
    r = -1
    for i in range(sorted_keys.shape[0]):
        if i == 0 or sorted_keys[i] != sorted_keys[i - 1]:
            r += 1
            uniq[r] = sorted_keys[i]
        counts[r] += 1
    return uniq, counts


@njit(cache=True)
def _grid_of(gstart, cell):
    lo = 0
    hi = gstart.shape[0] - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if gstart[mid] <= cell:
            lo = mid
        else:
            hi = mid - 1
    return lo


@njit(cache=True)
def compact_live(arena, start, n, t, owner, tok):
    """Keep the instances of token t that are still alive (in order); returns the new length."""
    k = 0
    for i in range(start, start + n):
        x = arena[i]
        if owner[x] == x and tok[x] == t:
            arena[start + k] = x
            k += 1
    return k


@njit(cache=True)
def partners_before(ys, a, owner, nxt, tok, gstart, gw, gh):
    """Instances of token a adjacent to some y in `ys` (ascending) with a smaller anchor; may repeat."""
    out = np.empty(max(16, 2 * ys.shape[0]), np.int32)
    m = 0
    if ys.shape[0] == 0:
        return out[:0]
    g = _grid_of(gstart, ys[0])
    for y in ys:
        while gstart[g + 1] <= y:
            g += 1
        gs = gstart[g]
        w = gw[g]
        h = gh[g]
        cell = y
        while cell != -1:
            local = cell - gs
            r = local // w
            c = local - r * w
            for step in NEIGHBOURS:
                if step_inside(step, r, c, h, w):
                    x = owner[cell + step[0] * w + step[1]]
                    if x < y and tok[x] == a:
                        if m == out.shape[0]:
                            grown = np.empty(2 * m, np.int32)
                            grown[:m] = out
                            out = grown
                        out[m] = x
                        m += 1
            cell = nxt[cell]
    return out[:m]


@njit(cache=True)
def _count(sign, key, dt, dkey, dval, meta):
    t = slot_for(dt, key)
    if dt[2 * t] == EMPTY:
        j = meta[M_NDELTA]
        dt[2 * t] = key
        dt[2 * t + 1] = j
        meta[M_NDELTA] = j + 1
        dkey[j] = key
        dval[j] = sign
    else:
        dval[dt[2 * t + 1]] += sign


@njit(cache=True)
def merge_candidates(xs, i_start, a, b, new_tok, uy, ux,
                     owner, nxt, tok, gstart, gw, gh, mark, buf_x, buf_y, max_cells,
                     dt, dkey, dval, meta, tl_arena):
    """The contract's step 3 for X candidates `xs` (ascending anchors) from position i_start.

    Every occurrence of X and Y is uncounted and every occurrence of the merged instance counted;
    merged anchors are appended to the token list at tl_arena[meta[M_TL_TOP]:] (the caller
    reserves room for every merge that can happen). Returns (next position, instance merges done).
    """
    done = 0
    if i_start >= xs.shape[0]:
        return xs.shape[0], done
    g = _grid_of(gstart, xs[i_start])
    for i in range(i_start, xs.shape[0]):
        x = xs[i]
        if owner[x] != x or tok[x] != a:
            continue
        while gstart[g + 1] <= x:
            g += 1
        gs = gstart[g]
        w = gw[g]
        if not touches(owner, nxt, tok, x, b, gs, w, gh[g], True):
            continue
        if 2 * (meta[M_NDELTA] + 4 * max_cells) > (dt.shape[0] >> 1) or meta[M_NDELTA] + 4 * max_cells > dkey.shape[0]:
            return i, done
        meta[M_STAMP] += 1
        nx = neighbours(owner, nxt, x, gs, w, gh[g], mark, meta[M_STAMP], buf_x)
        y = choose_partner(tok, x, buf_x, nx, b, gs, w, uy, ux)
        if y < 0:
            continue
        meta[M_STAMP] += 1
        ny = neighbours(owner, nxt, y, gs, w, gh[g], mark, meta[M_STAMP], buf_y)
        for j in range(nx):
            n = buf_x[j]
            _count(-1, occurrence_key(tok, min(x, n), max(x, n), gs, w), dt, dkey, dval, meta)
        for j in range(ny):
            n = buf_y[j]
            if n != x:
                _count(-1, occurrence_key(tok, min(y, n), max(y, n), gs, w), dt, dkey, dval, meta)
        absorb(owner, nxt, tok, x, y, new_tok)
        meta[M_STAMP] += 1
        stamp = meta[M_STAMP]
        for j in range(nx):
            n = buf_x[j]
            if n != y:
                mark[n - gs] = stamp
                _count(1, occurrence_key(tok, min(x, n), max(x, n), gs, w), dt, dkey, dval, meta)
        for j in range(ny):
            n = buf_y[j]
            if n != x and mark[n - gs] != stamp:
                mark[n - gs] = stamp
                _count(1, occurrence_key(tok, min(x, n), max(x, n), gs, w), dt, dkey, dval, meta)
        tl_arena[meta[M_TL_TOP]] = x
        meta[M_TL_TOP] += 1
        done += 1
    return xs.shape[0], done


@njit(cache=True)
def drain_deltas(dt, dkey, dval, meta):
    """Non-zero deltas as (keys, changes); empties the delta table."""
    n = meta[M_NDELTA]
    keep = 0
    for j in range(n):
        if dval[j] != 0:
            keep += 1
    out_k = np.empty(keep, dtype=np.int64)
    out_d = np.empty(keep, dtype=np.int64)
    k = 0
    for j in range(n):
        if dval[j] != 0:
            out_k[k] = dkey[j]
            out_d[k] = dval[j]
            k += 1
    clear_keys(dt, dkey, n)
    meta[M_NDELTA] = 0
    return out_k, out_d
