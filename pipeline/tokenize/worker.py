"""One unit of work: one code-grid Parquet file -> one tokenized Parquet file (+ its rejects).

A plain function of JSON-able arguments, so it runs the same in this process or as a Ray task.
Reads one row group at a time (memory stays bounded by the largest row group), validates rows
(codegrids), encodes them (BpeEncoder: the contract's sequential merges) and streams the rows out.
Rows in = rows written + rows rejected is checked before the file is committed.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import codegrids, storage
from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.vocab import Vocabulary
from pipeline.tokenize.files import atomic_write, remove
from pipeline.tokenize.records import encode_to_table, output_schema
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
    written = tokens = cells = 0
    with atomic_write(job.output, options) as sink:
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
            if written + len(rejects) != gf.rows:
                raise RuntimeError(f"{gf.path}: {gf.rows} rows in but {written} written + {len(rejects)} rejected")
    if rejects:
        with atomic_write(job.rejects, options) as sink:
            pq.write_table(codegrids.rejects_table(rejects, STAGE), sink, compression="zstd")
    else:
        remove(job.rejects, options)  # left by an earlier attempt on an older copy of this input
    reasons: dict[str, int] = {}
    for r in rejects:
        kind = re.sub(r"-?\d+", "N", r.reason)  # "code 9000 outside [0, 8192)" -> "code N outside [N, N)"
        reasons[kind] = reasons.get(kind, 0) + 1
    return FileResult(gf.path, gf.rows, written, len(rejects), tokens, cells, time.perf_counter() - started,
                      bool(rejects), reasons)
