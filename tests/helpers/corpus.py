"""Small real inputs for tokenize / submit / jobs tests: code-grid files and a vocabulary learned on them.

The vocabulary comes from the contract's reference learner (pipeline.bpe.reference), so tests
depend on nothing but the contract.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import codegrids
from pipeline.bpe import reference
from pipeline.bpe.vocab import CorpusStats, Merge, Vocabulary
from bench.synthetic import synthetic_grids
from schemas.grids import code_grid_schema

V = 64


def grids(n: int, seed: int, h: int = 8, w: int = 8, codebook_size: int = V) -> np.ndarray:
    return synthetic_grids(n, h, w, codebook_size, seed=seed, n_motifs=6, n_textures=2, noise=0.05).codes


def learn_vocab(train: np.ndarray, num_merges: int = 12, codebook_size: int = V, alpha: float = 0.5,
                quantizer_fingerprint: str | None = None) -> Vocabulary:
    merges, _, eff_alpha = reference.learn(list(train), codebook_size, num_merges, alpha=alpha, sigma=1.0)
    vocab = Vocabulary(
        codebook_size=codebook_size, sigma=1.0, min_frequency=2, alpha=eff_alpha, requested_merges=num_merges,
        merges=[Merge(m.id, m.pair, m.frequency, m.consistency, m.priority, m.offset, m.histogram) for m in merges],
        corpus=CorpusStats(grids=len(train), cells=int(train.size)), quantizer_fingerprint=quantizer_fingerprint,
    )
    assert len(vocab.merges) == num_merges, "tiny corpus ran out of pairs; use more grids"
    return vocab


def write_grid_file(path: str, codes: np.ndarray, prefix: str, codebook_size: int = V, captions: bool = False,
                    quantizer_fingerprint: str | None = None) -> list[str]:
    """Write (n, h, w) grids as code-grid Parquet; returns the keys."""
    n, h, w = codes.shape
    keys = [f"{prefix}-{i:04d}" for i in range(n)]
    g = codegrids.Grids(keys, np.full(n, h, np.int32), np.full(n, w, np.int32), codes.reshape(-1).astype(np.int32),
                        [None] * n, [f"caption of {k}" for k in keys] if captions else [None] * n)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    codegrids.write_grids(path, g, codebook_size, quantizer_fingerprint)
    return keys


def write_bad_rows(path: str, codebook_size: int = V) -> dict[str, str]:
    """Three good-schema rows that must be rejected, plus one good row; returns key -> expected reason start."""
    rows = {
        "key": ["bad-range", "bad-len", "bad-shape", "good"],
        "height": [2, 2, 0, 2],
        "width": [2, 2, 3, 2],
        "codes": [[0, 1, 2, codebook_size], [0, 1, 2], [], [1, 1, 2, 2]],
        "source": [None] * 4,
    }
    pq.write_table(pa.table(rows, schema=code_grid_schema(codebook_size)), path)
    return {"bad-range": "code", "bad-len": "codes has 3 values", "bad-shape": "shape 0x3"}
