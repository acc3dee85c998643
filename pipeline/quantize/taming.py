"""taming-transformers VQGAN (f16, codebook 1024 / 16384) as a quantizer.

`taming.models.vqgan` imports `taming.main`, the training script, which imports torchvision;
a small module providing `instantiate_from_config` is registered under that name first. The
loss (LPIPS + discriminator) is irrelevant for encoding and is replaced by `torch.nn.Identity`.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import numpy as np
import yaml

from pipeline.ingest.preprocess import ImageSpec
from pipeline.quantize.checkpoints import load_state_dict, to_numpy
from pipeline.quantize.spec import QuantizerSpec, fingerprint
from schemas.base import ConfigError, InputError
from schemas.quantize import TamingQuantizerConfig

ENCODER_PREFIXES = ("encoder.", "quant_conv.", "quantize.")
VQMODEL_TARGETS = ("taming.models.vqgan.VQModel",)
NORMALISATION = "x/127.5-1"


def _get_obj_from_str(path: str) -> Any:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _instantiate_from_config(config: dict[str, Any]) -> Any:
    if "target" not in config:
        raise KeyError("expected key `target` to instantiate")
    return _get_obj_from_str(config["target"])(**config.get("params", {}))


def import_vqmodel() -> type:
    if "taming.main" not in sys.modules:
        shim = types.ModuleType("taming.main")
        shim.__doc__ = "vbpe stand-in for taming's training script: only what taming.models needs."
        shim.instantiate_from_config = _instantiate_from_config
        shim.get_obj_from_str = _get_obj_from_str
        sys.modules["taming.main"] = shim
    from taming.models.vqgan import VQModel

    return VQModel


def read_model_params(path: str) -> dict[str, Any]:
    """`model.params` of a taming model YAML (the file shipped next to a VQGAN checkpoint)."""
    from pipeline.storage import read_text

    try:
        doc = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model", doc), dict):
        raise ConfigError(f"{path}: expected a taming model config (a mapping with model.params)")
    model = doc.get("model", doc)
    target = model.get("target", VQMODEL_TARGETS[0])
    if target not in VQMODEL_TARGETS:
        raise ConfigError(f"{path}: model.target {target!r} is not supported (only {', '.join(VQMODEL_TARGETS)})")
    params = dict(model.get("params", {}))
    for need in ("ddconfig", "n_embed", "embed_dim"):
        if need not in params:
            raise ConfigError(f"{path}: model.params.{need} is missing")
    if params.get("remap"):
        raise ConfigError(f"{path}: codebook remapping (params.remap) is not supported")
    return params


def prepare(cfg: TamingQuantizerConfig) -> tuple[QuantizerSpec, dict[str, np.ndarray]]:
    params = read_model_params(cfg.config)
    dd = dict(params["ddconfig"])
    tensors = to_numpy(load_state_dict(cfg.checkpoint), ENCODER_PREFIXES)
    if not tensors:
        raise InputError(f"{cfg.checkpoint}: no encoder weights ({', '.join(ENCODER_PREFIXES)}*)")
    size = cfg.image_size or int(dd["resolution"])
    factor = 2 ** (len(dd["ch_mult"]) - 1)
    if size % factor:
        raise ConfigError(f"image_size {size} is not a multiple of the model's downsampling factor {factor}")
    arch = {"ddconfig": dd, "n_embed": int(params["n_embed"]), "embed_dim": int(params["embed_dim"]), "normalisation": NORMALISATION}
    image = ImageSpec(size, cfg.resample)
    spec = QuantizerSpec("taming", fingerprint("taming", arch, image, tensors), int(params["n_embed"]), image,
                         (size // factor, size // factor), arch, bf16_ok=True)
    return spec, tensors


class TamingEncoder:
    def __init__(self, spec: QuantizerSpec, tensors: dict[str, np.ndarray], device: str = "cpu", precision: str = "fp32"):
        import torch

        VQModel = import_vqmodel()
        with torch.device("meta"):
            model = VQModel(ddconfig=spec.arch["ddconfig"], lossconfig={"target": "torch.nn.Identity"},
                            n_embed=spec.arch["n_embed"], embed_dim=spec.arch["embed_dim"], sane_index_shape=True)
        del model.decoder, model.post_quant_conv
        state = {k: torch.from_numpy(v) for k, v in tensors.items()}
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise InputError(f"taming checkpoint does not fit the model config: {err}") from None
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.bf16 = precision == "bf16"

    def encode(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                h = self.model.quant_conv(self.model.encoder(x))
            _, _, (_, _, idx) = self.model.quantize(h.float())
        return idx.to(torch.int32).cpu().numpy()
