"""Paired comparison of two arms on the same held-out questions (McNemar's exact test)."""
from __future__ import annotations

import math


def binomial_two_sided(k: int, n: int) -> float:
    """P(|X - n/2| >= |k - n/2|) for X ~ Bin(n, 1/2): the exact McNemar p-value for k of n discordant pairs."""
    if n == 0:
        return 1.0
    lo = min(k, n - k)
    log_half = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half) for i in range(lo + 1))
    return min(1.0, 2 * tail)


def paired(a: dict[tuple, bool], b: dict[tuple, bool]) -> dict:
    """a, b: question id -> correct. Accuracy difference b - a with a 95% interval, and McNemar's p."""
    common = sorted(set(a) & set(b))
    n = len(common)
    only_a = sum(1 for q in common if a[q] and not b[q])
    only_b = sum(1 for q in common if b[q] and not a[q])
    diff = (only_b - only_a) / n if n else 0.0
    var = ((only_a + only_b) - (only_b - only_a) ** 2 / n) / n**2 if n else 0.0
    half = 1.96 * math.sqrt(max(var, 0.0))
    return {"questions": n, "only_first_right": only_a, "only_second_right": only_b,
            "both_right": sum(1 for q in common if a[q] and b[q]), "difference": diff,
            "difference_95": [diff - half, diff + half], "mcnemar_p": binomial_two_sided(only_b, only_a + only_b)}
