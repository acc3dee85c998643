"""Decoding to RGB in every mode, limits checked before decoding, resize + centre crop."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.ingest.images import BadImage, ImageLimits, decode_rgb, open_checked
from pipeline.ingest.preprocess import ImageSpec, resize_crop
from tests.helpers.shards import encode, good_images, photo

LIMITS = ImageLimits(max_pixels=4_000_000, min_side=8, max_aspect=20)


@pytest.mark.parametrize("name", sorted(good_images()))
def test_every_mode_becomes_rgb(name):
    ext, data = good_images()[name]
    im = decode_rgb(data, LIMITS)
    assert im.mode == "RGB" and im.size == (96, 80)
    arr = resize_crop(im, ImageSpec(32))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    im = decode_rgb(encode(rgba, "PNG"), LIMITS)
    assert im.getpixel((5, 5)) == (255, 255, 255) and im.getpixel((0, 0)) == (0, 0, 255)


def test_sixteen_bit_is_rescaled_not_clipped():
    a = np.array([[0, 32896, 65535, 65535]] * 8, dtype=np.uint16).repeat(4, axis=1)
    im = decode_rgb(encode(Image.fromarray(a), "PNG"), LIMITS)
    assert im.getpixel((0, 0)) == (0, 0, 0)
    assert im.getpixel((4, 0)) == (128, 128, 128)
    assert im.getpixel((12, 0)) == (255, 255, 255)


def test_cmyk_converted():
    im = decode_rgb(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), LIMITS)
    r, g, b = im.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_applied():
    im = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    out = decode_rgb(encode(im, "JPEG", exif=exif.tobytes()), LIMITS)
    assert out.size == (20, 40)


def test_bomb_rejected_from_header_without_decoding():
    big = encode(Image.new("L", (2500, 2500)), "PNG")
    with pytest.raises(BadImage, match="^decompression bomb"):
        open_checked(big, LIMITS)


def test_pil_own_bomb_guard_becomes_reject(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImage, match="^decompression bomb"):
        decode_rgb(encode(Image.new("L", (100, 100)), "PNG"), ImageLimits(max_pixels=10**9))


@pytest.mark.parametrize(
    "data,category",
    [
        (b"", "empty image member"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "corrupt image"),
        (b"GIF89a-nonsense", "corrupt image"),
        (encode(Image.new("RGB", (4, 4)), "PNG"), "image too small"),
        (encode(Image.new("RGB", (900, 30)), "PNG"), "absurd aspect ratio"),
    ],
)
def test_bad_images(data, category):
    with pytest.raises(BadImage) as err:
        decode_rgb(data, LIMITS)
    assert str(err.value).startswith(category)


def test_truncated_jpeg_rejected():
    data = encode(photo(1, 200, 200), "JPEG")
    with pytest.raises(BadImage, match="^corrupt image"):
        decode_rgb(data[: len(data) // 2], LIMITS)


def test_jpeg_draft_keeps_enough_resolution():
    data = encode(photo(2, 1600, 1200), "JPEG")
    im = decode_rgb(data, LIMITS, shortest_side=256)
    assert min(im.size) >= 256 and im.size[0] < 1600


def test_centre_crop_takes_the_middle():
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, :100] = (255, 0, 0)
    a[:, 100:200] = (0, 255, 0)
    a[:, 200:] = (0, 0, 255)
    out = resize_crop(Image.fromarray(a), ImageSpec(50, "bilinear"))
    assert out.shape == (50, 50, 3)
    assert (out[:, 2:-2, 1] > 250).all() and (out[:, 2:-2, [0, 2]] < 5).all()


def test_upscales_small_images():
    out = resize_crop(Image.fromarray(np.full((10, 20, 3), 77, np.uint8)), ImageSpec(64))
    assert out.shape == (64, 64, 3) and (out == 77).all()
