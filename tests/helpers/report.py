"""Test helpers for the report: vocabularies from in-memory grids, a real-photo corpus in shards."""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

from pipeline.bpe.learner import learn_arrays
from pipeline.bpe.vocab import CorpusStats, Vocabulary
from pipeline.codegrids import Grids, write_grids


def learn_vocab(codes: np.ndarray, heights, widths, V: int, merges: int, alpha: float = 0.0, sigma: float = 1.0,
                min_frequency: int = 2, fingerprint: str = "") -> Vocabulary:
    """A Vocabulary learned (by `pipeline.bpe.learner.learn_arrays`) from concatenated row-major grids."""
    heights = np.asarray(heights, np.int32)
    widths = np.asarray(widths, np.int32)
    sizes = heights.astype(np.int64) * widths
    starts = np.concatenate(([0], np.cumsum(sizes)))
    arrays = [np.asarray(codes[starts[i] : starts[i + 1]]).reshape(heights[i], widths[i]) for i in range(len(heights))]
    out, _, eff_alpha = learn_arrays(arrays, V, merges, alpha=alpha, sigma=sigma, min_frequency=min_frequency)
    cells = int(sizes.sum())
    shapes: dict[tuple[int, int], int] = {}
    for h, w in zip(heights, widths):
        shapes[(int(h), int(w))] = shapes.get((int(h), int(w)), 0) + 1
    corpus = CorpusStats(grids=len(heights), cells=cells, shapes=[(h, w, n) for (h, w), n in sorted(shapes.items())],
                         tokens_after=cells - sum(m.merged for m in out), fingerprint=fingerprint)
    return Vocabulary(V, sigma, min_frequency, eff_alpha, None, requested_merges=merges, merges=out, corpus=corpus,
                      stopped="requested merges reached" if len(out) == merges else "no eligible pair left")


def grids_from_array(codes: np.ndarray, prefix: str = "g", sources: list[str | None] | None = None) -> Grids:
    n, h, w = codes.shape
    return Grids([f"{prefix}{i:06d}" for i in range(n)], np.full(n, h, np.int32), np.full(n, w, np.int32),
                 codes.reshape(-1).astype(np.int32), sources or [None] * n)


def image_for(codes: np.ndarray, cell_px: int, V: int) -> np.ndarray:
    """An RGB picture whose cells are flat colours derived from their codes (so crops are checkable)."""
    h, w = codes.shape
    rng = np.random.default_rng(1234)
    palette = rng.integers(0, 256, size=(V, 3), dtype=np.uint8)
    img = palette[codes]
    return np.repeat(np.repeat(img, cell_px, axis=0), cell_px, axis=1)


def write_shard(path: str, samples: list[tuple[str, bytes, str]]) -> None:
    """(key, bytes, ext) members in WebDataset layout, plus a caption member per sample."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, data, ext in samples:
            for name, blob in ((f"{key}.{ext}", data), (f"{key}.txt", f"caption {key}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_corpus(path: str, grids: Grids, V: int) -> str:
    write_grids(path, grids, V)
    return path


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "coins", "hubble_deep_field",
          "immunohistochemistry", "brick", "grass", "cell", "clock", "cat")


def colour_cube_codes(pixels: np.ndarray, cell: int, levels: int = 4) -> np.ndarray:
    """A tiny real quantizer: each cell x cell patch -> its mean colour on a levels^3 colour cube."""
    R = pixels.shape[0]
    h = R // cell
    means = pixels.reshape(h, cell, h, cell, 3).mean(axis=(1, 3))
    q = np.clip((means / 256.0 * levels).astype(np.int64), 0, levels - 1)
    return (q[..., 0] * levels * levels + q[..., 1] * levels + q[..., 2]).astype(np.int32)


def photo_corpus(root: str, n_samples: int = 160, n_shards: int = 2, image_size: int = 128, cell: int = 8,
                 seed: int = 0, corrupt_every: int = 0):
    """Real photos (scikit-image) -> random crops as JPEG in WebDataset shards -> code grids, the way
    the quantize stage does it (same preprocessing as the report). Returns (shards, Grids, V).

    With `corrupt_every`, every n-th sample's image bytes in the shard are garbage (its grid is kept).
    """
    import skimage.data

    from pipeline.report.images import canonical, preprocess

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        photos.append(a[..., :3].astype(np.uint8))
    shards = [os.path.join(root, f"shard-{i:03d}.tar") for i in range(n_shards)]
    members: list[list[tuple[str, bytes, str]]] = [[] for _ in shards]
    keys, codes, sources = [], [], []
    for i in range(n_samples):
        p = photos[i % len(photos)]
        H, W = p.shape[:2]
        side = int(min(H, W) * rng.uniform(0.55, 0.95))
        ch = min(H, int(side * rng.uniform(0.8, 1.25)))
        y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - side + 1))
        crop = p[y : y + ch, x : x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        key = f"s{i:05d}"
        grid = colour_cube_codes(np.asarray(preprocess(data, image_size)), cell)
        if corrupt_every and i % corrupt_every == corrupt_every - 1:
            data = b"\xff\xd8 this is not a jpeg" * 10
        shard = i % n_shards
        members[shard].append((key, data, "jpg"))
        keys.append(key)
        codes.append(grid.reshape(-1))
        sources.append(canonical(shards[shard]))
    for path, m in zip(shards, members):
        write_shard(path, m)
    h = image_size // cell
    grids = Grids(keys, np.full(len(keys), h, np.int32), np.full(len(keys), h, np.int32),
                  np.concatenate(codes).astype(np.int32), sources)
    return shards, grids, 64
