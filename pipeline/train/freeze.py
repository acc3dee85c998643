"""What each stage trains.

Stages 1 and 2 must leave the old vocabulary rows bit-identical, also under weight decay, for
tied embeddings and when parameters are sharded (FSDP). Gradient masking cannot promise that
(decoupled weight decay and optimizer state still touch masked rows), so the new rows become their
own parameter: the input embedding and the output head are swapped for modules that read old rows
from the frozen original module (kept as a submodule, so FSDP shards it like any frozen weight) and
new rows from a trainable tensor (one tensor shared by both when the model ties them). Only the
trainable tensors reach the optimizer. `merge()` writes the new rows back and restores the original
modules; `merged_state_dict()` does the same on a (gathered) state dict, for sharded models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class SplitEmbedding(nn.Module):
    def __init__(self, original: nn.Embedding, n_old: int, new: nn.Parameter):
        super().__init__()
        self.original = original  # frozen; rows >= n_old are never read
        self.n_old = n_old
        self.new = new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        original = self.original
        is_new = ids >= self.n_old
        old = original(torch.where(is_new, 0, ids))  # the original forward keeps any model-specific scaling
        new = F.embedding(torch.where(is_new, ids - self.n_old, 0), self.new)
        scale = getattr(original, "embed_scale", None)
        if scale is not None:
            new = new * (scale.to(new.dtype) if torch.is_tensor(scale) else scale)
        return torch.where(is_new.unsqueeze(-1), new.to(old.dtype), old)


class SplitHead(nn.Module):
    def __init__(self, original: nn.Linear, n_old: int, new: nn.Parameter, new_bias: nn.Parameter | None):
        super().__init__()
        self.original = original  # frozen (the embedding's weight when tied)
        self.n_old = n_old
        self.new = new
        self.new_bias = new_bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        original = self.original
        bias = None if original.bias is None else original.bias[: self.n_old]
        return torch.cat([F.linear(hidden, original.weight[: self.n_old], bias), F.linear(hidden, self.new, self.new_bias)], dim=-1)


@dataclass
class StagePlan:
    """The model as one stage trains it; `merge()` turns it back into a plain HF model."""

    model: nn.Module
    n_old: int
    layers_unfrozen: int = 0
    _split: tuple | None = field(default=None, repr=False)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def merge(self) -> nn.Module:
        if self._split is None:
            return self.model
        emb, head, split_emb, split_head = self._split
        with torch.no_grad():
            emb.weight[self.n_old :].copy_(split_emb.new)
            if head.weight is not emb.weight:
                head.weight[self.n_old :].copy_(split_head.new)
            if split_head.new_bias is not None:
                head.bias[self.n_old :].copy_(split_head.new_bias)
        self.model.set_input_embeddings(emb)
        self.model.set_output_embeddings(head)
        self._split = None
        return self.model


def merged_state_dict(state: dict[str, torch.Tensor], n_old: int) -> dict[str, torch.Tensor]:
    """A split model's state dict (full tensors) -> the plain model's: `X.original.weight` rows from
    n_old on replaced by `X.new`, under the key `X.weight` (the same for the bias)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for part in ("weight", "bias"):
            if key.endswith(f".original.{part}"):
                prefix = key[: -len(f".original.{part}")]
                new = state.get(f"{prefix}.new" if part == "weight" else f"{prefix}.new_bias")
                out[f"{prefix}.{part}"] = value if new is None else torch.cat([value[:n_old], new.to(value.dtype)])
                break
        else:
            if not (key.endswith(".new") or key.endswith(".new_bias")):
                out[key] = value
    return out


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, in input-to-output order: the ModuleList as long as the config's layer count."""
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(text_config, "num_hidden_layers", None)
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not lists:
        raise ValueError(f"cannot find the {n} transformer layers of {type(model).__name__}")
    return min(lists, key=lambda nm: nm[0].count("."))[1]


def layers_to_unfreeze(n_layers: int, fraction: float) -> int:
    """round(fraction * n_layers), at least one layer when the fraction is positive."""
    if fraction <= 0:
        return 0
    return max(1, min(n_layers, math.floor(fraction * n_layers + 0.5)))


def _split_rows(model: nn.Module, n_old: int) -> tuple:
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if not isinstance(emb, nn.Embedding) or not isinstance(head, nn.Linear):
        raise ValueError(
            f"stage 1/2 need an nn.Embedding input and an nn.Linear head, got {type(emb).__name__} / {type(head).__name__}"
        )
    if emb.weight.shape[0] <= n_old or head.weight.shape[0] != emb.weight.shape[0]:
        raise ValueError(f"model has {emb.weight.shape[0]} input rows and {head.weight.shape[0]} output rows; expected more than {n_old}")
    tied = head.weight is emb.weight
    new_emb = nn.Parameter(emb.weight.detach()[n_old:].clone())
    new_head = new_emb if tied else nn.Parameter(head.weight.detach()[n_old:].clone())
    new_bias = None if head.bias is None else nn.Parameter(head.bias.detach()[n_old:].clone())
    split_emb = SplitEmbedding(emb, n_old, new_emb)
    split_head = SplitHead(head, n_old, new_head, new_bias)
    model.set_input_embeddings(split_emb)
    model.set_output_embeddings(split_head)
    return emb, head, split_emb, split_head


def apply_stage(model: nn.Module, stage: str, n_old: int, unfreeze_fraction: float = 0.25) -> StagePlan:
    """Set requires_grad for `stage` (stage1 | stage2 | stage3); call after moving the model to its device."""
    if stage == "stage3":
        for p in model.parameters():
            p.requires_grad_(True)
        return StagePlan(model, n_old)
    for p in model.parameters():
        p.requires_grad_(False)
    plan = StagePlan(model, n_old, _split=_split_rows(model, n_old))
    if stage == "stage2":
        layers = decoder_layers(model)
        plan.layers_unfrozen = layers_to_unfreeze(len(layers), unfreeze_fraction)
        for layer in layers[: plan.layers_unfrozen]:
            for p in layer.parameters():
                p.requires_grad_(True)
    elif stage != "stage1":
        raise ValueError(f"unknown stage {stage!r}")
    return plan
