"""The Ray Data step after the quantizer actors: code rows -> token rows, inside the same stream.

It runs as plain tasks, not actors: nothing holds CPUs between batches, so on a small cluster the
reader tasks, the encoder actors and this step cannot starve one another, and on a GPU node the
encoder actors never spend their time on BPE. The compiled vocabulary is cached per worker process
(keyed by its fingerprint), so a process builds it once however many batches it encodes.

Every row keeps its shard, row and kind, so the driver's per-shard count still balances: image rows
lose `codes` and gain tokens / anchors / n_tokens (and input_ids with a layout); a grid that fails
code-grid validation (pipeline.codegrids) becomes a REJECT row of stage "tokenize"; reject and
end-of-shard rows pass through untouched.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import codegrids
from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.vocab import Vocabulary
from pipeline.ingest.stream_rows import ENCODED_SCHEMA, IMAGE, REJECT
from pipeline.tokenize.layout import wrap_images
from schemas.layout import IdLayout

STAGE = "tokenize"
TOKEN_COLUMNS = ("tokens", "anchors", "n_tokens", "input_ids")
TOKEN_STREAM_SCHEMA = pa.schema(
    [f for f in ENCODED_SCHEMA if f.name != "codes"]
    + [pa.field("tokens", pa.list_(pa.int32())), pa.field("anchors", pa.list_(pa.int32())),
       pa.field("n_tokens", pa.int32()), pa.field("input_ids", pa.list_(pa.int32()))]
)

_ENCODERS: dict[str, BpeEncoder] = {}


def _encoder(vocab: list[Any], fingerprint: str) -> BpeEncoder:
    """`vocab` is [ObjectRef of the vocabulary JSON] on Ray (fetched once per process), or [the JSON] itself."""
    enc = _ENCODERS.get(fingerprint)
    if enc is None:
        value = vocab[0]
        if not isinstance(value, dict):
            import ray

            value = ray.get(value)
        enc = BpeEncoder(Vocabulary.from_json(value))
        if enc.vocab.fingerprint() != fingerprint:
            raise RuntimeError(f"vocabulary {enc.vocab.fingerprint()} arrived where {fingerprint} was expected")
        _ENCODERS.clear()  # one vocabulary per run: a long-lived worker must not accumulate them
        _ENCODERS[fingerprint] = enc
    return enc


def _lists(values: np.ndarray, lengths: np.ndarray, valid: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("batch too large for 32-bit list offsets; use a smaller batch_size")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int32()),
                                    mask=pa.array(~valid))


def encode_rows(batch: pa.Table, encoder: BpeEncoder, layout: IdLayout | None) -> pa.Table:
    """One batch of the quantizer's output (ingest.stream_rows.ENCODED_SCHEMA) -> TOKEN_STREAM_SCHEMA rows."""
    n = batch.num_rows
    kinds = batch.column("kind").to_numpy(zero_copy_only=False).astype(np.int8)
    stages = batch.column("stage").to_pylist()
    reasons = batch.column("reason").to_pylist()
    img = np.flatnonzero(kinds == IMAGE)
    images = batch.select(["key", "height", "width", "codes"]).take(pa.array(img, pa.int64()))
    grids = codegrids.validate_table(images, "quantizer output", 0, encoder.vocab.codebook_size)
    for r in grids.rejects:  # Reject.row indexes `images`
        i = int(img[r.row])
        kinds[i], stages[i], reasons[i] = REJECT, STAGE, r.reason
    accepted = img[grids.rows]  # batch rows of the encoded grids, in batch order (as the encoder returns them)
    valid = np.zeros(n, bool)
    valid[accepted] = True
    lengths = np.zeros(n, np.int64)
    tokens = anchors = ids = np.empty(0, np.int32)
    id_lengths = np.zeros(n, np.int64)
    if len(accepted):
        enc = encoder.encode(grids.codes, grids.heights, grids.widths)
        offsets = np.asarray(enc.offsets, np.int64)
        lengths[accepted] = np.diff(offsets)
        tokens, anchors = enc.tokens, enc.anchors
        if layout is not None:
            ids, id_offsets = wrap_images(enc.tokens, offsets, layout)
            id_lengths[accepted] = np.diff(id_offsets)
    cols = {f.name: batch.column(f.name) for f in TOKEN_STREAM_SCHEMA if f.name in batch.column_names}
    cols["kind"] = pa.array(kinds, pa.int8())
    cols["stage"] = pa.array(stages, pa.string())
    cols["reason"] = pa.array(reasons, pa.string())
    cols["tokens"] = _lists(tokens, lengths, valid)
    cols["anchors"] = _lists(anchors, lengths, valid)
    cols["n_tokens"] = pa.array(lengths.astype(np.int32), pa.int32(), mask=~valid)
    cols["input_ids"] = _lists(ids, id_lengths, valid & (layout is not None))
    return pa.table(cols, schema=TOKEN_STREAM_SCHEMA)


def tokenize_stream(batch: pa.Table, vocab: list[Any], fingerprint: str, layout: dict[str, Any] | None) -> pa.Table:
    """Ray Data UDF (map_batches, pyarrow batches); arguments are plain data plus one object ref."""
    return encode_rows(batch, _encoder(vocab, fingerprint), IdLayout.model_validate(layout) if layout else None)
