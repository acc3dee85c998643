"""Encoded grids -> the tokenized-corpus Arrow table (schemas/tokens.py), plain Arrow types only.

Every file of one corpus version has the same schema (`caption` is always there, null when the
grids had none), so readers can open a whole directory at once.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.bpe.encoder import Encoded, BpeEncoder
from pipeline.codegrids import Grids
from pipeline.tokenize.layout import wrap_images
from schemas.grids import CODEBOOK_SIZE_KEY, QUANTIZER_FINGERPRINT_KEY
from schemas.layout import IdLayout
from schemas.tokens import CAPTION_FIELD, INPUT_IDS_FIELD, LAYOUT_FINGERPRINT_KEY, TOKENS_SCHEMA, VOCAB_FINGERPRINT_KEY


def output_schema(vocab_fingerprint: str, codebook_size: int, layout: IdLayout | None,
                  quantizer_fingerprint: str | None = None) -> pa.Schema:
    schema = TOKENS_SCHEMA.append(CAPTION_FIELD)
    meta = {VOCAB_FINGERPRINT_KEY: vocab_fingerprint.encode(), CODEBOOK_SIZE_KEY: str(int(codebook_size)).encode()}
    if layout is not None:
        schema = schema.append(INPUT_IDS_FIELD)
        meta[LAYOUT_FINGERPRINT_KEY] = layout.fingerprint().encode()
    if quantizer_fingerprint:
        meta[QUANTIZER_FINGERPRINT_KEY] = quantizer_fingerprint.encode()
    return schema.with_metadata(meta)


def _lists(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("batch too large for 32-bit list offsets; use smaller row groups")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int32()))


def token_table(grids: Grids, enc: Encoded, schema: pa.Schema, layout: IdLayout | None, default_source: str) -> pa.Table:
    """One row per accepted grid, in input order."""
    n = len(grids)
    offsets = np.asarray(enc.offsets, np.int64)
    if len(offsets) != n + 1:
        raise ValueError(f"encoder returned {len(offsets) - 1} grids for {n}")
    sources = grids.sources or [None] * n
    captions = grids.captions or [None] * n
    cols = {
        "key": pa.array(grids.keys, pa.string()),
        "height": pa.array(grids.heights, pa.int32()),
        "width": pa.array(grids.widths, pa.int32()),
        "tokens": _lists(enc.tokens, offsets),
        "anchors": _lists(enc.anchors, offsets),
        "n_tokens": pa.array(np.diff(offsets).astype(np.int32), pa.int32()),
        "source": pa.array([s if s is not None else default_source for s in sources], pa.string()),
        "caption": pa.array(captions, pa.string()),
    }
    if layout is not None:
        cols["input_ids"] = _lists(*wrap_images(enc.tokens, offsets, layout))
    return pa.table(cols, schema=schema)


def encode_to_table(grids: Grids, encoder: BpeEncoder, schema: pa.Schema, layout: IdLayout | None,
                    default_source: str) -> pa.Table:
    """Validated grids -> output rows; shared by the grid-file worker and the image-shard path."""
    enc = encoder.encode(grids.codes, grids.heights, grids.widths)
    return token_table(grids, enc, schema, layout, default_source)
