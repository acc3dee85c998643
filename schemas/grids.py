"""Code-grid Parquet: the output of quantize and the input of learn / tokenize / report."""
from __future__ import annotations

import pyarrow as pa

CODEBOOK_SIZE_KEY = b"vbpe.codebook_size"
QUANTIZER_FINGERPRINT_KEY = b"vbpe.quantizer_fingerprint"

CODE_GRID_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("codes", pa.list_(pa.int32()), nullable=False),
        pa.field("source", pa.string()),
    ]
)
REQUIRED_COLUMNS = ("key", "height", "width", "codes")
OPTIONAL_COLUMNS = ("source", "caption")

# Every stage names its rejects file <something>.rejects.parquet; input expansion skips them.
REJECTS_SUFFIX = ".rejects.parquet"
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("source", pa.string()),  # the file (or shard) the record came from
        pa.field("row", pa.int64()),  # row index within that file, -1 when unknown
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def code_grid_schema(codebook_size: int, quantizer_fingerprint: str | None = None, with_caption: bool = False) -> pa.Schema:
    """The writer's schema, with V (and the quantizer's fingerprint) in the file metadata."""
    schema = CODE_GRID_SCHEMA
    if with_caption:
        schema = schema.append(pa.field("caption", pa.string()))
    meta = {CODEBOOK_SIZE_KEY: str(int(codebook_size)).encode()}
    if quantizer_fingerprint:
        meta[QUANTIZER_FINGERPRINT_KEY] = quantizer_fingerprint.encode()
    return schema.with_metadata(meta)
