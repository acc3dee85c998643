"""What the driver knows about a quantizer after loading it once: enough to read, encode and label output.

The driver loads weights from the user's paths, checks them and fingerprints them; actors rebuild
the model from `(spec, tensors)` shipped through Ray's object store, so checkpoint paths only need
to be readable where the driver runs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

from pipeline.ingest.preprocess import ImageSpec


@dataclass(frozen=True)
class QuantizerSpec:
    kind: str
    fingerprint: str
    codebook_size: int
    image: ImageSpec
    grid: tuple[int, int]
    arch: dict[str, Any] = field(default_factory=dict)
    bf16_ok: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint, "codebook_size": self.codebook_size,
                "image_size": self.image.size, "resample": self.image.resample, "grid": list(self.grid),
                "arch": self.arch, "bf16_ok": self.bf16_ok}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "QuantizerSpec":
        return QuantizerSpec(str(d["kind"]), str(d["fingerprint"]), int(d["codebook_size"]),
                             ImageSpec(int(d["image_size"]), str(d["resample"])), tuple(int(x) for x in d["grid"]),
                             dict(d.get("arch", {})), bool(d.get("bf16_ok", False)))

    def recompute_fingerprint(self, tensors: Mapping[str, np.ndarray]) -> str:
        """The fingerprint these tensors give under this spec (equal to `fingerprint` unless something changed)."""
        return fingerprint(self.kind, self.arch, self.image, tensors)

    def describe(self) -> str:
        h, w = self.grid
        return (
            f"{self.kind} quantizer {self.fingerprint}: {self.image.size}px -> {h}x{w} grid, "
            f"codebook {self.codebook_size}"
        )


class ImageEncoder(Protocol):
    """A quantizer's model on one device: images in, code grids out."""

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, h, w) int32 codes in [0, codebook_size)."""


def fingerprint(kind: str, arch: Mapping[str, Any], image: ImageSpec, tensors: Mapping[str, np.ndarray]) -> str:
    """Content hash: same weights + architecture + preprocessing give the same id, whatever the file format."""
    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, "arch": arch, "size": image.size, "resample": image.resample}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{t.dtype.str}|{t.shape}".encode())
        h.update(memoryview(t).cast("B"))
    return h.hexdigest()[:16]
