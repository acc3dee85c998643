"""Chameleon's VQ-GAN (the tokenizer Being-VL uses: 512 px, 8192 codes, 32 x 32 grids).

Reads either a `ChameleonVQVAE.save_pretrained` directory or a full Chameleon checkpoint
directory, from which only the `model.vqmodel.*` tensors are read (safetensors, shard by shard),
so tokenizing images never loads the 7B language model.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from pipeline.ingest.preprocess import ImageSpec
from pipeline.quantize.spec import QuantizerSpec, fingerprint
from schemas.base import ConfigError, InputError
from schemas.quantize import ChameleonQuantizerConfig

ARCH_KEYS = ("embed_dim", "num_embeddings", "double_latent", "latent_channels", "resolution", "in_channels",
             "base_channels", "channel_multiplier", "num_res_blocks", "attn_resolutions", "attn_type")
VQ_PREFIXES = ("encoder.", "quant_conv.", "quantize.", "post_quant_conv.")
FULL_MODEL_PREFIXES = ("model.vqmodel.", "vqmodel.")
# ChameleonImageProcessor defaults: x * 0.0078 then (x - 1) / 1, i.e. about [-1, 1].
DEFAULT_NORM = {"rescale_factor": 0.0078, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]}


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _safe_open(file: str):
    from safetensors import safe_open

    try:
        return safe_open(file, framework="pt")
    except Exception as err:  # safetensors raises its own error type for a damaged header
        raise InputError(f"{file}: not a readable safetensors file ({err})") from None


def read_vq_config(path: str) -> tuple[dict[str, Any], bool]:
    """(vq config dict, is_full_model) from the directory's config.json."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"no config.json in {path}")
    cfg = _read_json(cfg_path)
    if cfg.get("model_type") == "chameleon_vqgan":
        return cfg, False
    if cfg.get("model_type") == "chameleon" and isinstance(cfg.get("vq_config"), dict):
        return cfg["vq_config"], True
    raise ConfigError(f"{cfg_path}: model_type {cfg.get('model_type')!r} is neither chameleon_vqgan nor chameleon")


def _weight_files(path: str) -> dict[str, str]:
    """tensor name -> safetensors file, from the index when the checkpoint is sharded."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index}: no weight_map")
        return {k: os.path.join(path, v) for k, v in weight_map.items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.exists(single):
        raise InputError(f"{path}: no model.safetensors or model.safetensors.index.json")
    with _safe_open(single) as f:
        return {k: single for k in f.keys()}


def load_vq_tensors(path: str, full_model: bool) -> dict[str, np.ndarray]:
    files = _weight_files(path)
    strip = ""
    if full_model:
        strip = next((p for p in FULL_MODEL_PREFIXES if any(k.startswith(p) for k in files)), "")
        if not strip:
            raise InputError(f"{path}: a full Chameleon checkpoint without {' or '.join(FULL_MODEL_PREFIXES)}* tensors")
    wanted: dict[str, list[str]] = {}
    for name, file in files.items():
        if name.startswith(strip) and name[len(strip):].startswith(VQ_PREFIXES):
            wanted.setdefault(file, []).append(name)
    out: dict[str, np.ndarray] = {}
    for file, names in sorted(wanted.items()):
        with _safe_open(file) as f:
            for name in names:
                t = f.get_tensor(name)
                out[name[len(strip):]] = (t.float() if t.is_floating_point() else t).numpy()
    if not out:
        raise InputError(f"{path}: no VQ-GAN tensors found")
    return out


def read_normalisation(path: str) -> dict[str, Any]:
    pre = os.path.join(path, "preprocessor_config.json")
    norm = dict(DEFAULT_NORM)
    if os.path.exists(pre):
        cfg = _read_json(pre)
        norm.update({k: cfg[k] for k in DEFAULT_NORM if k in cfg})
    return norm


def prepare(cfg: ChameleonQuantizerConfig) -> tuple[QuantizerSpec, dict[str, np.ndarray]]:
    vq, full = read_vq_config(cfg.path)
    tensors = load_vq_tensors(cfg.path, full)
    from transformers import ChameleonVQVAEConfig

    defaults = ChameleonVQVAEConfig().to_dict()
    arch = {k: vq.get(k, defaults.get(k)) for k in ARCH_KEYS}
    arch["channel_multiplier"] = list(arch["channel_multiplier"])
    arch["normalisation"] = read_normalisation(cfg.path)
    size = cfg.image_size or int(arch["resolution"])
    factor = 2 ** (len(arch["channel_multiplier"]) - 1)
    if size % factor:
        raise ConfigError(f"image_size {size} is not a multiple of the model's downsampling factor {factor}")
    image = ImageSpec(size, cfg.resample)
    spec = QuantizerSpec("chameleon", fingerprint("chameleon", arch, image, tensors), int(arch["num_embeddings"]),
                         image, (size // factor, size // factor), arch, bf16_ok=True)
    return spec, tensors


class ChameleonEncoder:
    def __init__(self, spec: QuantizerSpec, tensors: dict[str, np.ndarray], device: str = "cpu", precision: str = "fp32"):
        import torch
        from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

        config = ChameleonVQVAEConfig(**{k: v for k, v in spec.arch.items() if k in ARCH_KEYS})
        with torch.device("meta"):
            model = ChameleonVQVAE(config)
        try:
            model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True, assign=True)
        except RuntimeError as err:
            raise InputError(f"Chameleon VQ weights do not fit its config: {err}") from None
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.bf16 = precision == "bf16"
        norm = spec.arch["normalisation"]
        self.scale = float(norm["rescale_factor"])
        self.mean = torch.tensor(norm["image_mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm["image_std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.grid = spec.grid

    def encode(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() * self.scale
            x = (x - self.mean) / self.std
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                h = self.model.quant_conv(self.model.encoder(x))
            _, _, idx = self.model.quantize(h.float())
        return idx.to(torch.int32).cpu().numpy().reshape(images.shape[0], *self.grid)
