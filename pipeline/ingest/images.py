"""Image bytes -> RGB PIL image, or a `BadImage` whose message is the reject reason.

Limits are checked from the header before any pixel is decoded, so a decompression bomb costs
nothing. Every mode PIL can produce ends as 8-bit RGB: transparency is composited on white,
16-bit and float images are rescaled rather than clipped.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_WHITE = (255, 255, 255)


class BadImage(ValueError):
    """The member is not a usable image; str(err) is the reject reason ("category: detail")."""


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 64_000_000
    min_side: int = 8
    max_aspect: float = 20.0


def open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open lazily and check the header: size, pixel count, aspect. No pixel data is decoded yet."""
    if not data:
        raise BadImage("empty image member: 0 bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage(f"decompression bomb: {err}") from None
        except UnidentifiedImageError:
            raise BadImage("corrupt image: not a recognised image format") from None
        except Exception as err:  # PIL raises many types for unknown/corrupt headers
            raise BadImage(f"corrupt image: {type(err).__name__}: {err}") from None
    check_size(im, limits)
    return im


def check_size(im: Image.Image, limits: ImageLimits) -> None:
    """Pixel count, shortest side and aspect against the limits (from the header alone)."""
    w, h = im.size
    if w * h > limits.max_pixels:
        raise BadImage(f"decompression bomb: {w}x{h} = {w * h} pixels > limit {limits.max_pixels}")
    if min(w, h) < limits.min_side:
        raise BadImage(f"image too small: {w}x{h}, shortest side < {limits.min_side}")
    if max(w, h) / min(w, h) > limits.max_aspect:
        raise BadImage(f"absurd aspect ratio: {w}x{h} > {limits.max_aspect}:1")


def draft_for(im: Image.Image, shortest_side: int) -> None:
    """Let the JPEG decoder scale by 1/2..1/8 while keeping the shortest side >= shortest_side."""
    w, h = im.size
    scale = shortest_side / min(w, h)
    if scale < 0.5:
        im.draft(None, (max(1, int(w * scale)), max(1, int(h * scale))))


def _rescale_high_depth(im: Image.Image) -> Image.Image:
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        top = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 255.0
        a = np.nan_to_num(a / top * 255.0)
    else:
        a = a.astype(np.float64) / 257.0  # 16-bit (or 32-bit int holding 16-bit) -> 8-bit
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _rescale_high_depth(im).convert("RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")


def decode_rgb(data: bytes, limits: ImageLimits, shortest_side: int | None = None) -> Image.Image:
    """Fully decoded, orientation-corrected RGB image; raises BadImage with the reason otherwise."""
    im = open_checked(data, limits)
    try:
        if shortest_side:
            draft_for(im, shortest_side)
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return to_rgb(im)
    except BadImage:
        raise
    except Exception as err:
        raise BadImage(f"corrupt image: {type(err).__name__}: {err}") from None
