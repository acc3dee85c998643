"""Where a quantize run writes: one grids file (and rejects file) per input shard, plus the manifest.

    OUT/grids/<shard>-<hash>.parquet            code grids of one shard
    OUT/rejects/<shard>-<hash>.rejects.parquet  its rejected samples (absent when none)
    OUT/manifest.json, OUT/manifest.d/          per shard: identity, status, counts, output (pipeline/manifest.py)

A shard's files are complete before its manifest entry says `done`, and their names depend only on
the shard URL, so a re-run overwrites rather than duplicates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline import storage
from pipeline.manifest import Manifest
from pipeline.quantize.collect import ShardResult
from pipeline.rejects import rejects_name, write_rejects
from schemas.base import InputError, StorageOptions

MANIFEST_FORMAT = "vbpe.quantize.manifest.v1"
STAGE = "quantize"


@dataclass(frozen=True)
class OutputDirs:
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
        return f"grids/{storage.output_name(url)}"

    def rejects_rel(self, url: str) -> str:
        return f"rejects/{rejects_name(storage.output_name(url))}"

    def path(self, rel: str) -> str:
        return storage.join(self.out, *rel.split("/"))


def open_manifest(dirs: OutputDirs, quantizer: dict[str, Any], options: StorageOptions | None) -> Manifest:
    """The output's manifest; refuses to mix grids of two quantizers in one directory."""

    def same_quantizer(old: dict[str, Any]) -> None:
        before = (old.get("quantizer") or {}).get("fingerprint")
        done = [u for u, e in (old.get("inputs") or old.get("shards") or {}).items() if e.get("status") == "done"]
        if before and done and before != quantizer["fingerprint"]:
            raise InputError(
                f"{dirs.out} holds grids from quantizer {before} ({len(done)} shards); this run uses "
                f"{quantizer['fingerprint']}. Use a new --out (codes from different quantizers cannot be mixed)."
            )

    return Manifest.open(dirs.out, MANIFEST_FORMAT, {"quantizer": quantizer}, options, check=same_quantizer)


def write_shard(res: ShardResult, dirs: OutputDirs, options: StorageOptions | None) -> None:
    """A finished shard's grids and rejects, each whole or absent."""
    rejects = dirs.path(dirs.rejects_rel(res.url))
    if res.rows_rejected:
        write_rejects(rejects, res.rejects, STAGE, options)
    else:
        storage.remove(rejects, options)  # left by an earlier attempt on an older copy of this shard
    storage.write_parquet(res.grids, dirs.path(dirs.grids_rel(res.url)), options)
