"""The training loss: next-token cross entropy summed over labelled positions.

Labels are shifted instead of logits (position t predicts label t + 1; the last position has no
label), so the logits are never copied to be sliced: the largest tensor of a step stays one copy
(plus its fp32 cast under mixed precision, the softmax and the gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    target = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE, reduction="sum")
