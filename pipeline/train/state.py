"""A stage checkpoint: only what the stage can change (its trainable tensors and their AdamW state),
as safetensors, plus the loop's position as JSON. The frozen rest comes from the stage's base model.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

PARAMS, OPTIM, STATE = "trainable.safetensors", "optimizer.safetensors", "state.json"


def save(directory: str, params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer, state: dict) -> None:
    save_file({n: p.detach().cpu().contiguous() for n, p in params}, os.path.join(directory, PARAMS))
    moments = {}
    for name, p in params:
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                moments[f"{name}::{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    save_file(moments, os.path.join(directory, OPTIM))
    with open(os.path.join(directory, STATE), "w") as f:
        json.dump(state, f)


def load(directory: str, params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer) -> dict:
    """Restore tensors in place; the checkpoint must hold exactly the stage's trainable tensors."""
    tensors = load_file(os.path.join(directory, PARAMS))
    names = {n for n, _ in params}
    if set(tensors) != names:
        missing, extra = sorted(names - set(tensors))[:3], sorted(set(tensors) - names)[:3]
        raise ValueError(f"checkpoint does not match this stage's trainable parameters (missing {missing}, unexpected {extra})")
    moments = load_file(os.path.join(directory, OPTIM))
    with torch.no_grad():
        for name, p in params:
            p.copy_(tensors[name].to(p.device, p.dtype))
            st = {k.split("::", 1)[1]: v for k, v in moments.items() if k.split("::", 1)[0] == name}
            if st:
                optimizer.state[p] = {k: v.to(p.device) if v.dim() else v for k, v in st.items()}
    with open(os.path.join(directory, STATE)) as f:
        return json.load(f)
