"""Per-stage sample plan: which prepared sequences a stage sees, in which order.

Easy to hard as proportions, never as single-type blocks: at every position of a stage the four
categories have a scheduled share (the stage's mixture, or, with `mixture_shift`, a linear shift from
this stage's mixture at its first sample to the next stage's at its last). The categories are laid
out by stratification, not sampling: the k-th sample of category c goes where the scheduled count of
c reaches k + 1/2, so every stretch of the plan, however short, holds each category within about one
sample of its share (every global batch is mixed). Which sequence of a category comes next is drawn
from its pool in a seeded order that cycles through fresh passes when the pool runs out: per pass,
the pool (in file order) is cut into blocks of `block` sequences, the blocks are visited in a
seeded random order and each block is shuffled (a full shuffle when the pool fits one block). Prepared
data stores each category as a run of row groups of the same size, so a stretch of the plan reads
whole row groups when the data is streamed; the price is that neighbours in the plan come from a
few blocks of neighbouring records (like other streaming loaders' shuffle blocks).

The plan depends on the categories, the mixtures, the seed, the stage and the sizes only: not on
the number of workers, and it is recomputed identically on resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas.base import InputError
from schemas.train import CATEGORIES

DEFAULT_BLOCK = 1024  # = prepare.ROW_GROUP


def quotas(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n over categories proportionally (largest remainder; ties broken in curriculum order)."""
    total = sum(weights.values())
    exact = {c: n * weights.get(c, 0.0) / total for c in CATEGORIES}
    out = {c: int(math.floor(v)) for c, v in exact.items()}
    left = n - sum(out.values())
    for c in sorted(CATEGORIES, key=lambda c: (-(exact[c] - out[c]), CATEGORIES.index(c)))[:left]:
        out[c] += 1
    return out


def _normalised(weights: dict[str, float]) -> np.ndarray:
    w = np.array([float(weights.get(c, 0.0)) for c in CATEGORIES])
    return w / w.sum()


def scheduled_shares(n: int, start: dict[str, float], end: dict[str, float] | None = None) -> np.ndarray:
    """(n, 4): each position's scheduled share of every category (rows sum to 1)."""
    a = _normalised(start)
    b = a if end is None else _normalised(end)
    t = (np.arange(n) + 0.5) / max(n, 1)
    return (1 - t)[:, None] * a + t[:, None] * b


def category_layout(shares: np.ndarray) -> np.ndarray:
    """Category index per position, stratified: within one sample of the scheduled count everywhere."""
    n = len(shares)
    cumulative = np.cumsum(shares, axis=0)  # scheduled count of each category up to and including a position
    counts = quotas(n, dict(zip(CATEGORIES, cumulative[-1].tolist()))) if n else {c: 0 for c in CATEGORIES}
    ideal, cats = [], []
    for ci, c in enumerate(CATEGORIES):
        k = counts[c]
        if k == 0:
            continue
        scaled = cumulative[:, ci] * (k / cumulative[-1, ci])
        ideal.append(np.searchsorted(scaled, np.arange(k) + 0.5))
        cats.append(np.full(k, ci, np.int8))
    positions, which = np.concatenate(ideal), np.concatenate(cats)
    order = np.lexsort((which, positions))  # by ideal position, ties in curriculum order
    return which[order]


def block_passes(pool: np.ndarray, k: int, rng: np.random.Generator, block: int) -> np.ndarray:
    """k draws from the pool: fresh block-shuffled passes, as many as needed."""
    parts, left = [], k
    n_blocks = max(1, math.ceil(len(pool) / block))
    while left > 0:
        starts = rng.permutation(n_blocks) * block
        one_pass = np.concatenate([rng.permutation(pool[s : s + block]) for s in starts])
        parts.append(one_pass[:left])
        left -= len(parts[-1])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclass(frozen=True)
class Plan:
    rows: np.ndarray  # row indices into the prepared sequences, in training order
    categories: np.ndarray  # category index (into CATEGORIES) of each position
    shares: np.ndarray  # (len, 4) the scheduled share at each position

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self, positions: np.ndarray | None = None) -> dict[str, int]:
        cats = self.categories if positions is None else self.categories[positions]
        got = np.bincount(cats, minlength=len(CATEGORIES))
        return {c: int(n) for c, n in zip(CATEGORIES, got) if n}


def default_epoch_size(pool_sizes: dict[str, int], weights: dict[str, float]) -> int:
    """The most samples per epoch that need no repeats in any category."""
    total = sum(weights.values())
    return min(math.floor(pool_sizes[c] * total / w + 1e-9) for c, w in weights.items() if w > 0)  # 29.999... is 30


def plan(
    categories: list[str] | np.ndarray,
    weights: dict[str, float],
    seed: int,
    stage: int,
    epochs: float = 1.0,
    samples: int | None = None,
    shift_to: dict[str, float] | None = None,
    block: int = DEFAULT_BLOCK,
) -> Plan:
    """The stage's plan over prepared sequences whose categories are `categories` (in row order)."""
    cats = np.asarray(categories)
    pools = {c: np.flatnonzero(cats == c) for c in CATEGORIES}
    start = _normalised(weights)
    mean = dict(zip(CATEGORIES, ((start + (start if shift_to is None else _normalised(shift_to))) / 2).tolist()))
    used = [c for c in CATEGORIES if mean[c] > 0]
    missing = [c for c in used if len(pools[c]) == 0]
    if missing:
        raise InputError(f"stage {stage} mixes in {', '.join(missing)} but there are no such sequences")
    n_epoch = samples or default_epoch_size({c: len(p) for c, p in pools.items()}, {c: mean[c] for c in used})
    n = max(1, round(n_epoch * epochs)) if n_epoch > 0 else 0
    if n <= 0:
        raise InputError(f"stage {stage}: no sequences to train on")
    shares = scheduled_shares(n, weights, shift_to)
    layout = category_layout(shares)
    rng = np.random.default_rng([seed, stage])
    rows = np.empty(n, np.int64)
    for ci, c in enumerate(CATEGORIES):
        where = np.flatnonzero(layout == ci)
        if len(where):
            rows[where] = block_passes(pools[c], len(where), rng, block)
    return Plan(rows, layout, shares)
