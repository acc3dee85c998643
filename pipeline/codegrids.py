"""Read and validate code-grid Parquet (schemas/grids.py), the input of learn, tokenize and report.

Every row is either accepted or rejected with its key and reason (never dropped silently):
missing fields, a shape outside [1, MAX_SIDE], a code list whose length is not height * width,
a code outside [0, V). Any integer list type is accepted. Rows are addressed by a global index
over the sorted input files, so a worker can read exactly its slice (`read_rows`).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.bpe.constants import MAX_SIDE
from pipeline.rejects import Reject, rejects_table, write_rejects  # noqa: F401  (one Reject type for every stage)
from schemas.base import InputError, StorageOptions
from schemas.grids import CODEBOOK_SIZE_KEY, QUANTIZER_FINGERPRINT_KEY, REJECTS_SUFFIX, REQUIRED_COLUMNS

log = logging.getLogger(__name__)


@dataclass
class GridFile:
    path: str
    rows: int
    codebook_size: int | None
    quantizer_fingerprint: str | None
    has_source: bool
    has_caption: bool


@dataclass
class Corpus:
    """The input files of a run, in a fixed order, with the codebook they agree on."""

    files: list[GridFile]
    codebook_size: int
    quantizer_fingerprint: str | None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def row_ranges(self, parts: int) -> list[tuple[int, int]]:
        """Split [0, rows) into `parts` contiguous ranges of near-equal size."""
        bounds = np.linspace(0, self.rows, parts + 1).round().astype(int)
        return [(int(bounds[i]), int(bounds[i + 1])) for i in range(parts)]


@dataclass
class Grids:
    """Accepted grids, concatenated: grid i has codes[offsets[i]:offsets[i+1]] (row-major)."""

    keys: list[str]
    heights: np.ndarray
    widths: np.ndarray
    codes: np.ndarray
    sources: list[str | None] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # index of each grid among the rows read

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self.keys) + 1, np.int64)
        np.cumsum(self.heights.astype(np.int64) * self.widths, out=out[1:])
        return out

    def grid(self, i: int) -> np.ndarray:
        o = self.offsets
        return self.codes[o[i] : o[i + 1]].reshape(int(self.heights[i]), int(self.widths[i]))

    def fingerprint_sum(self) -> int:
        """Sum mod 2**64 of per-grid hashes: the same for any split of the corpus into parts."""
        total = 0
        o = self.offsets
        for i, key in enumerate(self.keys):
            h = hashlib.blake2b(digest_size=8)
            h.update(key.encode())
            h.update(np.array([self.heights[i], self.widths[i]], np.int32).tobytes())
            h.update(self.codes[o[i] : o[i + 1]].tobytes())
            total = (total + int.from_bytes(h.digest(), "little")) % (1 << 64)
        return total

    @staticmethod
    def concat(parts: list["Grids"]) -> "Grids":
        if not parts:
            return Grids([], np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int32))
        return Grids(
            [k for p in parts for k in p.keys],
            np.concatenate([p.heights for p in parts]),
            np.concatenate([p.widths for p in parts]),
            np.concatenate([p.codes for p in parts]),
            [s for p in parts for s in p.sources],
            [c for p in parts for c in p.captions],
            [r for p in parts for r in p.rejects],
            np.concatenate([p.rows for p in parts]),
        )


def key_hash(keys: list[str], salt: str) -> np.ndarray:
    """A uniform value in [0, 1) per key (first 53 bits of blake2b(salt, key))."""
    out = np.empty(len(keys), np.float64)
    s = salt.encode()
    for i, key in enumerate(keys):
        h = hashlib.blake2b(key.encode(), digest_size=8, key=s[:64]).digest()
        out[i] = (int.from_bytes(h, "big") >> 11) / float(1 << 53)
    return out


def holdout_mask(keys: list[str], fraction: float, salt: str) -> np.ndarray:
    """True for the keys in the held-out sample."""
    return key_hash(keys, salt) < fraction


def select(grids: Grids, keep: np.ndarray) -> Grids:
    """The grids where `keep` is True, in order (rejects are kept: they stay accounted for)."""
    keep = np.asarray(keep, bool)
    o = grids.offsets
    cells = np.repeat(keep, np.diff(o))
    idx = np.flatnonzero(keep)
    return Grids([grids.keys[i] for i in idx], grids.heights[keep], grids.widths[keep], grids.codes[cells],
                 [grids.sources[i] for i in idx] if grids.sources else [],
                 [grids.captions[i] for i in idx] if grids.captions else [], grids.rejects, grids.rows[keep])


class UnreadableFile(InputError):
    """One input file cannot be read at all (corrupt bytes): a stage may fail just that input."""


def _meta_int(meta: dict[bytes, bytes] | None, key: bytes, path: str) -> int | None:
    if not meta or key not in meta:
        return None
    raw = meta[key].decode("utf-8", errors="replace")
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{path}: metadata {key.decode()} is {raw!r}, not an integer") from None


def inspect_file(path: str, options: StorageOptions | None = None) -> GridFile:
    """One code-grid file's row count, schema and metadata (no rows read).

    Raises UnreadableFile for bytes that are not Parquet, InputError for a Parquet file that is not
    code grids (missing columns) or declares nonsense metadata.
    """
    fs, p = storage.get_fs(path, options)
    try:
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            rows = pf.metadata.num_rows
    except (pa.ArrowInvalid, pa.ArrowException) as err:
        raise UnreadableFile(f"{path}: not a readable Parquet file: {err}") from None
    except OSError as err:
        if storage.unavailable_cause(err) is not None:
            raise
        raise UnreadableFile(f"{path}: not a readable Parquet file: {err}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise InputError(f"{path}: not a code-grid file, missing column(s) {missing}")
    meta = schema.metadata or {}
    fp = meta.get(QUANTIZER_FINGERPRINT_KEY)
    return GridFile(path, rows, _meta_int(meta, CODEBOOK_SIZE_KEY, path), fp.decode() if fp else None,
                    "source" in schema.names, "caption" in schema.names)


def grid_paths(paths: list[str], options: StorageOptions | None = None, fresh: bool = False) -> list[str]:
    """The code-grid files named by `paths`, rejects files left out."""
    out = []
    for path in storage.expand(paths, (".parquet",), options, fresh=fresh):
        if path.endswith(REJECTS_SUFFIX):
            log.info("skipping %s: a rejects file, not code grids", path)
            continue
        out.append(path)
    return out


def open_corpus(paths: list[str], codebook_size: int | None = None, options: StorageOptions | None = None) -> Corpus:
    """List the files, check their schema and agree on V (and the quantizer) before any work."""
    files = [inspect_file(path, options) for path in grid_paths(paths, options)]
    return corpus_of(files, paths, codebook_size)


def corpus_of(files: list[GridFile], paths: list[str], codebook_size: int | None = None) -> Corpus:
    if not files:
        raise InputError(f"no code-grid files in {paths}")
    declared = {f.codebook_size for f in files if f.codebook_size is not None}
    if codebook_size is None:
        if len(declared) > 1:
            raise InputError(f"input files declare different codebook sizes {sorted(declared)}; they come from different quantizers")
        if not declared:
            raise InputError("the input files do not declare vbpe.codebook_size: pass the codebook size explicitly")
        codebook_size = declared.pop()
    if codebook_size < 1 or codebook_size >= (1 << 21):
        raise InputError(f"codebook size {codebook_size} is outside [1, 2**21)")
    fps = {f.quantizer_fingerprint for f in files if f.quantizer_fingerprint}
    if len(fps) > 1:
        raise InputError(f"input files were made by different quantizers {sorted(fps)}")
    return Corpus(files, int(codebook_size), fps.pop() if fps else None)


def validate_table(table: pa.Table, source: str, first_row: int, V: int) -> Grids:
    """Rows of one table (key, height, width, codes[, source, caption]) -> accepted grids + rejects with reasons."""
    n = table.num_rows
    keys_col = table.column("key")
    keys = keys_col.to_pylist()
    heights = table.column("height").to_numpy(zero_copy_only=False)
    widths = table.column("width").to_numpy(zero_copy_only=False)
    codes_col = table.column("codes").combine_chunks()
    if not (pa.types.is_list(codes_col.type) or pa.types.is_large_list(codes_col.type)) or not pa.types.is_integer(codes_col.type.value_type):
        raise InputError(f"{source}: column 'codes' has type {codes_col.type}, expected a list of integers")
    lengths = pc.fill_null(pc.list_value_length(codes_col), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    reason: list[str | None] = [None] * n
    h_null = table.column("height").is_null().to_numpy(zero_copy_only=False)
    w_null = table.column("width").is_null().to_numpy(zero_copy_only=False)
    heights = np.where(h_null, 0, np.nan_to_num(heights.astype(np.float64), nan=0)).astype(np.int64)
    widths = np.where(w_null, 0, np.nan_to_num(widths.astype(np.float64), nan=0)).astype(np.int64)
    flat = pc.list_flatten(codes_col)
    null_code = flat.is_null().to_numpy(zero_copy_only=False) if flat.null_count else None
    values = (flat.fill_null(0) if flat.null_count else flat).to_numpy(zero_copy_only=False)
    if values.dtype not in (np.int32, np.int64):  # keep int32 as is: the common case costs no copy
        values = values.astype(np.int64)
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(np.maximum(lengths, 0), out=starts[1:])
    nonempty = lengths > 0
    lo = np.zeros(n, np.int64)
    hi = np.zeros(n, np.int64)
    nulls = np.zeros(n, np.int64)
    if values.size:
        idx = starts[:-1][nonempty]
        lo[nonempty] = np.minimum.reduceat(values, idx)
        hi[nonempty] = np.maximum.reduceat(values, idx)
        if null_code is not None:
            nulls[nonempty] = np.add.reduceat(null_code.astype(np.int64), idx)
    for i in range(n):
        if keys[i] is None:
            reason[i] = "missing key"
        elif h_null[i] or w_null[i]:
            reason[i] = "missing height or width"
        elif lengths[i] < 0:
            reason[i] = "missing codes"
        elif not (1 <= heights[i] <= MAX_SIDE and 1 <= widths[i] <= MAX_SIDE):
            reason[i] = f"shape {heights[i]}x{widths[i]} outside 1..{MAX_SIDE} per side"
        elif lengths[i] != heights[i] * widths[i]:
            reason[i] = f"codes has {lengths[i]} values, expected height*width = {heights[i] * widths[i]}"
        elif nulls[i]:
            reason[i] = "null code"
        elif lo[i] < 0 or hi[i] >= V:
            reason[i] = f"code {lo[i] if lo[i] < 0 else hi[i]} outside [0, {V})"
    ok = np.array([r is None for r in reason], dtype=bool)
    sources = table.column("source").to_pylist() if "source" in table.column_names else [None] * n
    captions = table.column("caption").to_pylist() if "caption" in table.column_names else [None] * n
    kept = values if ok.all() else values[np.repeat(ok, np.maximum(lengths, 0))]
    return Grids(
        [keys[i] for i in range(n) if ok[i]],
        heights[ok].astype(np.int32),
        widths[ok].astype(np.int32),
        kept.astype(np.int32, copy=False),
        [sources[i] for i in range(n) if ok[i]],
        [captions[i] for i in range(n) if ok[i]],
        [Reject(keys[i], source, first_row + i, reason[i]) for i in range(n) if not ok[i]],
        first_row + np.flatnonzero(ok).astype(np.int64),
    )


def read_file(gf: GridFile, V: int, row_start: int = 0, row_stop: int | None = None,
              options: StorageOptions | None = None) -> Grids:
    """Rows [row_start, row_stop) of one file, validated; reads only the row groups needed."""
    row_stop = gf.rows if row_stop is None else row_stop
    columns = list(REQUIRED_COLUMNS) + [c for c, present in (("source", gf.has_source), ("caption", gf.has_caption)) if present]
    fs, p = storage.get_fs(gf.path, options)
    parts = []
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        first = 0
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            lo, hi = max(row_start, first), min(row_stop, first + n)
            if lo < hi:
                table = pf.read_row_group(rg, columns=columns).slice(lo - first, hi - lo)
                parts.append(validate_table(table, gf.path, lo, V))
            first += n
    return Grids.concat(parts)


def read_rows(corpus: Corpus, start: int, stop: int, options: StorageOptions | None = None) -> Grids:
    """Global rows [start, stop) of the corpus (files in their sorted order)."""
    parts = []
    first = 0
    for gf in corpus.files:
        lo, hi = max(start, first), min(stop, first + gf.rows)
        if lo < hi:
            part = read_file(gf, corpus.codebook_size, lo - first, hi - first, options)
            part.rows = part.rows + first
            parts.append(part)
        first += gf.rows
    return Grids.concat(parts)


def write_grids(path: str, grids: Grids, codebook_size: int, quantizer_fingerprint: str | None = None,
                options: StorageOptions | None = None) -> None:
    """Write code-grid Parquet with the schema every stage reads (used by tests, demo, synthetic data)."""
    from schemas.grids import code_grid_schema

    offsets = grids.offsets
    codes = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(grids.codes, pa.int32()))
    with_caption = any(c is not None for c in grids.captions)
    schema = code_grid_schema(codebook_size, quantizer_fingerprint, with_caption)
    cols = {
        "key": pa.array(grids.keys, pa.string()),
        "height": pa.array(grids.heights, pa.int32()),
        "width": pa.array(grids.widths, pa.int32()),
        "codes": codes,
        "source": pa.array(grids.sources or [None] * len(grids), pa.string()),
    }
    if with_caption:
        cols["caption"] = pa.array(grids.captions, pa.string())
    storage.write_parquet(pa.table(cols, schema=schema), path, options, compression="snappy")
