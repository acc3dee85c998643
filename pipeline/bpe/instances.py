"""Instances on code grids (the contract's terms, docs/bpe.md), shared by the learner and the encoder.

Many grids live in one flat cell space: grid g covers cells [start[g], start[g+1]), row-major
with width w. Per cell: `owner[cell]` is the anchor (smallest cell) of the instance covering it,
`nxt[cell]` links the instance's cells starting at its anchor, and `tok[anchor]` is its id.
Merged instances take a new id, which never equals a or b, so "already merged in this step"
needs no bookkeeping: such an instance simply no longer carries the token being looked for.
"""
from __future__ import annotations

import numpy as np
from pipeline.numba_cache import njit

from pipeline.bpe.constants import NEIGHBOURS, OFF_BIAS, OFF_SPAN


@njit(cache=True)
def pack_offset(dy, dx):
    return np.int64(dy) * OFF_SPAN + (dx + OFF_BIAS)


@njit(cache=True)
def unpack_offset(key):
    dy = key // OFF_SPAN
    return dy, key - dy * OFF_SPAN - OFF_BIAS


@njit(cache=True, inline="always")
def step_inside(step, r, c, h, w):
    """Whether cell (r, c) + step lies in an h x w grid. With the step a constant of the unrolled
    neighbour loop, only the bound it moves towards remains."""
    dy = step[0]
    dx = step[1]
    return ((dy >= 0 or r + dy >= 0) and (dy <= 0 or r + dy < h)
            and (dx >= 0 or c + dx >= 0) and (dx <= 0 or c + dx < w))


@njit(cache=True)
def neighbours(owner, nxt, x, gs, w, h, mark, stamp, out):
    """Distinct instances adjacent to instance x (constants.NEIGHBOURS), written to `out`; returns how many.

    `mark` is per-grid scratch (indexed cell - gs); `stamp` must be new for every call.
    """
    n = 0
    cell = x
    while cell != -1:
        local = cell - gs
        r = local // w
        c = local - r * w
        for step in NEIGHBOURS:
            if step_inside(step, r, c, h, w):
                nb = owner[cell + step[0] * w + step[1]]
                if nb != x and mark[nb - gs] != stamp:
                    mark[nb - gs] = stamp
                    out[n] = nb
                    n += 1
        cell = nxt[cell]
    return n


@njit(cache=True)
def touches(owner, nxt, tok, x, t, gs, w, h, later):
    """Whether instance x is adjacent to an instance of token t anchored after x (later) or before it.

    A cheap filter (no scratch, no dedup) ahead of `neighbours` for the many candidates that have
    no partner at all.
    """
    cell = x
    while cell != -1:
        local = cell - gs
        r = local // w
        c = local - r * w
        for step in NEIGHBOURS:
            if step_inside(step, r, c, h, w):
                nb = owner[cell + step[0] * w + step[1]]
                if tok[nb] == t and ((nb > x) if later else (nb < x)):
                    return True
        cell = nxt[cell]
    return False


@njit(cache=True)
def choose_partner(tok, x, nbrs, n, b, gs, w, uy, ux):
    """The contract's Y for X: token b, larger anchor, offset closest to u*, then smaller anchor."""
    best = -1
    best_d = np.int64(1) << 62
    xr = (x - gs) // w
    xc = (x - gs) - xr * w
    for i in range(n):
        y = nbrs[i]
        if y > x and tok[y] == b:
            yr = (y - gs) // w
            dy = yr - xr - uy
            dx = (y - gs) - yr * w - xc - ux
            d = np.int64(dy) * dy + np.int64(dx) * dx
            if d < best_d or (d == best_d and y < best):
                best_d = d
                best = y
    return best


@njit(cache=True)
def absorb(owner, nxt, tok, x, y, new_tok):
    """Instance y joins x (x < y, so x stays the anchor); the result carries new_tok."""
    cell = y
    last = y
    while cell != -1:
        owner[cell] = x
        last = cell
        cell = nxt[cell]
    nxt[last] = nxt[x]
    nxt[x] = y
    tok[x] = new_tok


def init_instances(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cell its own instance: owner = identity, no links, tok = code."""
    n = codes.shape[0]
    return np.arange(n, dtype=np.int32), np.full(n, -1, dtype=np.int32), codes.astype(np.int32, copy=True)


@njit(cache=True)
def count_anchors(owner, start, stop):
    n = 0
    for cell in range(start, stop):
        if owner[cell] == cell:
            n += 1
    return n


@njit(cache=True)
def segmentation(owner, tok, gstart):
    """(tokens, anchors relative to their grid, per-grid offsets) of every grid, anchors ascending."""
    n_grids = gstart.shape[0] - 1
    counts = np.zeros(n_grids + 1, dtype=np.int64)
    for g in range(n_grids):
        counts[g + 1] = counts[g] + count_anchors(owner, gstart[g], gstart[g + 1])
    tokens = np.empty(counts[n_grids], dtype=np.int32)
    anchors = np.empty(counts[n_grids], dtype=np.int32)
    k = 0
    for g in range(n_grids):
        for cell in range(gstart[g], gstart[g + 1]):
            if owner[cell] == cell:
                tokens[k] = tok[cell]
                anchors[k] = cell - gstart[g]
                k += 1
    return tokens, anchors, counts
