"""Per-stage sample plan: which prepared sequences a stage sees, in which order.

Per epoch, n sequences are split over the categories by the stage's mixture (largest remainder,
so each count is within one of n * weight); each category draws its quota from its pool in a
seeded random order, cycling through fresh permutations only when the quota exceeds the pool.
The epoch's stream is foundation, then perception, reasoning, instruction. Fractional epochs take
the head of the last epoch. n defaults to the largest value needing no repeats in any category.
"""
from __future__ import annotations

import math

import numpy as np

from schemas.base import InputError
from schemas.train import CATEGORIES


def quotas(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n over categories proportionally (largest remainder; ties broken in curriculum order)."""
    total = sum(weights.values())
    exact = {c: n * weights.get(c, 0.0) / total for c in CATEGORIES}
    out = {c: int(math.floor(v)) for c, v in exact.items()}
    left = n - sum(out.values())
    for c in sorted(CATEGORIES, key=lambda c: (-(exact[c] - out[c]), CATEGORIES.index(c)))[:left]:
        out[c] += 1
    return out


def default_epoch_size(pool_sizes: dict[str, int], weights: dict[str, float]) -> int:
    total = sum(weights.values())
    return min(int(pool_sizes[c] * total / w) for c, w in weights.items() if w > 0)


def _draw(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    parts, left = [], k
    while left > 0:
        perm = rng.permutation(pool)
        parts.append(perm[:left])
        left -= len(perm[:left])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def plan(
    categories: list[str] | np.ndarray,
    weights: dict[str, float],
    seed: int,
    stage: int,
    epochs: float = 1.0,
    samples: int | None = None,
) -> np.ndarray:
    """Row indices into the prepared sequences, in training order."""
    cats = np.asarray(categories)
    pools = {c: np.flatnonzero(cats == c) for c in CATEGORIES}
    missing = [c for c, w in weights.items() if w > 0 and len(pools[c]) == 0]
    if missing:
        raise InputError(f"stage {stage} mixes in {', '.join(missing)} but there are no such sequences")
    n = samples or default_epoch_size({c: len(p) for c, p in pools.items()}, weights)
    if n <= 0:
        raise InputError(f"stage {stage}: no sequences to train on")
    q = quotas(n, weights)
    rng = np.random.default_rng([seed, stage])
    per_epoch = []
    for _ in range(max(1, math.ceil(epochs))):
        per_epoch.append(np.concatenate([_draw(pools[c], q[c], rng) for c in CATEGORIES]))
    stream = np.concatenate(per_epoch)
    return stream[: max(1, round(n * epochs))]
