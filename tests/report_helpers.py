"""Test helpers for the report: small vocabularies from the learner core, synthetic corpora, shards.

`learn_vocab` drives the learner core (Shard + Stats) in one process; until `pipeline.learn.api`
is on this branch it is the quickest way to make a vocabulary with realistic `merged` counts.
Its output is checked against the slow reference learner in test_report_core.py.
"""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

from pipeline.codegrids import Grids, write_grids
from pipeline.learn.shard import Shard
from pipeline.learn.stats import Stats
from pipeline.learn.vocab import CorpusStats, Merge, Vocabulary


def learn_vocab(codes: np.ndarray, heights, widths, V: int, merges: int, alpha: float = 0.0, sigma: float = 1.0,
                min_frequency: int = 2, fingerprint: str = "") -> Vocabulary:
    heights = np.asarray(heights, np.int32)
    widths = np.asarray(widths, np.int32)
    shard = Shard(np.asarray(codes, np.int32), heights, widths, V)
    stats = Stats(sigma, min_frequency, alpha)
    stats.add(shard.count())
    stats.refresh()
    out = []
    for k in range(merges):
        c = stats.pop_best()
        if c is None:
            break
        deltas, n = shard.merge(c.a, c.b, V + k, c.offset[0], c.offset[1])
        stats.add(deltas)
        stats.refresh()
        out.append(Merge(V + k, (c.a, c.b), c.frequency, c.consistency, c.priority, c.offset, c.histogram, n))
    cells = int((heights.astype(np.int64) * widths).sum())
    shapes: dict[tuple[int, int], int] = {}
    for h, w in zip(heights, widths):
        shapes[(int(h), int(w))] = shapes.get((int(h), int(w)), 0) + 1
    tokens_after = cells - sum(m.merged for m in out)
    corpus = CorpusStats(len(heights), cells, [(h, w, n) for (h, w), n in sorted(shapes.items())], 0, tokens_after,
                         fingerprint)
    return Vocabulary(V, sigma, min_frequency, alpha, None, merges, out, corpus,
                      stopped="requested merges" if len(out) == merges else "no eligible pair")


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
