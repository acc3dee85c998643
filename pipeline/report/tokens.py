"""What follows from the merge tree alone: token sizes, canonical shapes, and merges fired per step.

Every learned token t = (a, b) is a binary tree whose leaves are base codes. Each instance of t
in an encoded grid contains exactly one firing of every merge in t's tree (with multiplicity),
so the number of times merge k fired while encoding equals the sum, over the final tokens, of
how often V + k appears in their trees. That turns one encoding into the whole compression
curve (tokens per grid after 0, 1, ..., M merges), because encoding applies merges in id order.
"""
from __future__ import annotations

import numpy as np

from pipeline.bpe.vocab import Vocabulary


def pairs(vocab: Vocabulary) -> np.ndarray:
    """(M, 2) int64: the pair of merge k."""
    return np.array([m.pair for m in vocab.merges], np.int64).reshape(-1, 2)


def token_sizes(vocab: Vocabulary) -> np.ndarray:
    """Cells of every token id (1 for a base code): the number of leaves of its tree."""
    V = vocab.codebook_size
    size = np.ones(vocab.size, np.int64)
    for k, (a, b) in enumerate(pairs(vocab)):
        size[V + k] = size[a] + size[b]
    return size


def fired_per_merge(vocab: Vocabulary, usage: np.ndarray) -> np.ndarray:
    """How many times each merge fired, given how often each id appears in the encoded output."""
    V = vocab.codebook_size
    total = np.asarray(usage, np.int64).copy()
    pr = pairs(vocab)
    for k in range(len(pr) - 1, -1, -1):
        n = total[V + k]
        if n:
            total[pr[k, 0]] += n
            total[pr[k, 1]] += n
    return total[V:]


def alive_after(vocab: Vocabulary, usage: np.ndarray, m: int) -> np.ndarray:
    """Occurrences of ids 0 .. V+m-1 in the encoding with only the first m merges, from the full one.

    Encoding with a prefix equals the full encoding stopped after merge m - 1, and an instance alive
    then is one that ends in the output or is absorbed later, by a merge with id >= V + m.
    """
    V = vocab.codebook_size
    total = np.asarray(usage, np.int64).copy()
    pr = pairs(vocab)
    fired = fired_per_merge(vocab, usage)
    alive = np.zeros(V + m + 1, np.int64)  # the last slot collects children that are later merges too
    alive[: V + m] = total[: V + m]
    later = pr[m:]
    for side in (0, 1):
        np.add.at(alive, np.minimum(later[:, side], V + m), fired[m:])
    return alive[: V + m]


def tokens_curve(vocab: Vocabulary, usage: np.ndarray, cells: int, grids: int) -> np.ndarray:
    """Mean tokens per grid after 0..M merges on an encoded sample (same definition as `Vocabulary.tokens_per_grid`)."""
    fired = fired_per_merge(vocab, usage)
    if grids == 0:
        return np.zeros(len(fired) + 1)
    return (cells - np.concatenate(([0], np.cumsum(fired)))) / grids


def canonical_shape(vocab: Vocabulary, token: int, cache: dict[int, list[tuple[int, int]] | None] | None = None
                    ) -> list[tuple[int, int]] | None:
    """The cells of `token` when every merge in its tree attached Y at its mode offset u*.

    Relative to the anchor, sorted. None when that layout puts two cells on one spot or a cell
    before the anchor (then no instance can have this shape). Iterative: trees can be deep.
    """
    V = vocab.codebook_size
    cache = {} if cache is None else cache
    stack = [token]
    while stack:
        t = stack[-1]
        if t in cache:
            stack.pop()
            continue
        if t < V:
            cache[t] = [(0, 0)]
            stack.pop()
            continue
        m = vocab.merges[t - V]
        a, b = m.pair
        missing = [c for c in (a, b) if c not in cache]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        sa, sb = cache[a], cache[b]
        if sa is None or sb is None:
            cache[t] = None
            continue
        dy, dx = m.offset
        cells = set(sa)
        moved = {(r + dy, c + dx) for r, c in sb}
        if cells & moved or any((r, c) < (0, 0) for r, c in moved):
            cache[t] = None
            continue
        cache[t] = sorted(cells | moved)
    return cache[token]


def dead_share(usage: np.ndarray, lo: int, hi: int, below: int = 1) -> float | None:
    """Share of ids in [lo, hi) used fewer than `below` times (None for an empty range)."""
    if hi <= lo:
        return None
    return float(np.count_nonzero(np.asarray(usage)[lo:hi] < below)) / (hi - lo)


def checkpoint_sizes(num_merges: int, points: int) -> list[int]:
    """Vocabulary sizes (in merges) for the dead-rate curve: M, M/2, M/4, ... (at most `points`, >= 1)."""
    out: list[int] = []
    m = num_merges
    while m >= 1 and len(out) < points:
        out.append(m)
        m //= 2
    return sorted(set(out))
