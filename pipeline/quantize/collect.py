"""Driver side: reassemble each shard's rows from the interleaved stream, and notice when a shard is whole."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ingest.stream_rows import END, IMAGE, REJECT
from pipeline.quantize.spec import QuantizerSpec
from schemas.grids import REJECTS_SCHEMA, code_grid_schema


@dataclass
class ShardResult:
    index: int
    url: str
    grids: pa.Table | None
    rejects: pa.Table | None
    error: str | None
    rows_in: int
    read_seconds: float

    @property
    def rows_written(self) -> int:
        return 0 if self.grids is None else self.grids.num_rows

    @property
    def rows_rejected(self) -> int:
        return 0 if self.rejects is None else self.rejects.num_rows


@dataclass
class _Pending:
    parts: list[pa.Table] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    received: int = 0
    expected: int | None = None
    error: str | None = None
    seconds: float = 0.0


class Collector:
    def __init__(self, urls: dict[int, str], spec: QuantizerSpec):
        self.urls = urls
        self.grid_schema = code_grid_schema(spec.codebook_size, spec.fingerprint, with_caption=True)
        self.pending: dict[int, _Pending] = {i: _Pending() for i in urls}

    def add(self, table: pa.Table) -> list[ShardResult]:
        """Take one encoded block; return the shards it completed."""
        done: list[ShardResult] = []
        shard_col = table.column("shard").to_numpy(zero_copy_only=False)
        kinds = table.column("kind").to_numpy(zero_copy_only=False)
        row_ids = table.column("row").to_numpy(zero_copy_only=False)
        for shard in np.unique(shard_col):
            st = self.pending.get(int(shard))
            if st is None:  # already committed: whatever arrives now is a resend
                continue
            idx = np.flatnonzero(shard_col == shard)
            fresh = []
            for i in idx[kinds[idx] != END]:
                if int(row_ids[i]) not in st.seen:  # a retried read task may resend rows
                    st.seen.add(int(row_ids[i]))
                    fresh.append(i)
            if fresh:
                st.parts.append(table.take(pa.array(fresh, pa.int64())))
                st.received += len(fresh)
            for i in idx[kinds[idx] == END]:
                st.expected = int(table.column("count")[int(i)].as_py())
                st.error = table.column("reason")[int(i)].as_py()
                st.seconds = float(table.column("seconds")[int(i)].as_py())
            if st.expected is not None and st.received == st.expected:
                done.append(self._finish(int(shard)))
        return done

    def unfinished(self) -> list[str]:
        return [self.urls[i] for i in sorted(self.pending)]

    def _finish(self, shard: int) -> ShardResult:
        st = self.pending.pop(shard)
        url = self.urls[shard]
        if st.error is not None:
            return ShardResult(shard, url, None, None, st.error, 0, st.seconds)
        rows = pa.concat_tables(st.parts) if st.parts else None
        return ShardResult(shard, url, self._grids(rows, url), self._rejects(rows, url), None, st.received, st.seconds)

    def _grids(self, rows: pa.Table | None, url: str) -> pa.Table:
        if rows is None:
            return self.grid_schema.empty_table()
        images = rows.filter(pc.equal(rows.column("kind"), IMAGE)).sort_by("row")
        n = images.num_rows
        cols = {
            "key": images.column("key"),
            "height": images.column("height"),
            "width": images.column("width"),
            "codes": images.column("codes"),
            "source": pa.array([url] * n, pa.string()),
            "caption": images.column("caption"),
        }
        return pa.table(cols).cast(self.grid_schema)

    def _rejects(self, rows: pa.Table | None, url: str) -> pa.Table:
        if rows is None:
            return REJECTS_SCHEMA.empty_table()
        rej = rows.filter(pc.equal(rows.column("kind"), REJECT)).sort_by("row")
        return pa.table(
            {
                "key": rej.column("key"),
                "source": pa.array([url] * rej.num_rows, pa.string()),
                "row": rej.column("row"),
                "stage": rej.column("stage"),
                "reason": rej.column("reason"),
            }
        ).cast(REJECTS_SCHEMA)
