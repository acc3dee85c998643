"""Versioned corpus layout: one version per (vocabulary, id layout), and the index of versions.

    OUT/manifest.json                  index of versions (rebuilt from the version manifests)
    OUT/<version>/manifest.json        per input: identity, rows in/written/rejected, output file
    OUT/<version>/manifest.d/          the same entries, one small file each, written as inputs commit
    OUT/<version>/vocab.json           the vocabulary used, copied (the corpus is self-describing)
    OUT/<version>/layout.yaml          the id layout (absent when none was given)
    OUT/<version>/data/*.parquet       one tokenized file per input; nothing else lives here
    OUT/<version>/rejects/*.rejects.parquet   one rejects file per input that had rejects

The version name is derived from the vocabulary and layout fingerprints, so a new vocabulary or
layout never writes into an old version. The manifest itself is the shared one (pipeline/manifest.py).
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from pipeline import storage
from pipeline.manifest import Manifest, now
from pipeline.rejects import rejects_name
from schemas.base import InputError, StorageOptions
from schemas.layout import IdLayout

FORMAT_NAME = "vbpe-tokens"
FORMAT_VERSION = 1
INDEX_FORMAT = "vbpe-tokens-index"


def version_name(vocab_fingerprint: str, layout: IdLayout | None) -> str:
    return f"v{FORMAT_VERSION}-{vocab_fingerprint[:12]}-{layout.fingerprint()[:12] if layout else 'nolayout'}"


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

    def targets(self, url: str) -> tuple[str, str, str, str]:
        """(output path, rejects path, output rel, rejects rel) of one input."""
        name = storage.output_name(url)
        return (storage.join(self.data_dir, name), storage.join(self.rejects_dir, rejects_name(name)),
                f"data/{name}", f"rejects/{rejects_name(name)}")


def open_manifest(paths: VersionPaths, vocab_meta: dict[str, Any], layout: IdLayout | None,
                  options: StorageOptions | None = None) -> Manifest:
    """The version's manifest (checked to really be this version), or a new one."""
    layout_meta = None if layout is None else {"fingerprint": layout.fingerprint(), **layout.model_dump(mode="json")}
    new_layout = layout_meta["fingerprint"] if layout_meta else None

    def same_version(old: dict[str, Any]) -> None:
        if old.get("version") != FORMAT_VERSION:
            raise InputError(f"{paths.manifest} is not a {FORMAT_NAME} v{FORMAT_VERSION} manifest")
        old_vocab = (old.get("vocab") or {}).get("fingerprint")
        old_layout = (old.get("layout") or {}).get("fingerprint")
        if old_vocab != vocab_meta["fingerprint"] or old_layout != new_layout:
            raise InputError(
                f"{paths.root} holds vocabulary {old_vocab} / layout {old_layout}, not {vocab_meta['fingerprint']} / "
                f"{new_layout}: refusing to mix versions"
            )

    meta = {"version": FORMAT_VERSION, "name": paths.name, "vocab": vocab_meta, "layout": layout_meta}
    return Manifest.open(paths.root, FORMAT_NAME, meta, options, check=same_version)


def update_index(out: str, options: StorageOptions | None = None) -> dict[str, Any]:
    """Rebuild OUT/manifest.json from every version manifest under OUT (safe to rerun at any time)."""
    fs, p = storage.get_fs(out, options)
    proto = out.split("://", 1)[0] + "://" if storage.is_remote(out) else ""
    versions = {}
    for hit in sorted(fs.glob(posixpath.join(p.rstrip("/"), "*", "manifest.json"))):
        path = proto + hit if proto and not hit.startswith(proto) else hit
        try:
            m = json.loads(storage.read_text(path, options))
        except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError):
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
