"""Code grids back to pixels: each quantizer's decoder, kept apart from the encoder that quantize actors run.

- k-means: a cell becomes its centroid patch (the codebook is both encoder and decoder).
- taming VQGAN: `quantize.get_codebook_entry` then `post_quant_conv` + `decoder` (taming's own
  `decode_code` is broken, so it is not used).
- Chameleon: transformers' `ChameleonVQVAE` holds no decoder weights, and neither do checkpoints in
  its format. Chameleon's VQ-GAN is a taming VQGAN, so its decoder is taming's `Decoder` built from the
  Chameleon config, with the weights of the original VQ-GAN checkpoint (`decoder:` in the quantizer
  config). Without that file the quantizer encodes but cannot decode.

A decoder has its own fingerprint (kind, architecture, weights); the quantizer fingerprint that code
grids and vocabularies carry stays the encoder's, so exporting a decoder changes no existing data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.ingest.preprocess import ImageSpec
from pipeline.quantize.spec import QuantizerSpec, fingerprint
from schemas.base import ConfigError, InputError

log = logging.getLogger(__name__)

TAMING_DECODER_PREFIXES = ("decoder.", "post_quant_conv.")
CODEBOOK_TENSOR = "quantize.embedding.weight"


@dataclass(frozen=True)
class DecoderSpec:
    kind: str
    fingerprint: str
    arch: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint, "arch": self.arch}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "DecoderSpec":
        return DecoderSpec(str(d["kind"]), str(d["fingerprint"]), dict(d.get("arch", {})))


def decoder_fingerprint(kind: str, arch: dict[str, Any], image: ImageSpec, tensors: dict[str, np.ndarray]) -> str:
    return fingerprint(f"{kind}-decoder", arch, image, tensors)


def _kmeans(spec: QuantizerSpec, tensors: dict[str, np.ndarray]) -> tuple[DecoderSpec, dict[str, np.ndarray]]:
    arch = dict(spec.arch)
    dec = {"centroids": tensors["centroids"]}
    return DecoderSpec("kmeans", decoder_fingerprint("kmeans", arch, spec.image, dec), arch), dec


def _check_codebook(found: dict[str, np.ndarray], codebook: np.ndarray, source: str) -> None:
    other = found.get(CODEBOOK_TENSOR)
    if other is not None and (other.shape != codebook.shape or not np.array_equal(other.astype(np.float32), codebook)):
        raise InputError(f"{source}: its codebook differs from the quantizer's: the decoder belongs to another model")


def _taming(cfg, spec: QuantizerSpec, tensors: dict[str, np.ndarray]) -> tuple[DecoderSpec, dict[str, np.ndarray]] | None:
    from pipeline.quantize.checkpoints import load_state_dict, to_numpy

    found = to_numpy(load_state_dict(cfg.checkpoint), (*TAMING_DECODER_PREFIXES, "quantize."))
    if not any(k.startswith("decoder.") for k in found):
        log.warning("%s holds no decoder weights: this tokenizer will encode but not decode to pixels "
                    "(convert the original checkpoint again: `vbpe convert-checkpoint` keeps the decoder)", cfg.checkpoint)
        return None
    _check_codebook(found, tensors[CODEBOOK_TENSOR], cfg.checkpoint)
    dec = {k: v for k, v in found.items() if k.startswith(TAMING_DECODER_PREFIXES)}
    dec[CODEBOOK_TENSOR] = tensors[CODEBOOK_TENSOR]
    arch = {k: spec.arch[k] for k in ("ddconfig", "n_embed", "embed_dim", "normalisation")}
    return DecoderSpec("taming", decoder_fingerprint("taming", arch, spec.image, dec), arch), dec


def chameleon_ddconfig(arch: dict[str, Any]) -> dict[str, Any]:
    """taming `Decoder` arguments for a Chameleon VQ-GAN config (the two share the architecture)."""
    if arch.get("attn_type", "vanilla") != "vanilla":
        raise ConfigError(f"Chameleon attn_type {arch.get('attn_type')!r}: only 'vanilla' attention can be decoded")
    return {
        "double_z": False, "z_channels": int(arch["latent_channels"]), "resolution": int(arch["resolution"]),
        "in_channels": int(arch["in_channels"]), "out_ch": int(arch["in_channels"]), "ch": int(arch["base_channels"]),
        "ch_mult": list(arch["channel_multiplier"]), "num_res_blocks": int(arch["num_res_blocks"]),
        "attn_resolutions": list(arch["attn_resolutions"] or []), "dropout": 0.0,
    }


def _chameleon(cfg, spec: QuantizerSpec, tensors: dict[str, np.ndarray]) -> tuple[DecoderSpec, dict[str, np.ndarray]] | None:
    if not cfg.decoder:
        log.warning("Chameleon quantizer without `decoder:` (the original VQ-GAN checkpoint): transformers' "
                    "ChameleonVQVAE holds no decoder, so this tokenizer will encode but not decode to pixels")
        return None
    from pipeline.quantize.checkpoints import load_state_dict, to_numpy

    found = to_numpy(load_state_dict(cfg.decoder), (*TAMING_DECODER_PREFIXES, "quantize."))
    if not any(k.startswith("decoder.") for k in found):
        raise InputError(f"{cfg.decoder}: no decoder.* tensors: not a VQ-GAN checkpoint with a decoder")
    _check_codebook(found, tensors[CODEBOOK_TENSOR], cfg.decoder)
    dec = {k: v for k, v in found.items() if k.startswith(TAMING_DECODER_PREFIXES)}
    if not any(k.startswith("post_quant_conv.") for k in dec):
        dec.update({k: v for k, v in tensors.items() if k.startswith("post_quant_conv.")})
    dec[CODEBOOK_TENSOR] = tensors[CODEBOOK_TENSOR]
    arch = {"ddconfig": chameleon_ddconfig(spec.arch), "embed_dim": int(spec.arch["embed_dim"]),
            "normalisation": spec.arch["normalisation"]}
    return DecoderSpec("chameleon", decoder_fingerprint("chameleon", arch, spec.image, dec), arch), dec


def prepare_decoder(cfg, spec: QuantizerSpec, tensors: dict[str, np.ndarray]) -> tuple[DecoderSpec, dict[str, np.ndarray]] | None:
    """The decoder of a prepared quantizer (`registry.prepare`), or None when its files hold none."""
    if spec.kind == "kmeans":
        return _kmeans(spec, tensors)
    if spec.kind == "taming":
        return _taming(cfg, spec, tensors)
    if spec.kind == "chameleon":
        return _chameleon(cfg, spec, tensors)
    raise ConfigError(f"unknown quantizer kind {spec.kind!r}")


class KMeansDecoder:
    def __init__(self, spec: DecoderSpec, tensors: dict[str, np.ndarray]):
        self.patch = int(spec.arch["patch_size"])
        c = np.asarray(tensors["centroids"], np.float32)
        self.patches = np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8).reshape(-1, self.patch, self.patch, 3)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(B, h, w) codes -> (B, h * p, w * p, 3) uint8: every cell its centroid patch."""
        b, h, w = codes.shape
        p = self.patch
        x = self.patches[codes]  # (B, h, w, p, p, 3)
        return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, 3)


def _to_pixels(x, normalisation: Any) -> np.ndarray:
    """Invert the encoder's input normalisation: decoder output (B, 3, H, W) -> (B, H, W, 3) uint8."""
    import torch

    if normalisation == "x/127.5-1":
        y = (x + 1.0) * 127.5
    else:  # Chameleon's processor: (x * rescale - mean) / std
        mean = torch.tensor(normalisation["image_mean"], dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(normalisation["image_std"], dtype=x.dtype).view(1, 3, 1, 1)
        y = (x * std + mean) / float(normalisation["rescale_factor"])
    return y.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class TamingStyleDecoder:
    """codebook entry -> post_quant_conv -> taming Decoder; used for taming and Chameleon VQ-GANs."""

    def __init__(self, spec: DecoderSpec, tensors: dict[str, np.ndarray], device: str = "cpu"):
        import torch
        from taming.modules.diffusionmodules.model import Decoder

        from pipeline.quantize.taming import import_vqmodel

        import_vqmodel()  # registers the stand-in for taming.main before any taming.models import
        dd = spec.arch["ddconfig"]
        embed_dim = int(spec.arch["embed_dim"])
        with torch.device("meta"):
            decoder = Decoder(**dd)
            post = torch.nn.Conv2d(embed_dim, int(dd["z_channels"]), 1)
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        try:
            decoder.load_state_dict({k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")},
                                    strict=True, assign=True)
            post.load_state_dict({k[len("post_quant_conv."):]: v for k, v in state.items()
                                  if k.startswith("post_quant_conv.")}, strict=True, assign=True)
        except RuntimeError as err:
            raise InputError(f"{spec.kind} decoder weights do not fit its config: {err}") from None
        self.device = torch.device(device)
        self.decoder = decoder.eval().to(self.device)
        self.post = post.eval().to(self.device)
        self.codebook = state[CODEBOOK_TENSOR].float().to(self.device)
        self.normalisation = spec.arch["normalisation"]

    def decode(self, codes: np.ndarray, batch: int = 8) -> np.ndarray:
        """(B, h, w) codes -> (B, H, W, 3) uint8 images."""
        import torch

        out = []
        with torch.inference_mode():
            for lo in range(0, codes.shape[0], batch):
                idx = torch.from_numpy(np.ascontiguousarray(codes[lo:lo + batch], np.int64)).to(self.device)
                z = self.codebook[idx].permute(0, 3, 1, 2).contiguous()  # the codebook entry of every cell
                x = self.decoder(self.post(z)).float().cpu()
                out.append(_to_pixels(x, self.normalisation))
        return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def build_decoder(spec: DecoderSpec, tensors: dict[str, np.ndarray], device: str = "cpu"):
    if spec.kind == "kmeans":
        return KMeansDecoder(spec, tensors)
    if spec.kind in ("taming", "chameleon"):
        return TamingStyleDecoder(spec, tensors, device)
    raise ConfigError(f"unknown decoder kind {spec.kind!r}")
