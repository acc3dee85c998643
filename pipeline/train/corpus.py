"""Image key -> the image's LLM ids ([begin_image] + code_offset + tokens + [end_image]) from the tokenized corpus."""
from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.configargs import load_config
from schemas.base import InputError, StorageOptions
from schemas.layout import IdLayout
from schemas.tokens import LAYOUT_FINGERPRINT_KEY

log = logging.getLogger(__name__)


def corpus_key(image: str, rule: str) -> str:
    """How a record's `image` names a corpus row (see DataConfig.image_key)."""
    if rule == "exact":
        return image
    name = image.rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(name)[0] if rule == "stem" else name


def _check_layout(path: str, metadata: dict | None, layout: IdLayout, options: StorageOptions | None) -> None:
    """A corpus tokenized for another layout would feed the model the wrong rows: refuse it."""
    want = layout.fingerprint()
    got = (metadata or {}).get(LAYOUT_FINGERPRINT_KEY)
    if got is not None and got.decode() != want:
        raise InputError(f"{path} was tokenized with layout {got.decode()}, the model's layout is {want}")
    side = storage.join(path.rsplit("/", 1)[0], "layout.yaml")
    if got is None and storage.exists(side, options):
        other = load_config(IdLayout, side, options)
        if other.fingerprint() != want:
            raise InputError(f"{side} (layout {other.fingerprint()}) differs from the model's layout ({want})")


def _ids_column(table: pa.Table, layout: IdLayout) -> list[np.ndarray]:
    if "input_ids" in table.column_names:
        col = table.column("input_ids").combine_chunks()
        values, offsets = col.values.to_numpy(zero_copy_only=False), col.offsets.to_numpy()
        return [values[offsets[i] : offsets[i + 1]].astype(np.int32) for i in range(len(col))]
    col = table.column("tokens").combine_chunks()
    values, offsets = col.values.to_numpy(zero_copy_only=False), col.offsets.to_numpy()
    head, tail = np.int32(layout.begin_image_id), np.int32(layout.end_image_id)
    return [
        np.concatenate([[head], values[offsets[i] : offsets[i + 1]].astype(np.int64) + layout.code_offset, [tail]]).astype(np.int32)
        for i in range(len(col))
    ]


def image_table(paths: list[str], keys: set[str], layout: IdLayout,
                options: StorageOptions | None = None) -> tuple[pa.Table, dict[str, int]]:
    """(key, input_ids) of every corpus row whose key is wanted, files in sorted order (a key seen twice
    appears twice; its first row is the one used), and counts of what was read."""
    parts = []
    stats = {"corpus_files": 0, "corpus_rows": 0, "duplicate_keys": 0}
    wanted = pa.array(sorted(keys), pa.string())
    for path in storage.expand(paths, (".parquet",), options):
        with storage.open_file(path, options=options) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            _check_layout(path, pf.schema_arrow.metadata, layout, options)
            if "key" not in names or not ({"input_ids", "tokens"} & set(names)):
                raise InputError(f"{path}: not a tokenized corpus (needs `key` and `input_ids` or `tokens`)")
            column = "input_ids" if "input_ids" in names else "tokens"
            table = pf.read(columns=["key", column])
        stats["corpus_files"] += 1
        stats["corpus_rows"] += table.num_rows
        hit = table.filter(pc.is_in(table.column("key"), value_set=wanted))
        ids = _ids_column(hit, layout)
        parts.append(pa.table({"key": hit.column("key").cast(pa.string()),
                               "input_ids": pa.array([a.tolist() for a in ids], pa.list_(pa.int32()))}))
    out = pa.concat_tables(parts) if parts else pa.table({"key": pa.array([], pa.string()),
                                                           "input_ids": pa.array([], pa.list_(pa.int32()))})
    stats["duplicate_keys"] = out.num_rows - len(set(out.column("key").to_pylist()))
    log.info("corpus: %d of %d wanted images found in %d files", out.num_rows - stats["duplicate_keys"], len(keys), stats["corpus_files"])
    return out, stats


def load_images(paths: list[str], keys: set[str], layout: IdLayout,
                options: StorageOptions | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The LLM ids of every wanted key (its first occurrence), as a dict."""
    table, stats = image_table(paths, keys, layout, options)
    found: dict[str, np.ndarray] = {}
    for key, ids in zip(table.column("key").to_pylist(), table.column("input_ids").to_pylist()):
        found.setdefault(key, np.asarray(ids, np.int32))
    return found, stats


def check_ids(ids: np.ndarray, layout: IdLayout) -> str | None:
    """Why an image's ids cannot be used with this layout, or None."""
    if len(ids) < 3:
        return "image has no tokens"
    if ids[0] != layout.begin_image_id or ids[-1] != layout.end_image_id:
        return "image ids not wrapped: expected the layout's begin/end-of-image ids"
    body = ids[1:-1]
    if body.min() < layout.code_offset or body.max() >= layout.total_size:
        return f"image ids outside the visual range: [{layout.code_offset}, {layout.total_size})"
    return None
