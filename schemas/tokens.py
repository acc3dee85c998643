"""Tokenized-corpus Parquet: what `vbpe tokenize` writes and trainers read."""
from __future__ import annotations

import pyarrow as pa

VOCAB_FINGERPRINT_KEY = b"vbpe.vocab_fingerprint"
LAYOUT_FINGERPRINT_KEY = b"vbpe.layout_fingerprint"

TOKENS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("tokens", pa.list_(pa.int32()), nullable=False),  # vocabulary ids: codes < V, merges V + k
        pa.field("anchors", pa.list_(pa.int32()), nullable=False),  # smallest cell r * W + c of each token
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("source", pa.string()),
    ]
)
# Added when an id layout is given (see schemas.layout): the LLM's ids with the image wrapped.
INPUT_IDS_FIELD = pa.field("input_ids", pa.list_(pa.int32()), nullable=False)
CAPTION_FIELD = pa.field("caption", pa.string())
