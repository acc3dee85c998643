"""Resize the shortest side and centre-crop to the quantizer's square input, in one resampling step."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class ImageSpec:
    """What a quantizer takes: size x size RGB uint8, resampled with `resample`."""

    size: int
    resample: str = "bicubic"

    @property
    def nbytes(self) -> int:
        return self.size * self.size * 3


def centre_square(width: int, height: int) -> tuple[float, float, float, float]:
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    return (left, top, left + side, top + side)


def resize_crop(im: Image.Image, spec: ImageSpec) -> np.ndarray:
    """(size, size, 3) uint8: the centre square of `im` resampled to size x size.

    Equivalent to "resize shortest side to size, then centre-crop", but resamples only the
    pixels that survive the crop (PIL's `box`), which is faster for large images.
    """
    out = im.resize(
        (spec.size, spec.size),
        resample=RESAMPLE[spec.resample],
        box=centre_square(*im.size),
        reducing_gap=None if spec.resample == "nearest" else 3.0,
    )
    arr = np.asarray(out, dtype=np.uint8)
    if arr.shape != (spec.size, spec.size, 3):
        raise ValueError(f"preprocess produced {arr.shape}, expected {(spec.size, spec.size, 3)}")
    return arr
