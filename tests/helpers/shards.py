"""Shard corpora for tests: real encoded images in many modes, and every kind of bad input."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from pipeline.ingest.writer import tar_bytes, write_shard


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(seed: int, w: int = 96, h: int = 80) -> Image.Image:
    """A smooth random colour image (compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def good_images(seed: int = 0) -> dict[str, tuple[str, bytes]]:
    """name -> (ext, bytes): one image per colour mode / format the ingest must handle."""
    base = photo(seed)
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "rgb_jpg": ("jpg", encode(base, "JPEG", quality=90)),
        "rgb_png": ("png", encode(base, "PNG")),
        "grey_jpeg": ("jpeg", encode(base.convert("L"), "JPEG")),
        "palette_png": ("png", encode(pal, "PNG", transparency=0)),
        "rgba_png": ("png", encode(rgba, "PNG")),
        "la_png": ("png", encode(rgba.convert("LA"), "PNG")),
        "cmyk_jpg": ("jpg", encode(base.convert("CMYK"), "JPEG")),
        "grey16_png": ("png", encode(Image.fromarray(grey16), "PNG")),
        "bilevel_png": ("png", encode(base.convert("1"), "PNG")),
        "rgb_webp": ("webp", encode(base, "WEBP", quality=90)),
        "rgb_bmp": ("bmp", encode(base, "BMP")),
    }


def good_samples(prefix: str, n: int, seed: int = 0, caption: bool = True) -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for i in range(n):
        members = {"jpg": encode(photo(seed * 1000 + i), "JPEG", quality=85)}
        if caption:
            members["txt"] = f"sample {prefix}{i}".encode()
        out.append((f"{prefix}{i:04d}", members))
    return out


def bad_samples(max_pixels: int) -> dict[str, tuple[dict[str, bytes], str]]:
    """key -> (members, expected reject category)."""
    good = encode(photo(7), "JPEG")
    side = int(max_pixels**0.5) + 100
    return {
        "corrupt": ({"jpg": os.urandom(2000)}, "corrupt image"),
        "truncated_img": ({"jpg": good[: len(good) // 2]}, "corrupt image"),
        "zero_byte": ({"png": b""}, "empty image member"),
        "no_image": ({"txt": b"just a caption", "cls": b"3"}, "no image member"),
        "bomb": ({"png": encode(Image.new("L", (side, side)), "PNG")}, "decompression bomb"),
        "too_small": ({"png": encode(Image.new("RGB", (3, 3)), "PNG")}, "image too small"),
        "too_thin": ({"png": encode(Image.new("RGB", (4000, 20)), "PNG")}, "absurd aspect ratio"),
    }


def write_bad_corpus(root: str, max_pixels: int) -> dict[str, object]:
    """Shards covering every bad-input kind. Returns what a correct run must report."""
    os.makedirs(root, exist_ok=True)
    modes = good_images()
    s0 = [(f"mode_{name}", {ext: data, "json": b'{"caption": "mode %s"}' % name.encode()}) for name, (ext, data) in modes.items()]
    bad = bad_samples(max_pixels)
    s1 = good_samples("a", 3) + [(k, m) for k, (m, _) in bad.items()] + [("a0000", {"jpg": encode(photo(3), "JPEG")})]
    write_shard(os.path.join(root, "s-000.tar"), s0)
    write_shard(os.path.join(root, "s-001.tar"), s1)
    full = tar_bytes(good_samples("t", 6, seed=5))
    cut = len(full) * 2 // 3
    with open(os.path.join(root, "s-002.tar"), "wb") as f:
        f.write(full[:cut])
    with open(os.path.join(root, "s-003.tar"), "wb") as f:
        f.write(b"this is not a tar file at all\n" * 40)
    reasons = {k: r for k, (_, r) in bad.items()}
    reasons["a0000"] = "duplicate key in shard"
    return {
        "good_keys": {f"mode_{n}" for n in modes} | {f"a{i:04d}" for i in range(3)},
        "bad_reasons": reasons,
        "truncated_shard": os.path.join(root, "s-002.tar"),
        "unreadable_shard": os.path.join(root, "s-003.tar"),
    }
