"""One entry point per quantizer kind: `prepare` (driver: load, check, fingerprint) and `build_encoder` (actor)."""
from __future__ import annotations

import logging

import numpy as np

from pipeline.quantize.spec import ImageEncoder, QuantizerSpec
from schemas.base import ConfigError, InputError, StorageOptions
from schemas.quantize import KMeansQuantizerConfig

log = logging.getLogger(__name__)


def _prepare_kmeans(cfg: KMeansQuantizerConfig, options: StorageOptions | None) -> tuple[QuantizerSpec, dict[str, np.ndarray]]:
    from pipeline import storage
    from pipeline.quantize.kmeans import load_codebook

    if not storage.exists(cfg.codebook, options):
        raise InputError(f"k-means codebook {cfg.codebook} does not exist: fit it with `vbpe quantize ... --fit-kmeans`")
    cb = load_codebook(cfg.codebook, options)
    wanted = {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "codebook_size": cfg.codebook_size, "resample": cfg.resample}
    have = {"image_size": cb.image_size, "patch_size": cb.patch_size, "codebook_size": int(cb.centroids.shape[0]), "resample": cb.resample}
    diff = [f"{k}: file {have[k]} != config {wanted[k]}" for k in wanted if have[k] != wanted[k]]
    if diff:
        raise ConfigError(f"codebook {cfg.codebook} was fitted differently ({'; '.join(diff)}): fix the config or fit a new file")
    return cb.spec(), {"centroids": cb.centroids}


def prepare(cfg, options: StorageOptions | None = None) -> tuple[QuantizerSpec, dict[str, np.ndarray]]:
    if cfg.kind == "kmeans":
        return _prepare_kmeans(cfg, options)
    if cfg.kind == "taming":
        from pipeline.quantize.taming import prepare as prepare_taming

        return prepare_taming(cfg)
    if cfg.kind == "chameleon":
        from pipeline.quantize.chameleon import prepare as prepare_chameleon

        return prepare_chameleon(cfg)
    raise ConfigError(f"unknown quantizer kind {cfg.kind!r}")


def resolve_precision(precision: str, spec: QuantizerSpec, device: str) -> str:
    """bf16 only where the model allows it; `auto` means bf16 on a GPU that supports it."""
    import torch

    if not spec.bf16_ok:
        if precision == "bf16":
            log.warning("%s quantizer runs in fp32 (bf16 would change nearest-code decisions)", spec.kind)
        return "fp32"
    if precision == "auto":
        return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def build_encoder(spec: QuantizerSpec, tensors: dict[str, np.ndarray], device: str = "cpu", precision: str = "auto") -> ImageEncoder:
    precision = resolve_precision(precision, spec, device)
    if spec.kind == "kmeans":
        from pipeline.quantize.kmeans import KMeansEncoder

        return KMeansEncoder(spec, tensors, device, precision)
    if spec.kind == "taming":
        from pipeline.quantize.taming import TamingEncoder

        return TamingEncoder(spec, tensors, device, precision)
    if spec.kind == "chameleon":
        from pipeline.quantize.chameleon import ChameleonEncoder

        return ChameleonEncoder(spec, tensors, device, precision)
    raise ConfigError(f"unknown quantizer kind {spec.kind!r}")
