"""Rejected records: one type and one writer for every stage.

A record that cannot be used is never dropped: it becomes a `Reject` (its key, where it came
from, why) and lands in a `*.rejects.parquet` file (schemas.grids.REJECTS_SCHEMA) beside the
stage's output; input expansion skips that suffix, so rejects are never read as data.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa

from pipeline import storage
from schemas.base import StorageOptions
from schemas.grids import REJECTS_SCHEMA, REJECTS_SUFFIX


@dataclass
class Reject:
    key: str | None
    source: str  # the file (or shard) the record came from
    row: int  # its index there, -1 when unknown
    reason: str  # "category: detail"
    stage: str | None = None  # which step refused it; the writer's stage when None


def rejects_table(rejects: Iterable[Reject], stage: str) -> pa.Table:
    rejects = list(rejects)
    return pa.table(
        {
            "key": [r.key for r in rejects],
            "source": [r.source for r in rejects],
            "row": [int(r.row) for r in rejects],
            "stage": [r.stage or stage for r in rejects],
            "reason": [r.reason for r in rejects],
        },
        schema=REJECTS_SCHEMA,
    )


def rejects_name(output: str) -> str:
    """`x.parquet` (or `x.json`, `x`) -> `x.rejects.parquet`: the suffix every reader skips."""
    for suffix in (".parquet", ".json"):
        if output.endswith(suffix):
            return output[: -len(suffix)] + REJECTS_SUFFIX
    return output + REJECTS_SUFFIX


def write_rejects(path: str, rejects: Iterable[Reject] | pa.Table, stage: str,
                  options: StorageOptions | None = None) -> None:
    """The rejects file, whole or not at all (even when empty: it says "this run rejected nothing")."""
    table = rejects if isinstance(rejects, pa.Table) else rejects_table(rejects, stage)
    storage.write_parquet(table.cast(REJECTS_SCHEMA), path, options)


def reason_kind(reason: str) -> str:
    """The reason's category with numbers as N, so reasons group: `code 9000 outside [0, 8192)` -> `code N outside [N, N)`."""
    return re.sub(r"-?\d+", "N", reason.split(":", 1)[0])


def count_reasons(reasons: Iterable[str]) -> dict[str, int]:
    return dict(Counter(reason_kind(r) for r in reasons).most_common())
