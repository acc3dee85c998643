"""Whatever a user calls an image -> the quantizer's square RGB input, decoded exactly as `vbpe quantize` does.

Bytes and paths go through the quantize stage's own decoder (header checks, JPEG draft scaling,
EXIF orientation, alpha on white) and its resize-and-crop, so `encode(path)` equals the corpus row
of the same file. A PIL image that is still lazily opened is read from its source bytes for the same
reason (the JPEG draft decode changes pixels); an image already in memory, or a numpy array, goes
through the same mode conversion and resize-and-crop.
"""
from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from pipeline.ingest.images import BadImage, ImageLimits, check_size, decode_rgb, to_rgb
from pipeline.ingest.preprocess import ImageSpec, resize_crop

ImageInput = Union[Image.Image, np.ndarray, bytes, str, "os.PathLike[str]"]
LIMITS = ImageLimits()  # the quantize stage's defaults (schemas.quantize.IngestOptions)


def _source_bytes(im: Image.Image) -> bytes | None:
    """The encoded bytes behind a PIL image that has not been decoded yet, else None."""
    fp = getattr(im, "fp", None)
    if fp is None or not getattr(im, "tile", None):
        return None
    try:
        pos = fp.tell()
        fp.seek(0)
        data = fp.read()
        fp.seek(pos)
    except (OSError, ValueError, AttributeError):
        return None
    return data or None


def _from_array(a: np.ndarray) -> Image.Image:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise BadImage(f"bad array: shape {a.shape}, expected (H, W), (H, W, 3) or (H, W, 4)")
    if a.dtype != np.uint8:
        raise BadImage(f"bad array: dtype {a.dtype}, expected uint8 pixels")
    return Image.fromarray(a)


def to_rgb_image(image: Any, size: int, limits: ImageLimits = LIMITS) -> Image.Image:
    """Decoded, oriented RGB image (not yet resized); raises BadImage with the reject reason."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                image = f.read()
        except OSError as err:
            raise BadImage(f"unreadable image file: {err}") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_rgb(bytes(image), limits, shortest_side=size)
    if isinstance(image, Image.Image):
        data = _source_bytes(image)
        if data is not None:
            return decode_rgb(data, limits, shortest_side=size)
        check_size(image, limits)
        return to_rgb(ImageOps.exif_transpose(image) or image)
    if isinstance(image, np.ndarray):
        im = _from_array(image)
        check_size(im, limits)
        return to_rgb(im)
    raise BadImage(f"not an image: {type(image).__name__} (give a PIL image, a uint8 array, bytes or a path)")


def prepare(image: Any, spec: ImageSpec, limits: ImageLimits = LIMITS) -> np.ndarray:
    """(size, size, 3) uint8: what the quantizer encodes."""
    return resize_crop(to_rgb_image(image, spec.size, limits), spec)

