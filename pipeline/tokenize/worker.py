"""One unit of work: one code-grid Parquet file -> one tokenized Parquet file (+ its rejects).

A plain function of JSON-able arguments, so it runs the same in this process or as a Ray task.
Reads one row group at a time (memory stays bounded by the largest row group), validates rows
(codegrids), encodes them (BpeEncoder: the contract's sequential merges) and streams the rows out.
Rows in = rows written + rows rejected is checked before the file is committed.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import codegrids, storage
from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.vocab import Vocabulary
from pipeline.rejects import count_reasons, write_rejects
from pipeline.tokenize.token_table import encode_to_table, output_schema
from schemas.base import StorageOptions
from schemas.layout import IdLayout

STAGE = "tokenize"


@dataclass
class FileJob:
    """Everything a worker needs, as plain data (shipped to Ray tasks as is)."""

    grid_file: dict[str, Any]  # codegrids.GridFile fields
    output: str  # full path of the tokenized file
    rejects: str  # full path of its rejects file
    layout: dict[str, Any] | None  # IdLayout.model_dump()
    storage: dict[str, Any] | None  # StorageOptions.model_dump()


@dataclass
class FileResult:
    input: str
    rows_in: int
    rows_written: int
    rows_rejected: int
    tokens: int
    cells: int
    seconds: float
    rejects_written: bool
    reasons: dict[str, int]
    key_hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))  # one per written row

    @property
    def duplicate_keys(self) -> int:
        """Rows written whose key an earlier row of this input already had."""
        return int(len(self.key_hashes) - len(np.unique(self.key_hashes)))


def key_hashes(keys: list[str]) -> np.ndarray:
    """64-bit hashes of keys, to find duplicates across inputs without holding the keys."""
    return np.array([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys],
                    dtype=np.uint64)


def _row_groups(gf: codegrids.GridFile, options: StorageOptions | None) -> list[tuple[int, int]]:
    fs, p = storage.get_fs(gf.path, options)
    with fs.open(p, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    bounds, first = [], 0
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        if n:
            bounds.append((first, first + n))
        first += n
    if first != gf.rows:
        raise RuntimeError(f"{gf.path} changed while being tokenized ({gf.rows} rows listed, {first} now)")
    return bounds


def tokenize_file(job: FileJob, vocab_json: dict[str, Any]) -> FileResult:
    """`vocab_json` comes separately so Ray can share one copy across all tasks (an object ref)."""
    started = time.perf_counter()
    options = StorageOptions.model_validate(job.storage) if job.storage else None
    vocab = Vocabulary.from_json(vocab_json)
    layout = IdLayout.model_validate(job.layout) if job.layout else None
    gf = codegrids.GridFile(**job.grid_file)
    encoder = BpeEncoder(vocab)
    schema = output_schema(vocab.fingerprint(), vocab.codebook_size, layout, vocab.quantizer_fingerprint)
    rejects: list[codegrids.Reject] = []
    hashes: list[np.ndarray] = []
    written = tokens = cells = 0
    with storage.atomic_write(job.output, options) as sink:
        with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            for lo, hi in _row_groups(gf, options):
                grids = codegrids.read_file(gf, vocab.codebook_size, lo, hi, options)
                rejects.extend(grids.rejects)
                if len(grids):
                    table = encode_to_table(grids, encoder, schema, layout, gf.path)
                    writer.write_table(table)
                    written += len(grids)
                    tokens += int(pc.sum(table.column("n_tokens")).as_py())
                    cells += int(grids.codes.shape[0])
                    hashes.append(key_hashes(grids.keys))
            if written + len(rejects) != gf.rows:
                raise RuntimeError(f"{gf.path}: {gf.rows} rows in but {written} written + {len(rejects)} rejected")
    if rejects:
        write_rejects(job.rejects, rejects, STAGE, options)
    else:
        storage.remove(job.rejects, options)  # left by an earlier attempt on an older copy of this input
    return FileResult(gf.path, gf.rows, written, len(rejects), tokens, cells, time.perf_counter() - started,
                      bool(rejects), count_reasons(r.reason for r in rejects),
                      np.concatenate(hashes) if hashes else np.empty(0, np.uint64))
