"""A stage checkpoint: only what the stage can change (its trainable tensors and their AdamW state)
plus the loop's position as JSON. The frozen rest comes from the stage's base model.

Tensors are written with `torch.distributed.checkpoint` in safetensors files (its HuggingFace
storage format): every rank writes its own shards in parallel (sharded FSDP tensors as they are,
replicated DDP tensors once), nothing is gathered on one rank, and the shard layout travels in the
files' JSON metadata, so loading needs no pickle (dcp_reader.py reads them in place, local or S3).
Keys: `param/<name>` and `optim/<name>/<state>`.
"""
from __future__ import annotations

import json
import os

import torch

from schemas.base import StorageOptions

STATE = "state.json"


def _optimizer_state(params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer) -> None:
    """Give every trainable tensor the AdamW state a first step would create, to load into in place."""
    for _, p in params:
        if not optimizer.state.get(p):
            optimizer.state[p] = {
                "step": torch.tensor(0.0, dtype=torch.float32),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }


def tensors(params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, p in params:
        out[f"param/{name}"] = p.data if not hasattr(p, "to_local") else p
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                out[f"optim/{name}/{key}"] = value
    return out


def save(directory: str, params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer, state: dict,
         rank: int) -> None:
    """Every rank calls this with the same `directory` layout (its own local dir is fine: file names are per rank)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    writer = HuggingFaceStorageWriter(path=directory, save_distributed=True)
    dcp.save(tensors(params, optimizer), storage_writer=writer, no_dist=not dist.is_initialized())
    if rank == 0:
        with open(os.path.join(directory, STATE), "w") as f:
            json.dump(state, f)


def saved_keys(directory: str, options: StorageOptions | None = None) -> set[str]:
    from pipeline.train.dcp_reader import StoreReader

    return set(StoreReader(directory, options).read_metadata().state_dict_metadata)


def load(directory: str, params: list[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer,
         options: StorageOptions | None = None) -> dict:
    """Restore in place, every rank reading only the chunks of its own shards, from a local path or an
    s3:// URL; the checkpoint must hold exactly the stage's trainable tensors."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from pipeline.train.dcp_reader import StoreReader

    _optimizer_state(params, optimizer)
    want = tensors(params, optimizer)
    have = saved_keys(directory, options)
    wanted_params = {k for k in want if k.startswith("param/")}
    if {k for k in have if k.startswith("param/")} != wanted_params:
        missing = sorted(wanted_params - have)[:3]
        extra = sorted(k for k in have if k.startswith("param/") and k not in wanted_params)[:3]
        raise ValueError(f"checkpoint does not match this stage's trainable parameters (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        dcp.load(want, storage_reader=StoreReader(directory, options), no_dist=not dist.is_initialized())
    return read_state(directory, options)


def read_state(directory: str, options: StorageOptions | None = None) -> dict:
    """The loop's position saved with a checkpoint: step, metrics, fingerprint, batch geometry."""
    from pipeline import storage

    return json.loads(storage.read_text(storage.join(directory, STATE), options))
