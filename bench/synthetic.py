"""Synthetic code grids with known structure, for tests, benchmarks and the demo without images.

Real VQ grids mix a heavy-tailed code distribution with repeated local shapes and textured
regions. This generator plants the same three things, so a learner has something to find and
a test can check that it finds it: Zipfian background codes, multi-cell motifs (connected shapes
of up to 3 x 3 cells with fixed codes, placed on a jittered 4 x 4 block lattice), 2 x 2 periodic
textures over rectangles, and a fraction of cells overwritten by uniform noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass
class Motif:
    cells: np.ndarray  # (k, 2) offsets (dy, dx) inside a 3 x 3 box, first cell at the top-left-most
    codes: np.ndarray  # (k,)


def zipf_probs(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return p / p.sum()


def make_motifs(rng: np.random.Generator, n_motifs: int, codebook_size: int, min_cells: int = 2, max_cells: int = 5) -> list[Motif]:
    """Random connected shapes in a 3 x 3 box, grown cell by cell from a seed."""
    motifs = []
    for _ in range(n_motifs):
        k = int(rng.integers(min_cells, max_cells + 1))
        cells = {(int(rng.integers(0, 3)), int(rng.integers(0, 3)))}
        while len(cells) < k:
            y, x = list(cells)[int(rng.integers(0, len(cells)))]
            dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][int(rng.integers(0, 4))]
            if 0 <= y + dy < 3 and 0 <= x + dx < 3:
                cells.add((y + dy, x + dx))
        arr = np.array(sorted(cells), dtype=np.int32)
        motifs.append(Motif(arr, rng.integers(0, codebook_size, size=k).astype(np.int32)))
    return motifs


@njit(cache=True)
def _fill(out, h, w, seed, bg_cdf, motif_cells, motif_codes, motif_start, motif_cdf, p_motif,
          tex_codes, p_texture, noise, codebook_size):
    np.random.seed(seed)
    n_grids = out.shape[0] // (h * w)
    n_tex = tex_codes.shape[0]
    for g in range(n_grids):
        base = g * h * w
        for i in range(h * w):
            out[base + i] = np.searchsorted(bg_cdf, np.random.random())
        if n_tex > 0 and np.random.random() < p_texture:
            t = np.random.randint(0, n_tex)
            y0 = np.random.randint(0, h)
            x0 = np.random.randint(0, w)
            y1 = min(h, y0 + 2 + np.random.randint(0, max(1, h // 2)))
            x1 = min(w, x0 + 2 + np.random.randint(0, max(1, w // 2)))
            for y in range(y0, y1):
                for x in range(x0, x1):
                    out[base + y * w + x] = tex_codes[t, y % 2, x % 2]
        for by in range(0, h - 2, 4):
            for bx in range(0, w - 2, 4):
                if np.random.random() >= p_motif:
                    continue
                m = np.searchsorted(motif_cdf, np.random.random())
                oy = by + np.random.randint(0, min(2, h - 2 - by))
                ox = bx + np.random.randint(0, min(2, w - 2 - bx))
                for j in range(motif_start[m], motif_start[m + 1]):
                    out[base + (oy + motif_cells[j, 0]) * w + ox + motif_cells[j, 1]] = motif_codes[j]
        for i in range(h * w):
            if np.random.random() < noise:
                out[base + i] = np.random.randint(0, codebook_size)


@dataclass
class SyntheticCorpus:
    codes: np.ndarray  # (n, h, w) int32
    motifs: list[Motif]


def synthetic_grids(
    n_grids: int,
    height: int = 32,
    width: int = 32,
    codebook_size: int = 8192,
    seed: int = 0,
    zipf_s: float = 1.1,
    n_motifs: int = 256,
    motif_zipf_s: float = 1.0,
    p_motif: float = 0.6,
    n_textures: int = 16,
    p_texture: float = 0.5,
    noise: float = 0.1,
    sample_seed: int | None = None,
) -> SyntheticCorpus:
    """`seed` fixes the world (code frequencies, motifs, textures); `sample_seed` the grids drawn from it,
    so a large corpus can be generated in chunks that share one world."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(codebook_size)
    bg_cdf = np.cumsum(zipf_probs(codebook_size, zipf_s)[np.argsort(perm)])
    bg_cdf[-1] = 1.0
    motifs = make_motifs(rng, n_motifs, codebook_size)
    cells = np.concatenate([m.cells for m in motifs]) if motifs else np.zeros((0, 2), np.int32)
    codes = np.concatenate([m.codes for m in motifs]) if motifs else np.zeros(0, np.int32)
    start = np.zeros(len(motifs) + 1, np.int64)
    np.cumsum([len(m.codes) for m in motifs], out=start[1:])
    motif_cdf = np.cumsum(zipf_probs(max(1, len(motifs)), motif_zipf_s))
    motif_cdf[-1] = 1.0
    tex = rng.integers(0, codebook_size, size=(n_textures, 2, 2)).astype(np.int32)
    out = np.empty(n_grids * height * width, dtype=np.int32)
    fill_seed = int(rng.integers(0, 2**31 - 1)) if sample_seed is None else int(sample_seed) % (2**31 - 1)
    _fill(out, height, width, fill_seed, bg_cdf, cells.astype(np.int64), codes,
          start, motif_cdf, p_motif if motifs else 0.0, tex, p_texture, noise, codebook_size)
    return SyntheticCorpus(out.reshape(n_grids, height, width), motifs)
