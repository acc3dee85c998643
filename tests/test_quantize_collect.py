"""The driver's reassembly of shards from an interleaved, possibly repeated stream of rows."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.ingest.preprocess import ImageSpec
from pipeline.ingest.stream_rows import END, IMAGE, REJECT, STREAM_SCHEMA
from pipeline.quantize.actor import encode_table
from pipeline.quantize.collect import Collector
from pipeline.quantize.spec import QuantizerSpec

SPEC = QuantizerSpec("kmeans", "f" * 16, 16, ImageSpec(8), (2, 2))


class FakeEncoder:
    """Codes derived from the pixels, so the test can tell rows apart."""

    def encode(self, images: np.ndarray) -> np.ndarray:
        return (images[:, ::4, ::4, 0] % 16).astype(np.int32)


def block(rows: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in STREAM_SCHEMA}
    return encode_table(pa.Table.from_pydict(cols, schema=STREAM_SCHEMA), FakeEncoder(), SPEC)


def img(shard: int, row: int, value: int) -> dict:
    return {"shard": shard, "row": row, "kind": IMAGE, "key": f"k{shard}-{row}", "pixels": bytes([value]) * 8 * 8 * 3}


def end(shard: int, count: int, error: str | None = None) -> dict:
    return {"shard": shard, "row": -1, "kind": END, "key": "u", "count": count, "reason": error, "seconds": 0.5}


def test_shards_complete_only_when_every_row_arrived_in_any_order():
    c = Collector({0: "a.tar", 1: "b.tar"}, SPEC)
    assert c.add(block([img(0, 1, 3), end(0, 3), img(1, 0, 5)])) == []
    rej = {"shard": 0, "row": 2, "kind": REJECT, "key": "bad", "stage": "decode", "reason": "corrupt image: x"}
    (res,) = c.add(block([img(0, 0, 7), rej, img(0, 1, 3)]))  # row 1 of shard 0 resent: counted once
    assert res.url == "a.tar" and res.rows_in == 3 and res.rows_written == 2 and res.rows_rejected == 1
    assert res.grids.column("key").to_pylist() == ["k0-0", "k0-1"]  # sorted by sample index
    assert res.grids.column("codes").to_pylist() == [[7] * 4, [3] * 4]
    assert res.rejects.to_pylist()[0] == {"key": "bad", "source": "a.tar", "row": 2, "stage": "decode", "reason": "corrupt image: x"}
    assert c.unfinished() == ["b.tar"]
    (res,) = c.add(block([end(1, 1)]))
    assert res.rows_written == 1 and c.unfinished() == []
    assert c.add(block([img(1, 0, 5)])) == []  # late resend after commit is ignored


def test_failed_shard_drops_its_rows():
    c = Collector({0: "a.tar"}, SPEC)
    c.add(block([img(0, 0, 1)]))
    (res,) = c.add(block([end(0, 1, "OSError: connection reset")]))
    assert res.error == "OSError: connection reset" and res.grids is None and res.rows_written == 0
