"""Builders of code-grid Parquet files for tests."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.codegrids import Grids, write_grids
from bench.synthetic import synthetic_grids


def write_synthetic(directory, n_grids: int, parts: int = 2, side: int = 16, codebook_size: int = 256,
                    seed: int = 0, fingerprint: str = "test-quantizer") -> list[str]:
    """`parts` Parquet files of synthetic grids with planted structure; returns their paths."""
    corpus = synthetic_grids(n_grids, side, side, codebook_size, seed=seed, n_motifs=24)
    paths = []
    bounds = np.linspace(0, n_grids, parts + 1).astype(int)
    for p in range(parts):
        idx = np.arange(bounds[p], bounds[p + 1])
        g = Grids([f"s{seed}-{i:06d}" for i in idx], np.full(len(idx), side, np.int32), np.full(len(idx), side, np.int32),
                  corpus.codes[idx].reshape(-1))
        path = str(directory / f"part-{p}.parquet")
        write_grids(path, g, codebook_size, fingerprint)
        paths.append(path)
    return paths


def write_raw(path, rows: list[dict], codebook_size: int | None = 16, codes_type=pa.list_(pa.int32())) -> None:
    """A code-grid file with arbitrary (possibly bad) rows."""
    schema = pa.schema([("key", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("codes", codes_type)])
    if codebook_size is not None:
        schema = schema.with_metadata({b"vbpe.codebook_size": str(codebook_size).encode()})
    table = pa.table({k: [r.get(k) for r in rows] for k in schema.names}, schema=schema)
    pq.write_table(table, str(path))
