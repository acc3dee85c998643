"""One shard -> stream rows (images, rejects, end marker). Runs as a Ray Data task; never raises.

Bad samples become REJECT rows; a shard that cannot be read becomes an END row with status
failed, and the driver then drops whatever rows of that shard it already received.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.ingest.images import BadImage, ImageLimits, decode_rgb
from pipeline.ingest.preprocess import ImageSpec, resize_crop
from pipeline.ingest.stream_rows import END, IMAGE, REJECT, BlockBuilder
from pipeline.ingest.tarshards import Sample, TarDamage, iter_samples
from pipeline.rejects import Reject
from schemas.base import StorageOptions
from schemas.quantize import IngestOptions


@dataclass
class Decoded:
    key: str
    pixels: np.ndarray
    caption: str | None


def caption_of(sample: Sample, exts: list[str]) -> str | None:
    for ext in exts:
        raw = sample.members.get(ext)
        if raw is None:
            continue
        text = raw.decode("utf-8", errors="replace")
        if ext != "json":
            return text.strip()
        try:
            obj = json.loads(text)
        except ValueError:
            return text.strip()
        if isinstance(obj, str):
            return obj
        if isinstance(obj, dict):
            for field in ("caption", "text", "txt"):
                if isinstance(obj.get(field), str):
                    return obj[field]
        return text.strip()
    return None


def _reject(key: str | None, stage: str, reason: str, source: str = "") -> Reject:
    return Reject(key, source, -1, reason, stage)


def decode_sample(sample: Sample, spec: ImageSpec, opts: IngestOptions, limits: ImageLimits) -> Decoded | Reject:
    """A decoded image, or the sample's Reject (source and row are filled in by the caller)."""
    ext = next((e for e in opts.image_extensions if e in sample.members), None)
    if ext is None:
        big = next((e for e in opts.image_extensions if e in sample.oversize), None)
        if big is not None:
            return _reject(sample.key, "ingest", f"member too large: {big} is {sample.oversize[big]} bytes > limit {opts.max_member_bytes}")
        special = next((e for e in opts.image_extensions if e in sample.not_regular), None)
        if special is not None or (sample.not_regular and not sample.members):
            special = special if special is not None else next(iter(sample.not_regular))
            name = f"{sample.key}.{special}" if special else sample.key
            return _reject(sample.key, "ingest", f"not a regular file: {name} is a {sample.not_regular[special]}")
        fields = ", ".join(sorted(sample.members)) or "none"
        return _reject(sample.key, "ingest", f"no image member: fields {fields}")
    try:
        im = decode_rgb(sample.members[ext], limits, shortest_side=spec.size)
    except BadImage as err:
        return _reject(sample.key, "decode", str(err))
    try:
        pixels = resize_crop(im, spec)
    except Exception as err:
        return _reject(sample.key, "preprocess", f"preprocess failed: {type(err).__name__}: {err}")
    return Decoded(sample.key, pixels, caption_of(sample, opts.caption_extensions))


def iter_shard(url: str, spec: ImageSpec, opts: IngestOptions, options: StorageOptions | None = None) -> Iterator[Decoded | Reject]:
    """Every sample of one shard, decoded or rejected, in tar order (row = position). Raises only if the shard is unreadable."""
    limits = ImageLimits(opts.max_pixels, opts.min_side, opts.max_aspect)
    seen: set[str] = set()
    fs, path = storage.get_fs(url, options)
    with fs.open(path, "rb") as f:
        for row, item in enumerate(iter_samples(f, opts.max_member_bytes)):
            if isinstance(item, TarDamage):
                out: Decoded | Reject = _reject(item.key, "ingest", item.reason)
            elif item.key in seen:
                out = _reject(item.key, "ingest", "duplicate key in shard")
            else:
                seen.add(item.key)
                out = decode_sample(item, spec, opts, limits)
            if isinstance(out, Reject):
                out.source, out.row = url, row
            yield out


def read_shard(shard: int, url: str, spec: ImageSpec, opts: IngestOptions, options: StorageOptions | None = None) -> Iterator[pa.Table]:
    start = time.perf_counter()
    block = BlockBuilder(opts.rows_per_block)
    emitted = 0
    error = None
    try:
        for row, item in enumerate(iter_shard(url, spec, opts, options)):
            if isinstance(item, Decoded):
                block.add(shard=shard, row=row, kind=IMAGE, key=item.key, pixels=item.pixels.tobytes(), caption=item.caption)
            else:
                block.add(shard=shard, row=row, kind=REJECT, key=item.key, stage=item.stage, reason=item.reason)
            emitted += 1
            if block.full:
                yield block.take()
    except Exception as err:  # the whole shard fails; other shards go on
        error = f"{type(err).__name__}: {err}"
    block.add(shard=shard, row=-1, kind=END, key=url, reason=error, count=emitted, seconds=time.perf_counter() - start)
    yield block.take()


def read_shards(batch: pa.Table, spec: ImageSpec, opts: IngestOptions, options: StorageOptions | None) -> Iterator[pa.Table]:
    """Ray Data UDF: a batch of (shard, url) rows -> stream blocks."""
    for shard, url in zip(batch.column("shard").to_pylist(), batch.column("url").to_pylist()):
        yield from read_shard(shard, url, spec, opts, options)
