"""The Ray Data actor: holds one quantizer (on its GPU, or CPU) and encodes the image rows of each batch.

Reject and end-of-shard rows pass through untouched so the driver sees every row exactly once.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.ingest.stream_rows import ENCODED_SCHEMA, IMAGE
from pipeline.quantize.spec import ImageEncoder, QuantizerSpec

log = logging.getLogger(__name__)


def encode_table(batch: pa.Table, encoder: ImageEncoder, spec: QuantizerSpec) -> pa.Table:
    kinds = batch.column("kind").to_numpy(zero_copy_only=False)
    img = np.flatnonzero(kinds == IMAGE)
    n = batch.num_rows
    h, w = spec.grid
    offsets = np.zeros(n + 1, dtype=np.int32)
    values = np.empty(0, dtype=np.int32)
    if len(img):
        s = spec.image.size
        raw = batch.column("pixels").take(pa.array(img)).to_pylist()
        images = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(img), s, s, 3)
        codes = encoder.encode(images)
        if codes.shape != (len(img), h, w):
            raise RuntimeError(f"{spec.kind} encoder returned {codes.shape}, expected {(len(img), h, w)}")
        if codes.min() < 0 or codes.max() >= spec.codebook_size:
            raise RuntimeError(f"{spec.kind} encoder returned codes outside [0, {spec.codebook_size})")
        values = np.ascontiguousarray(codes, dtype=np.int32).reshape(-1)
        lengths = np.zeros(n, dtype=np.int32)
        lengths[img] = h * w
        offsets[1:] = np.cumsum(lengths)
    is_img = kinds == IMAGE
    mask = ~is_img
    codes_col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()), mask=pa.array(mask))
    cols = {f.name: batch.column(f.name) for f in ENCODED_SCHEMA if f.name in batch.column_names}
    cols["height"] = pa.array(np.where(is_img, h, 0).astype(np.int32), mask=mask)
    cols["width"] = pa.array(np.where(is_img, w, 0).astype(np.int32), mask=mask)
    cols["codes"] = codes_col
    return pa.table(cols, schema=ENCODED_SCHEMA)


class EncodeActor:
    """Built once per actor: weights come from the object store, not from the user's paths."""

    def __init__(self, spec: QuantizerSpec, tensors: list[Any], num_gpus: float, precision: str, torch_threads: int | None):
        import ray
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        weights = ray.get(tensors[0]) if isinstance(tensors[0], ray.ObjectRef) else tensors[0]
        device = "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
        from pipeline.quantize.registry import build_encoder

        self.spec = spec
        self.encoder = build_encoder(spec, weights, device, precision)
        log.info("%s on %s (%s threads)", spec.describe(), device, torch.get_num_threads())

    def __call__(self, batch: pa.Table) -> pa.Table:
        return encode_table(batch, self.encoder, self.spec)
