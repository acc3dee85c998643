"""Rows flowing through the Ray Data pipeline: one per sample, plus one end-of-shard marker per shard.

A shard's rows may reach the driver in any order and interleaved with other shards; the marker
carries how many rows the shard produced so the driver knows when it has them all.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

IMAGE, REJECT, END = 0, 1, 2

STREAM_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.int32()),
        pa.field("row", pa.int64()),
        pa.field("kind", pa.int8()),
        pa.field("key", pa.string()),
        pa.field("pixels", pa.binary()),
        pa.field("caption", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("seconds", pa.float64()),
    ]
)
ENCODED_SCHEMA = pa.schema(
    [f for f in STREAM_SCHEMA if f.name != "pixels"]
    + [pa.field("height", pa.int32()), pa.field("width", pa.int32()), pa.field("codes", pa.list_(pa.int32()))]
)


class BlockBuilder:
    """Collects rows column-wise and hands out Arrow tables of a bounded size."""

    def __init__(self, max_rows: int, max_bytes: int = 64 << 20):
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._reset()

    def _reset(self) -> None:
        self._cols: dict[str, list[Any]] = {f.name: [] for f in STREAM_SCHEMA}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._cols["row"])

    def add(self, **row: Any) -> None:
        for name, col in self._cols.items():
            col.append(row.get(name))
        self._bytes += len(row.get("pixels") or b"")

    @property
    def full(self) -> bool:
        return len(self) >= self.max_rows or self._bytes >= self.max_bytes

    def take(self) -> pa.Table:
        table = pa.Table.from_pydict(self._cols, schema=STREAM_SCHEMA)
        self._reset()
        return table
