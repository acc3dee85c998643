"""Demo corpus: real photos shipped inside PyPI packages, cropped and flipped into WebDataset shards.

scikit-image's bundled photos, scikit-learn's two sample images and matplotlib's Grace Hopper make
about two dozen distinct photos with no download. Random crops and flips (from a seed, so the
same seed gives byte-identical shards) turn them into a few hundred samples.

A few whole photos are held out: their crops go to their own shard, so the vocabulary is learned
without ever seeing them and the report measures it on photos it has not seen (crops of a training
photo would overlap the training crops).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from pipeline import storage
from pipeline.ingest.writer import write_shard

log = logging.getLogger(__name__)

SKIMAGE_PHOTOS = {
    "astronaut": "the astronaut Eileen Collins",
    "camera": "a man with a camera on a tripod",
    "chelsea": "Chelsea the cat",
    "coffee": "a cup of coffee",
    "coins": "Greek coins",
    "grass": "grass",
    "gravel": "gravel",
    "brick": "a brick wall",
    "hubble_deep_field": "the Hubble deep field",
    "immunohistochemistry": "a stained tissue sample",
    "moon": "the surface of the moon",
    "retina": "a human retina",
    "rocket": "a rocket on the launch pad",
    "clock": "a clock",
    "cell": "a cell under a microscope",
    "page": "a scanned book page",
    "text": "text on a sign",
}


@dataclass
class Photo:
    name: str
    description: str
    pixels: np.ndarray


HELD_OUT_PHOTOS = ("chelsea", "coffee", "rocket", "brick", "grace_hopper")


@dataclass
class DemoCorpus:
    shards: list[str]  # training shards first, then the held-out ones
    samples: int
    photos: list[str]
    unavailable: list[str] = field(default_factory=list)
    planted_bad: int = 0
    train_shards: list[str] = field(default_factory=list)
    heldout_shards: list[str] = field(default_factory=list)
    heldout_photos: list[str] = field(default_factory=list)
    heldout_samples: int = 0


def _as_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12) * 255
    return a.round().astype(np.uint8)


def _loaders() -> dict[str, tuple[str, Callable[[], np.ndarray]]]:
    out: dict[str, tuple[str, Callable[[], np.ndarray]]] = {}
    import skimage.data as skd

    for name, desc in SKIMAGE_PHOTOS.items():
        out[name] = (desc, getattr(skd, name))
    out["motorcycle_left"] = ("a motorcycle in a workshop", lambda: skd.stereo_motorcycle()[0])
    out["motorcycle_right"] = ("a motorcycle in a workshop, seen from the right", lambda: skd.stereo_motorcycle()[1])

    def sklearn_image(i: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            from sklearn.datasets import load_sample_images

            return load_sample_images().images[i]

        return load

    out["china"] = ("a temple in China", sklearn_image(0))
    out["flower"] = ("a flower", sklearn_image(1))

    def grace_hopper() -> np.ndarray:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))

    out["grace_hopper"] = ("Grace Hopper", grace_hopper)
    return out


def load_photos() -> tuple[list[Photo], list[str]]:
    """(photos that load offline, names of loaders that did not)."""
    photos, missing = [], []
    for name, (desc, load) in _loaders().items():
        try:
            photos.append(Photo(name, desc, _as_uint8(np.asarray(load()))))
        except Exception as err:  # some scikit-image images need a download (pooch)
            log.info("photo %s unavailable offline: %s", name, err)
            missing.append(name)
    return photos, missing


def random_view(photo: Photo, rng: np.random.Generator, max_side: int) -> tuple[Image.Image, str]:
    """A random crop (45-100% of the shortest side, aspect 3:4..4:3), maybe mirrored, at most max_side px."""
    im = Image.fromarray(photo.pixels)
    w, h = im.size
    side = min(w, h) * rng.uniform(0.45, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, side * np.sqrt(aspect)), min(h, side / np.sqrt(aspect))
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    im = im.crop((round(x0), round(y0), round(x0 + cw), round(y0 + ch)))
    flipped = bool(rng.random() < 0.5)
    if flipped:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = max_side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    caption = f"a photo of {photo.description}" + (", mirrored" if flipped else "")
    return im, caption


def _encode(im: Image.Image, as_png: bool) -> tuple[str, bytes]:
    buf = io.BytesIO()
    if as_png:
        im.save(buf, format="PNG", optimize=False)
        return "png", buf.getvalue()
    im.save(buf, format="JPEG", quality=90)
    return "jpg", buf.getvalue()


def planted_bad_samples() -> list[tuple[str, dict[str, bytes]]]:
    """Two broken samples, so the demo shows rejects being recorded rather than crashing the job."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="JPEG")
    return [
        ("demo/bad-truncated", {"jpg": buf.getvalue()[:300], "txt": b"a truncated JPEG"}),
        ("demo/bad-empty", {"png": b"", "txt": b"a zero-byte image"}),
    ]


def _write(out_dir: str, prefix: str, rows: list, shards: int) -> list[str]:
    paths = []
    per = -(-len(rows) // shards)
    for s in range(shards):
        path = storage.join(out_dir, f"{prefix}-{s:03d}.tar")
        write_shard(path, rows[s * per:(s + 1) * per])
        paths.append(path)
    return paths


def build_demo_shards(out_dir: str, samples: int = 384, shards: int = 4, seed: int = 0, max_side: int = 384,
                      plant_bad: bool = True, heldout: tuple[str, ...] = HELD_OUT_PHOTOS) -> DemoCorpus:
    """`shards` training shards (train-NNN.tar) and one held-out shard (heldout-000.tar) with every crop of
    the `heldout` photos; the broken samples go into the first training shard."""
    photos, missing = load_photos()
    if not photos:
        raise RuntimeError("no demo photos available: install scikit-image, scikit-learn and matplotlib")
    held = [p.name for p in photos if p.name in heldout]
    if not held or len(held) == len(photos):
        held = [photos[-1].name]
    rng = np.random.default_rng(seed)
    train: list[tuple[str, dict[str, bytes]]] = []
    test: list[tuple[str, dict[str, bytes]]] = []
    for i in range(samples):
        photo = photos[i % len(photos)]
        im, caption = random_view(photo, rng, max_side)
        ext, data = _encode(im, as_png=(i % 5 == 4))
        (test if photo.name in held else train).append((f"demo/{i:06d}", {ext: data, "txt": caption.encode()}))
    bad = planted_bad_samples() if plant_bad else []
    train = train[:1] + bad + train[1:]
    train_paths = _write(out_dir, "train", train, shards)
    test_paths = _write(out_dir, "heldout", test, 1) if test else []
    return DemoCorpus(train_paths + test_paths, samples + len(bad), [p.name for p in photos], missing, len(bad),
                      train_paths, test_paths, held, len(test))
