"""How a stage's model is spread over the workers: DDP (every worker holds the whole model) or FSDP
(PyTorch's `fully_shard`: parameters, gradients and optimizer state sharded over the workers).

FSDP shards every decoder layer as its own unit and the rest (embeddings, head, final norm, the
split-off new rows) as the root unit, so tied input and output rows stay in one unit. Frozen
parameters are sharded like trainable ones; only the trainable ones have gradients and optimizer
state. Gradients are reduce-scattered on every micro-batch (accumulated sharded), never held
unsharded. On GPU, `bf16-mixed` becomes FSDP's mixed-precision policy (bf16 compute, fp32 master
weights and gradient reduction); `cpu_offload` keeps the shards in host memory between uses.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import nn

from pipeline.train.freeze import decoder_layers


def wrap(model: nn.Module, strategy: str, world: int, device: torch.device, precision: str,
         cpu_offload: bool = False, reshard_after_forward: bool = True) -> nn.Module:
    """The module the forward pass calls. DDP: a DDP wrapper (none for one worker); FSDP: the model itself, sharded in place."""
    if strategy == "ddp":
        if world == 1:
            return model
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)
    if strategy != "fsdp":
        raise ValueError(f"unknown strategy {strategy!r}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16-mixed" else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    options = dict(mesh=mesh, mp_policy=mp, offload_policy=offload)
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **options)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **options)
    return model


def no_sync(net: nn.Module, strategy: str, world: int, last_micro_batch: bool) -> ContextManager:
    """DDP skips the all-reduce on all but the last micro-batch; FSDP always reduce-scatters (sharded accumulation)."""
    if strategy == "ddp" and world > 1 and not last_micro_batch:
        return net.no_sync()
    return contextlib.nullcontext()


def full_state_dict(model: nn.Module, strategy: str, rank: int) -> dict[str, torch.Tensor] | None:
    """Every rank calls this; rank 0 gets the whole model's state on the CPU, the others None."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if rank == 0 else None
    return {k: v.detach().cpu() for k, v in model.state_dict().items()} if rank == 0 else None


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t
