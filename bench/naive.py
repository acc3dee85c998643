"""The naive method of the authors' released trainer, as a speed baseline (our code, their cost model).

Every merge: allocate a dense (size x size) int32 count matrix, rescan the whole corpus into it
with a parallel (racy, as theirs) numba kernel, copy its upper triangle, take the argmax, then
rewrite every grid through one compiled call per grid from a Python loop. Grids are flattened
after the first merge, as in their code. Only the cost structure matters here, not the output.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _count_2d(mat, grids):
    for g in prange(grids.shape[0]):
        h, w = grids.shape[1], grids.shape[2]
        for i in range(h):
            for j in range(w):
                if j < w - 1:
                    mat[grids[g, i, j], grids[g, i, j + 1]] += 1
                if i < h - 1:
                    mat[grids[g, i, j], grids[g, i + 1, j]] += 1


@njit(parallel=True, cache=True)
def _count_1d(mat, flat, starts):
    for g in prange(starts.shape[0] - 1):
        for i in range(starts[g], starts[g + 1] - 1):
            mat[flat[i], flat[i + 1]] += 1


@njit(cache=True)
def _merge_1d(seq, a, b, new):
    out = np.empty(seq.shape[0], np.int32)
    k = 0
    i = 0
    while i < seq.shape[0]:
        if i + 1 < seq.shape[0] and seq[i] == a and seq[i + 1] == b:
            out[k] = new
            i += 2
        else:
            out[k] = seq[i]
            i += 1
        k += 1
    return out[:k]


def naive_learn(grids: np.ndarray, codebook_size: int, merges: int, start_size: int | None = None) -> tuple[list, float]:
    """Returns (pairs, seconds). `start_size` pads the matrix as if that many ids already existed
    (to time late merges of a long run without running the whole run)."""
    size = start_size or codebook_size
    seqs = None
    pairs = []
    t0 = time.perf_counter()
    for _ in range(merges):
        mat = np.zeros((size, size), np.int32)
        if seqs is None:
            _count_2d(mat, grids)
        else:
            starts = np.zeros(len(seqs) + 1, np.int64)
            np.cumsum([len(s) for s in seqs], out=starts[1:])
            _count_1d(mat, np.concatenate(seqs), starts)
        upper = np.triu(mat, k=1)
        best = int(np.argmax(upper))
        a, b = divmod(best, size)
        if upper[a, b] == 0:
            break
        if seqs is None:
            seqs = [g.reshape(-1) for g in grids]
        seqs = [_merge_1d(s, a, b, size) for s in seqs]
        pairs.append((a, b))
        size += 1
    return pairs, time.perf_counter() - t0
