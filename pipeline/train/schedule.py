"""Learning rate at an optimizer step, a pure function of the step (nothing to checkpoint)."""
from __future__ import annotations

import math


def warmup_steps(total: int, ratio: float) -> int:
    return math.ceil(total * ratio)


def lr_at(step: int, total: int, peak: float, schedule: str, warmup_ratio: float, min_ratio: float = 0.0) -> float:
    """Linear warmup over ceil(ratio * total) steps, then cosine / linear decay to min_ratio * peak (or constant)."""
    warm = warmup_steps(total, warmup_ratio)
    if step < warm:
        return peak * (step + 1) / warm
    if schedule == "constant" or total <= warm:
        return peak
    progress = min(1.0, (step - warm) / max(1, total - warm))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return peak * (min_ratio + (1 - min_ratio) * shape)
