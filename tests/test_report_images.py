"""Source images: preprocessing geometry (cells -> pixel boxes), shard lookup, crops."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from pipeline.report.images import cell_box, crop_instance, find_images, preprocess, quantizer_input, split_name
from tests.helpers.report import png_bytes, write_shard


def _cell_picture(width: int, height: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A width x height image whose centre square is an h x w grid of flat colours; black outside."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    colours = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img = np.zeros((height, width, 3), np.uint8)
    for r in range(h):
        for c in range(w):
            img[top + r * side // h : top + (r + 1) * side // h, left + c * side // w : left + (c + 1) * side // w] = colours[r, c]
    return img, colours


def test_preprocess_maps_cells_to_pixel_boxes():
    for width, height in ((320, 200), (200, 320), (240, 240)):
        img, colours = _cell_picture(width, height, 4, 5)
        R = 100
        out = np.asarray(preprocess(png_bytes(img), R, "bicubic"))
        assert out.shape == (R, R, 3)
        for r in range(4):
            for c in range(5):
                x0, y0, x1, y1 = cell_box(r, c, 4, 5, R)
                assert (x0, y0, x1, y1) == (c * R / 5, r * R / 4, (c + 1) * R / 5, (r + 1) * R / 4)
                centre = out[int((y0 + y1) / 2), int((x0 + x1) / 2)].astype(int)
                assert np.abs(centre - colours[r, c]).max() <= 3, (width, height, r, c)


def test_preprocess_handles_modes_and_orientation():
    grey = Image.fromarray(np.full((50, 80), 128, np.uint8), "L")
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    assert np.asarray(preprocess(buf.getvalue(), 32)).shape == (32, 32, 3)
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent: white after compositing
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert np.asarray(preprocess(buf.getvalue(), 16)).min() == 255
    # EXIF orientation 6 (rotate 90 CW): a wide stored image becomes tall before the crop
    img, _ = _cell_picture(120, 60, 1, 2)
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    out = np.asarray(preprocess(buf.getvalue(), 60))
    top, bottom = out[10, 15].astype(int), out[50, 15].astype(int)
    assert np.abs(top - bottom).max() > 30  # the two cells now lie above each other


def test_split_name():
    assert split_name("a/b/000123.jpg") == ("a/b/000123", "jpg")
    assert split_name("x.seg.PNG") == ("x", "seg.png")
    assert split_name("noext") == ("noext", "")


def test_find_images(tmp_path):
    a, b = str(tmp_path / "a.tar"), str(tmp_path / "b.tar")
    px = lambda v: png_bytes(np.full((8, 8, 3), v, np.uint8))  # noqa: E731
    write_shard(a, [("k1", px(10), "png"), ("k2", px(20), "png"), ("dup", px(30), "png")])
    write_shard(b, [("dup", px(40), "png"), ("k3", px(50), "jpg")])
    bad = str(tmp_path / "broken.tar")
    with open(bad, "wb") as f:
        f.write(b"not a tar at all" * 100)
    requests = [("k1", None), ("dup", b), ("dup", a), ("k3", "/elsewhere/c.tar"), ("gone", None), ("k2", bad)]
    got = find_images([a, b, bad], requests)
    value = lambda req: np.asarray(Image.open(io.BytesIO(got.images[req])))[0, 0, 0]  # noqa: E731
    assert value(("k1", None)) == 10
    assert value(("dup", b)) == 40 and value(("dup", a)) == 30  # the source column disambiguates
    assert ("k3", "/elsewhere/c.tar") in got.images  # unknown source: found by key anywhere
    assert "gone" in got.missing[("gone", None)]
    assert "shard unreadable" in got.missing[("k2", bad)]
    assert bad in got.shard_errors


def test_crop_instance_outlines_the_cells():
    h = w = 8
    R = 128
    colours = np.random.default_rng(1).integers(40, 200, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(np.repeat(np.repeat(colours, R // h, 0), R // w, 1))
    cells = [(2, 3), (2, 4), (3, 3)]
    tile = np.asarray(crop_instance(img, cells, h, w, tile=120, min_cells=1))
    assert tile.shape == (120, 120, 3)
    # context rows/cols 1..4 x 2..5 -> 4 x 4 cells of 30 px; token cells undimmed, others darker
    for r in range(1, 5):
        for c in range(2, 6):
            y, x = (r - 1) * 30 + 15, (c - 2) * 30 + 15
            got = tile[y, x].astype(int)
            if (r, c) in cells:
                assert np.abs(got - colours[r, c]).max() <= 2
            else:
                assert np.all(got < colours[r, c].astype(int) * 0.6 + 2)
    assert (tile == (255, 45, 85)).all(axis=2).sum() > 50  # the outline
    # a single corner cell is shown with at least 5 x 5 cells of context (24 px each), window kept inside the grid
    tile = np.asarray(crop_instance(img, [(0, 0)], h, w, tile=120))
    assert np.abs(tile[12, 12].astype(int) - colours[0, 0]).max() <= 2
    for r, c in ((0, 4), (4, 0), (4, 4)):
        assert np.all(tile[r * 24 + 12, c * 24 + 12] < colours[r, c].astype(int) * 0.6 + 2)


def test_quantizer_input_from_manifest(tmp_path):
    (tmp_path / "codes" / "grids").mkdir(parents=True)
    grid_file = str(tmp_path / "codes" / "grids" / "s-1.parquet")
    assert quantizer_input([grid_file]) is None
    (tmp_path / "codes" / "manifest.json").write_text(json.dumps(
        {"format": "vbpe.quantize.manifest.v1", "quantizer": {"image_size": 256, "resample": "lanczos"}, "shards": {}}))
    assert quantizer_input([grid_file]) == (256, "lanczos")
