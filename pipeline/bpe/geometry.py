"""Where each token's codes lie: exact 2D decoding, and placing ids back on a grid when only ids are known.

A learned token is a binary merge tree; its leaves, read left to right, are base codes (its
*expansion*, exactly text BPE's decode). In 2D that is half of the answer: the other half is where
each leaf sits. Concatenating, over the tokens in anchor order, the cells of their leaves gives a
permutation of the grid's cells, so `codes[cells] = expansion(ids)` restores the grid exactly.

The encoder already holds that permutation: merging Y into X links X's cells as
`[anchor X] + cells(Y) + rest(X)`, so a token's linked cells, split by the sizes of its two
children, give its leaves' cells (`leaf_cells`).

Ids alone do not always determine the grid: with t = (a, b) at u* = (0, 1) and T = (t, t) at
u* = (1, 0), both [[a, b], [a, b]] and [[a, a], [b, b]] encode to the single token T (in the second,
each t forms vertically because no b is to the right of an a). `place_ids` therefore infers a
layout: each token's anchor is the first free cell (true of every encoding), its parts go at their
merge's mode offset u*, else at the other offsets seen in training (the stored histogram, most
frequent first) where they fit; what cannot be placed is counted, and unfilled cells copy the
code before them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pipeline.numba_cache import njit

from pipeline.bpe.constants import NEIGHBOURS
from pipeline.bpe.vocab import Vocabulary


@dataclass
class Tree:
    """Per token id: its children (-1 for base codes), its size in leaves and its expansion."""

    V: int
    left: np.ndarray
    right: np.ndarray
    size: np.ndarray
    leaf_start: np.ndarray  # expansion of id t is leaves[leaf_start[t] : leaf_start[t] + size[t]]
    leaves: np.ndarray

    @staticmethod
    def of(vocab: Vocabulary) -> "Tree":
        V, n = vocab.codebook_size, vocab.size
        left = np.full(n, -1, np.int64)
        right = np.full(n, -1, np.int64)
        size = np.ones(n, np.int64)
        for k, m in enumerate(vocab.merges):
            left[V + k], right[V + k] = m.pair
            size[V + k] = size[m.pair[0]] + size[m.pair[1]]
        leaf_start = np.zeros(n, np.int64)
        np.cumsum(size[:-1], out=leaf_start[1:])
        return Tree(V, left, right, size, leaf_start, _expansions(left, right, size, leaf_start, V))

    def expansion(self, t: int) -> np.ndarray:
        return self.leaves[self.leaf_start[t] : self.leaf_start[t] + self.size[t]]


@njit(cache=True)
def _expansions(left, right, size, leaf_start, V):
    leaves = np.empty(size.sum(), np.int32)
    for t in range(size.shape[0]):
        s = leaf_start[t]
        if t < V:
            leaves[s] = t
        else:  # children have smaller ids: their expansions are already written
            a, b = left[t], right[t]
            leaves[s : s + size[a]] = leaves[leaf_start[a] : leaf_start[a] + size[a]]
            leaves[s + size[a] : s + size[t]] = leaves[leaf_start[b] : leaf_start[b] + size[b]]
    return leaves


@njit(cache=True)
def expand(ids, size, leaf_start, leaves):
    """Leaf codes of every id, concatenated."""
    n = 0
    for t in ids:
        n += size[t]
    out = np.empty(n, np.int32)
    k = 0
    for t in ids:
        s = size[t]
        out[k : k + s] = leaves[leaf_start[t] : leaf_start[t] + s]
        k += s
    return out


@njit(cache=True)
def leaf_cells(owner, nxt, tokens, offsets, gstart, left, right, size, V):
    """Per grid, every token's cells in leaf order, concatenated in anchor order (cells relative to the grid).

    `owner`/`nxt`/`gstart` are the encoder's (Encoder.encode_with_cells), `tokens`/`offsets` its output.
    """
    out = np.empty(gstart[-1], np.int32)
    work = np.empty(max(1, gstart[-1]), np.int32)
    stack_lo = np.empty(64, np.int64)
    stack_t = np.empty(64, np.int64)
    k = 0
    for g in range(gstart.shape[0] - 1):
        gs = gstart[g]
        j = offsets[g]
        for x in range(gs, gstart[g + 1]):
            if owner[x] != x:
                continue
            t = tokens[j]
            j += 1
            base = k
            cell = x
            while cell != -1:  # link order: [anchor] + cells(right part) + rest of the left part
                out[k] = cell - gs
                k += 1
                cell = nxt[cell]
            n = 1
            stack_lo[0] = base
            stack_t[0] = t
            while n > 0:
                n -= 1
                lo, tt = stack_lo[n], stack_t[n]
                if tt < V:
                    continue
                a, b = left[tt], right[tt]
                na, nb = size[a], size[b]
                # [x] + L(b) + rest(a)  ->  [x] + rest(a) + L(b): the left part first, as in the expansion
                work[0] = out[lo]
                work[1 : na] = out[lo + 1 + nb : lo + na + nb]
                work[na : na + nb] = out[lo + 1 : lo + 1 + nb]
                out[lo : lo + na + nb] = work[: na + nb]
                if n + 2 > stack_lo.shape[0]:
                    stack_lo = np.concatenate((stack_lo, np.empty_like(stack_lo)))
                    stack_t = np.concatenate((stack_t, np.empty_like(stack_t)))
                stack_lo[n], stack_t[n] = lo, a
                stack_lo[n + 1], stack_t[n + 1] = lo + na, b
                n += 2
    return out


class Shapes:
    """Likely layouts of each token: leaf positions (dy, dx) relative to its anchor, in leaf order.

    A token's layouts combine its children's layouts at its merge's offsets: u* first, then the other
    offsets of the stored histogram by count. Only layouts an encoding can produce are kept (no cell
    twice, the right part after the left part's anchor and touching it); at most `keep` per token,
    the most likely first (product of the offsets' shares). Built lazily, per token, with a cache.
    """

    def __init__(self, vocab: Vocabulary, keep: int = 8, offsets_per_merge: int = 4):
        self.vocab, self.keep, self.per_merge = vocab, keep, offsets_per_merge
        self.V = vocab.codebook_size
        self._cache: dict[int, list[tuple[float, np.ndarray]]] = {}

    def _offsets(self, t: int) -> list[tuple[tuple[int, int], float]]:
        m = self.vocab.merges[t - self.V]
        total = max(1, sum(c for _, _, c in m.histogram))
        share = {(dy, dx): c / total for dy, dx, c in m.histogram}
        out = [(tuple(m.offset), share.get(tuple(m.offset), 1.0))]
        for dy, dx, c in sorted(m.histogram, key=lambda h: (-h[2], h[0], h[1])):
            if (dy, dx) != out[0][0] and len(out) < self.per_merge:
                out.append(((dy, dx), c / total))
        return out

    def of(self, token: int) -> list[np.ndarray]:
        return [shape for _, shape in self._layouts(token)]

    def _layouts(self, token: int) -> list[tuple[float, np.ndarray]]:
        stack = [token]
        while stack:  # children first, without recursion (trees can be deep)
            t = stack[-1]
            if t in self._cache:
                stack.pop()
                continue
            if t < self.V:
                self._cache[t] = [(1.0, np.zeros((1, 2), np.int64))]
                stack.pop()
                continue
            a, b = self.vocab.merges[t - self.V].pair
            todo = [c for c in (a, b) if c not in self._cache]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            self._cache[t] = self._combine(t, self._cache[a], self._cache[b])
        return self._cache[token]

    def _combine(self, t, left, right) -> list[tuple[float, np.ndarray]]:
        found = []
        for (dy, dx), p in self._offsets(t):
            if dy < 0 or (dy == 0 and dx <= 0):
                continue
            for pa, sa in left:
                for pb, sb in right:
                    moved = sb + (dy, dx)
                    if not _valid(sa, moved):
                        continue
                    found.append((p * pa * pb, np.concatenate([sa, moved])))
        found.sort(key=lambda x: -x[0])
        return found[: self.keep]


_STEPS = np.array(NEIGHBOURS, np.int64)


def _valid(a: np.ndarray, b: np.ndarray) -> bool:
    """Disjoint, nothing before the anchor (0, 0), and adjacent somewhere (the contract's neighbour table)."""
    if (b[:, 0] < 0).any() or ((b[:, 0] == 0) & (b[:, 1] < 0)).any():
        return False
    d = b[None, :, :] - a[:, None, :]
    if not (np.abs(d).sum(-1) > 0).all():
        return False
    return bool((d[:, :, None, :] == _STEPS[None, None, :, :]).all(-1).any())


def place_ids(ids: np.ndarray, height: int, width: int, tree: Tree, shapes: Shapes) -> tuple[np.ndarray, int]:
    """(height x width codes, tokens not placed whole) inferred from ids alone (see the module docstring)."""
    n = height * width
    free = np.ones((height, width), bool)
    codes = np.full(n, -1, np.int32)
    pos = missed = 0
    flat = free.reshape(-1)
    for t in np.asarray(ids, np.int64):
        while pos < n and not flat[pos]:
            pos += 1
        if pos >= n:
            missed += 1
            continue
        r, c = divmod(pos, width)
        for shape in shapes.of(int(t)):
            rr, cc = shape[:, 0] + r, shape[:, 1] + c
            if rr.max() < height and cc.min() >= 0 and cc.max() < width and free[rr, cc].all():
                free[rr, cc] = False
                codes[rr * width + cc] = tree.expansion(int(t))
                break
        else:  # no layout fits: its first code goes on the anchor, the rest is lost
            missed += 1
            flat[pos] = False
            codes[pos] = tree.expansion(int(t))[0]
    last = 0
    for i in range(n):  # cells no token reached copy the code before them
        if codes[i] < 0:
            codes[i] = last
        else:
            last = codes[i]
    return codes.reshape(height, width), missed
