"""Where a quantize run writes: one grids file (and rejects file) per input shard, plus a manifest.

A shard's files are complete before its manifest entry says `done` (local: write then rename;
S3: an object appears only when its upload completes), and their names depend only on the
shard URL, so a re-run overwrites rather than duplicates.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.quantize.collect import ShardResult
from schemas.base import InputError, StorageOptions
from schemas.grids import REJECTS_SUFFIX

MANIFEST_FORMAT = "vbpe.quantize.manifest.v1"
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def shard_name(url: str) -> str:
    """Readable and collision-free: the shard's file stem plus a hash of its full URL."""
    base = posixpath.basename(url.rstrip("/"))
    for suffix in SHARD_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "shard"
    return f"{base}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def canonical_url(path: str) -> str:
    return path if storage.is_remote(path) else os.path.abspath(path)


def write_parquet(table: pa.Table, path: str, options: StorageOptions | None = None) -> None:
    if storage.is_remote(path):
        with storage.open_file(path, "wb", options) as f:
            pq.write_table(table, f, compression="zstd")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def remove_stale_temps(directory: str) -> int:
    """Temp files left by a killed run (local only: S3 uploads are invisible until complete)."""
    if storage.is_remote(directory) or not os.path.isdir(directory):
        return 0
    stale = [n for n in os.listdir(directory) if n.startswith(".") and ".tmp-" in n]
    for name in stale:
        os.remove(os.path.join(directory, name))
    return len(stale)


@dataclass
class Layout:
    out: str

    @property
    def grids_dir(self) -> str:
        return storage.join(self.out, "grids")

    @property
    def rejects_dir(self) -> str:
        return storage.join(self.out, "rejects")

    @property
    def manifest(self) -> str:
        return storage.join(self.out, "manifest.json")

    def grids_rel(self, url: str) -> str:
        return f"grids/{shard_name(url)}.parquet"

    def rejects_rel(self, url: str) -> str:
        return f"rejects/{shard_name(url)}{REJECTS_SUFFIX}"

    def path(self, rel: str) -> str:
        return storage.join(self.out, *rel.split("/"))


@dataclass
class Manifest:
    """Per input shard: status (done | failed), where its rows went, counts, time, error."""

    quantizer: dict[str, Any] = field(default_factory=dict)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, layout: Layout, options: StorageOptions | None = None) -> "Manifest":
        if not storage.exists(layout.manifest, options):
            return cls()
        try:
            doc = json.loads(storage.read_text(layout.manifest, options))
        except ValueError as err:
            raise InputError(f"{layout.manifest}: unreadable manifest ({err}); move it away to start over") from None
        if doc.get("format") != MANIFEST_FORMAT:
            raise InputError(f"{layout.manifest}: not a vbpe quantize manifest")
        return cls(doc.get("quantizer", {}), doc.get("shards", {}))

    def save(self, layout: Layout, options: StorageOptions | None = None) -> None:
        doc = {"format": MANIFEST_FORMAT, "quantizer": self.quantizer, "shards": dict(sorted(self.shards.items()))}
        storage.write_text(layout.manifest, json.dumps(doc, indent=1) + "\n", options)

    def bind_quantizer(self, info: dict[str, Any], out: str) -> None:
        """Refuse to mix grids from two quantizers in one output directory."""
        old = self.quantizer.get("fingerprint")
        done = [u for u, e in self.shards.items() if e.get("status") == "done"]
        if old and done and old != info["fingerprint"]:
            raise InputError(
                f"{out} holds grids from quantizer {old} ({len(done)} shards); this run uses {info['fingerprint']}. "
                "Use a new --out (codes from different quantizers cannot be mixed)."
            )
        self.quantizer = info

    def is_done(self, url: str, layout: Layout, options: StorageOptions | None = None) -> bool:
        entry = self.shards.get(url)
        return bool(entry and entry.get("status") == "done" and storage.exists(layout.path(entry["output"]), options))

    def record(self, url: str, **entry: Any) -> None:
        entry["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.shards[url] = entry

    def totals(self, urls: list[str]) -> dict[str, int]:
        t = {"done": 0, "failed": 0, "rows_in": 0, "rows_written": 0, "rows_rejected": 0}
        for url in urls:
            e = self.shards.get(url)
            if not e:
                continue
            t[e["status"]] = t.get(e["status"], 0) + 1
            if e["status"] == "done":
                for k in ("rows_in", "rows_written", "rows_rejected"):
                    t[k] += int(e.get(k, 0))
        return t


def commit_shard(res: ShardResult, layout: Layout, manifest: Manifest, options: StorageOptions | None, started: float) -> None:
    """Files first, manifest entry last: an entry saying `done` always points at complete files."""
    url = res.url
    common = {"read_seconds": round(res.read_seconds, 3), "elapsed_seconds": round(time.perf_counter() - started, 3)}
    if res.error is not None:
        manifest.record(url, status="failed", error=res.error, **common)
    else:
        rejects_rel = layout.rejects_rel(url)
        if res.rows_rejected:
            write_parquet(res.rejects, layout.path(rejects_rel), options)
        elif storage.exists(layout.path(rejects_rel), options):
            fs, p = storage.get_fs(layout.path(rejects_rel), options)
            fs.rm(p)
        write_parquet(res.grids, layout.path(layout.grids_rel(url)), options)
        manifest.record(url, status="done", output=layout.grids_rel(url), rejects=rejects_rel if res.rows_rejected else None,
                        rows_in=res.rows_in, rows_written=res.rows_written, rows_rejected=res.rows_rejected, error=None, **common)
    manifest.save(layout, options)
