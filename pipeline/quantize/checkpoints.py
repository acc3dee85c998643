"""Model weights from user files without ever unpickling arbitrary objects.

Lightning checkpoints are pickles; `torch.load(weights_only=True)` refuses the few non-tensor
globals they hold (the ModelCheckpoint callback class used as a dict key, numpy scalars). Those
names are allow-listed as inert placeholders; anything else is refused with a message that
suggests converting once to safetensors.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from schemas.base import InputError


class _Inert:
    """Stands in for an allow-listed class from a checkpoint; holds nothing, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_INERT_NAMES = [
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "lightning.pytorch.callbacks.lr_monitor.LearningRateMonitor",
]


def _allowed_globals() -> list[Any]:
    from numpy._core import multiarray

    allowed: list[Any] = [(_Inert, name) for name in _INERT_NAMES]
    allowed += [(multiarray.scalar, "numpy.core.multiarray.scalar"), multiarray.scalar, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


def load_torch_checkpoint(path: str) -> dict[str, Any]:
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling refused"
        raise InputError(
            f"{path}: refused to load (it holds objects outside the weights-only allow-list: {first}). "
            "If you trust the file, extract its state_dict to .safetensors once in a sandbox and pass that instead."
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:  # truncated or not a torch file at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable torch checkpoint ({first[:200]})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a state dict or a Lightning checkpoint, got {type(obj).__name__}")
    return obj


def load_state_dict(path: str) -> dict[str, Any]:
    """Tensors by name from a .safetensors file, a plain torch state dict or a Lightning checkpoint."""
    import torch

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error type for a damaged header
            raise InputError(f"{path}: not a readable safetensors file ({err})") from None
    obj = load_torch_checkpoint(path)
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{path}: no tensor state_dict inside")
    return dict(sd)


def to_numpy(sd: dict[str, Any], prefixes: tuple[str, ...], strip: str = "") -> dict[str, np.ndarray]:
    """float32 numpy copies of the tensors whose names start with `strip + prefix`, `strip` removed."""
    out: dict[str, np.ndarray] = {}
    for name, t in sd.items():
        if not name.startswith(strip):
            continue
        short = name[len(strip):]
        if short.startswith(prefixes):
            t = t.detach().cpu()
            out[short] = (t.float() if t.is_floating_point() else t).numpy().copy()
    return out


VQGAN_PREFIXES = ("encoder.", "quant_conv.", "quantize.", "post_quant_conv.", "decoder.")


def convert_to_safetensors(src: str, dst: str, prefixes: tuple[str, ...] = VQGAN_PREFIXES) -> int:
    """Write the VQ-GAN tensors of `src` (encoder, codebook and decoder; no loss or optimizer state) as
    safetensors; returns how many tensors were written."""
    from safetensors.numpy import save_file

    tensors = to_numpy(load_state_dict(src), prefixes)
    if not tensors:
        raise InputError(f"{src}: no tensors named {', '.join(prefixes)}*")
    os.makedirs(os.path.dirname(os.path.abspath(dst)) or ".", exist_ok=True)
    save_file(tensors, dst)
    return len(tensors)
