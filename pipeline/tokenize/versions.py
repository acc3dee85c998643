"""Versioned corpus layout and manifests: what each (vocabulary, layout) version contains.

    OUT/manifest.json                  index of versions (rebuilt from the version manifests)
    OUT/<version>/manifest.json        per input: identity, rows in/written/rejected, output file
    OUT/<version>/vocab.json           the vocabulary used, copied (the corpus is self-describing)
    OUT/<version>/layout.yaml          the id layout (absent when none was given)
    OUT/<version>/data/*.parquet       one tokenized file per input; nothing else lives here
    OUT/<version>/rejects/*.rejects.parquet   one rejects file per input that had rejects

The version name is derived from the vocabulary and layout fingerprints, so a new vocabulary or
layout never writes into an old version. An input counts as done only when its manifest entry
says so, its identity (size + modification stamp) is unchanged and its output exists: files are
written first, the manifest entry last.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from pipeline import storage
from schemas.base import InputError, StorageOptions
from schemas.grids import REJECTS_SUFFIX
from schemas.layout import IdLayout

FORMAT_NAME = "vbpe-tokens"
FORMAT_VERSION = 1
INDEX_FORMAT = "vbpe-tokens-index"
INPUT_SUFFIXES = (".parquet", ".tar", ".tar.gz", ".tgz")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def version_name(vocab_fingerprint: str, layout: IdLayout | None) -> str:
    return f"v{FORMAT_VERSION}-{vocab_fingerprint[:12]}-{layout.fingerprint()[:12] if layout else 'nolayout'}"


def canonical_url(path: str) -> str:
    return path if storage.is_remote(path) else os.path.abspath(path)


def output_name(url: str) -> str:
    """Readable and collision-free across directories: the input's stem plus a hash of its URL."""
    base = posixpath.basename(url.rstrip("/"))
    for suffix in INPUT_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._") or "input"
    return f"{base}-{hashlib.sha1(url.encode()).hexdigest()[:8]}.parquet"


def rejects_name(output: str) -> str:
    """`x.parquet` -> `x.rejects.parquet`: the suffix every stage's readers skip (schemas.grids.REJECTS_SUFFIX)."""
    return output[: -len(".parquet")] + REJECTS_SUFFIX


def input_identity(url: str, options: StorageOptions | None = None) -> dict[str, Any]:
    """Size plus the store's modification stamp (ETag on S3, mtime locally): a rewritten input is redone."""
    fs, p = storage.get_fs(url, options)
    info = fs.info(p)
    stamp = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    return {"size": int(info.get("size") or 0), "stamp": str(stamp).strip('"') if stamp is not None else None}


@dataclass(frozen=True)
class VersionPaths:
    out: str
    name: str

    @property
    def root(self) -> str:
        return storage.join(self.out, self.name)

    @property
    def data_dir(self) -> str:
        return storage.join(self.root, "data")

    @property
    def rejects_dir(self) -> str:
        return storage.join(self.root, "rejects")

    @property
    def manifest(self) -> str:
        return storage.join(self.root, "manifest.json")

    @property
    def vocab(self) -> str:
        return storage.join(self.root, "vocab.json")

    @property
    def layout(self) -> str:
        return storage.join(self.root, "layout.yaml")

    def path(self, rel: str) -> str:
        return storage.join(self.root, *rel.split("/"))


class Manifest:
    """One version's manifest; only the driver writes it, after each input's files are in place."""

    def __init__(self, paths: VersionPaths, data: dict[str, Any]):
        self.paths = paths
        self.data = data
        self._touched: set[str] = set()  # inputs this run recorded: its entries win over what is on disk

    @classmethod
    def open(cls, paths: VersionPaths, vocab_meta: dict[str, Any], layout: IdLayout | None,
             options: StorageOptions | None = None) -> "Manifest":
        """The existing manifest of this version (checked to really be it), or a new one."""
        layout_meta = None if layout is None else {"fingerprint": layout.fingerprint(), **layout.model_dump(mode="json")}
        if storage.exists(paths.manifest, options):
            try:
                data = json.loads(storage.read_text(paths.manifest, options))
            except json.JSONDecodeError as err:
                raise InputError(f"{paths.manifest} is not valid JSON ({err}); move it away to rebuild this version") from None
            if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
                raise InputError(f"{paths.manifest} is not a {FORMAT_NAME} v{FORMAT_VERSION} manifest")
            old_vocab = data.get("vocab", {}).get("fingerprint")
            old_layout = (data.get("layout") or {}).get("fingerprint")
            new_layout = layout_meta["fingerprint"] if layout_meta else None
            if old_vocab != vocab_meta["fingerprint"] or old_layout != new_layout:
                raise InputError(
                    f"{paths.root} holds vocabulary {old_vocab} / layout {old_layout}, not {vocab_meta['fingerprint']} / "
                    f"{new_layout}: refusing to mix versions"
                )
            return cls(paths, data)
        data = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": paths.name,
            "created": now(),
            "updated": now(),
            "vocab": vocab_meta,
            "layout": layout_meta,
            "inputs": {},
        }
        return cls(paths, data)

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        return self.data["inputs"]

    def is_done(self, url: str, identity: dict[str, Any], options: StorageOptions | None = None) -> bool:
        e = self.inputs.get(url)
        if not e or e.get("status") != "done" or e.get("identity") != identity:
            return False
        return storage.exists(self.paths.path(e["output"]), options)

    def record(self, url: str, **entry: Any) -> None:
        self.inputs[url] = {**entry, "recorded": now()}
        self._touched.add(url)

    def totals(self) -> dict[str, int]:
        done = [e for e in self.inputs.values() if e.get("status") == "done"]
        keys = ("rows_in", "rows_written", "rows_rejected", "tokens", "cells")
        out = {k: sum(int(e.get(k, 0)) for e in done) for k in keys}
        out["inputs_done"] = len(done)
        out["inputs_failed"] = sum(1 for e in self.inputs.values() if e.get("status") == "failed")
        return out

    def save(self, options: StorageOptions | None = None) -> None:
        """Entries another run recorded meanwhile (same version, e.g. a schedule overlapping a manual run) are kept."""
        if storage.exists(self.paths.manifest, options):
            try:
                on_disk = json.loads(storage.read_text(self.paths.manifest, options)).get("inputs", {})
            except (json.JSONDecodeError, OSError):
                on_disk = {}
            for url, entry in on_disk.items():
                mine = self.inputs.get(url)
                if mine is None or (entry.get("recorded", "") > mine.get("recorded", "") and url not in self._touched):
                    self.inputs[url] = entry
        self.data["updated"] = now()
        self.data["totals"] = self.totals()
        storage.write_text(self.paths.manifest, json.dumps(self.data, indent=1, sort_keys=False) + "\n", options)


def update_index(out: str, options: StorageOptions | None = None) -> dict[str, Any]:
    """Rebuild OUT/manifest.json from every version manifest under OUT (safe to rerun at any time)."""
    fs, p = storage.get_fs(out, options)
    proto = out.split("://", 1)[0] + "://" if storage.is_remote(out) else ""
    versions = {}
    for hit in sorted(fs.glob(posixpath.join(p.rstrip("/"), "*", "manifest.json"))):
        path = proto + hit if proto and not hit.startswith(proto) else hit
        try:
            m = json.loads(storage.read_text(path, options))
        except (json.JSONDecodeError, OSError):
            continue
        if m.get("format") != FORMAT_NAME:
            continue
        versions[m["name"]] = {
            "path": m["name"],
            "vocab_fingerprint": m["vocab"]["fingerprint"],
            "layout_fingerprint": (m.get("layout") or {}).get("fingerprint"),
            "created": m.get("created"),
            "updated": m.get("updated"),
            "totals": m.get("totals", {}),
        }
    index = {"format": INDEX_FORMAT, "updated": now(), "versions": versions}
    storage.write_text(storage.join(out, "manifest.json"), json.dumps(index, indent=1) + "\n", options)
    return index
