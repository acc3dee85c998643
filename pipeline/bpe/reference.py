"""Slow reference learner and encoder, written line by line from the contract (docs/bpe.md, v1).

It recounts everything on every merge and shares no code with the fast path (only the contract's
neighbour table, constants.NEIGHBOURS), so agreement between the two is evidence, not tautology.
Use it only on small grids (tests, debugging).

S is computed in the canonical order the fast path also uses (offsets sorted by (dy, dx), integer
sums for the mean offset) so both produce bit-identical floats, hence identical tie-breaking.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.bpe.constants import NEIGHBOURS


@dataclass
class RefMerge:
    id: int
    pair: tuple[int, int]
    frequency: int
    consistency: float
    priority: float
    offset: tuple[int, int]
    histogram: list[tuple[int, int, int]]


@dataclass
class RefGrid:
    """Instances of one grid: `owner[cell]` is the anchor of the instance covering the cell."""

    height: int
    width: int
    owner: list[int]
    tok: dict[int, int]
    cells: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def from_codes(cls, codes: np.ndarray) -> "RefGrid":
        h, w = codes.shape
        flat = [int(c) for c in codes.reshape(-1)]
        return cls(h, w, list(range(h * w)), {i: flat[i] for i in range(h * w)}, {i: [i] for i in range(h * w)})

    def neighbours(self, x: int) -> set[int]:
        out = set()
        for cell in self.cells[x]:
            r, c = divmod(cell, self.width)
            for rr, cc in ((r + dy, c + dx) for dy, dx in NEIGHBOURS):
                if 0 <= rr < self.height and 0 <= cc < self.width:
                    y = self.owner[rr * self.width + cc]
                    if y != x:
                        out.add(y)
        return out

    def offset(self, x: int, y: int) -> tuple[int, int]:
        return (y // self.width - x // self.width, y % self.width - x % self.width)

    def merge(self, x: int, y: int, new_tok: int) -> None:
        for cell in self.cells[y]:
            self.owner[cell] = x
        self.cells[x] = sorted(self.cells[x] + self.cells.pop(y))
        del self.tok[y]
        self.tok[x] = new_tok

    def segmentation(self) -> tuple[list[int], list[int]]:
        anchors = sorted(self.tok)
        return [self.tok[a] for a in anchors], anchors


def count_occurrences(grids: list[RefGrid]) -> dict[tuple[int, int], dict[tuple[int, int], int]]:
    """pair -> {offset: count} over all grids; each adjacent instance pair counted once."""
    hist: dict[tuple[int, int], dict[tuple[int, int], int]] = {}
    for g in grids:
        for x in g.tok:
            for y in g.neighbours(x):
                if y > x:
                    pair = (g.tok[x], g.tok[y])
                    u = g.offset(x, y)
                    h = hist.setdefault(pair, {})
                    h[u] = h.get(u, 0) + 1
    return hist


def consistency(histogram: dict[tuple[int, int], int], sigma: float) -> float:
    f = sum(histogram.values())
    items = sorted(histogram.items())
    mean_y = sum(h * dy for (dy, _), h in items) / f
    mean_x = sum(h * dx for (_, dx), h in items) / f
    denom = 2.0 * sigma * sigma
    acc = 0.0
    for (dy, dx), h in items:
        d2 = (dy - mean_y) * (dy - mean_y) + (dx - mean_x) * (dx - mean_x)
        acc += h * math.exp(-d2 / denom)
    return acc / f


def mode_offset(histogram: dict[tuple[int, int], int]) -> tuple[int, int]:
    return min(histogram, key=lambda u: (-histogram[u], u))


def apply_merge(g: RefGrid, a: int, b: int, new_tok: int, u_star: tuple[int, int]) -> int:
    """Step 3 of the contract on one grid; returns the number of instance merges."""
    merged: set[int] = set()
    done = 0
    for x in sorted(anchor for anchor, t in g.tok.items() if t == a):
        if x in merged:
            continue
        best = None
        for y in g.neighbours(x):
            if y > x and y not in merged and g.tok[y] == b:
                u = g.offset(x, y)
                d = (u[0] - u_star[0]) ** 2 + (u[1] - u_star[1]) ** 2
                if best is None or (d, y) < best:
                    best = (d, y)
        if best is None:
            continue
        y = best[1]
        g.merge(x, y, new_tok)
        merged.update((x, y))
        done += 1
    return done


def learn(
    grids: list[np.ndarray],
    codebook_size: int,
    num_merges: int,
    alpha: float | None = 0.0,
    alpha_rel: float | None = None,
    sigma: float = 1.0,
    min_frequency: int = 2,
) -> tuple[list[RefMerge], list[RefGrid], float]:
    """Returns (merges, final grids, effective alpha)."""
    state = [RefGrid.from_codes(np.asarray(c)) for c in grids]
    merges: list[RefMerge] = []
    effective_alpha = alpha or 0.0
    for k in range(num_merges):
        hist = count_occurrences(state)
        if k == 0 and alpha_rel is not None:
            effective_alpha = alpha_rel * max((sum(h.values()) for h in hist.values()), default=0)
        best_key, best = None, None
        for (a, b), h in hist.items():
            f = sum(h.values())
            if f < min_frequency:
                continue
            s = consistency(h, sigma)
            p = f + effective_alpha * s
            key = (p, f, -a, -b)
            if best_key is None or key > best_key:
                best_key, best = key, (a, b, f, s, p, h)
        if best is None:
            break
        a, b, f, s, p, h = best
        u_star = mode_offset(h)
        new_tok = codebook_size + k
        for g in state:
            apply_merge(g, a, b, new_tok, u_star)
        merges.append(RefMerge(new_tok, (a, b), f, s, p, u_star, sorted((dy, dx, n) for (dy, dx), n in h.items())))
    return merges, state, effective_alpha


def encode(codes: np.ndarray, merges: list[tuple[int, int, int, tuple[int, int]]]) -> tuple[list[int], list[int]]:
    """Apply (a, b, id, offset) merges in id order, every one of them, to one grid."""
    g = RefGrid.from_codes(np.asarray(codes))
    for a, b, new_tok, u_star in sorted(merges, key=lambda m: m[2]):
        apply_merge(g, a, b, new_tok, tuple(u_star))
    return g.segmentation()
