"""What an incremental stage (quantize, tokenize) made of each input, committed input by input.

    <root>/manifest.json               the whole record: the stage's metadata, every input's entry, totals
    <root>/manifest.d/<input>.json     one entry per input, written the moment that input commits

An entry (keyed by the input's canonical URL): `status` (done | failed), `identity` (size + ETag or
mtime of the input as it was read), `output` and `rejects` (relative to the root), counts, `seconds`,
`error`, `recorded` (UTC). A stage writes an input's files first and its entry last, so an entry
saying `done` always points at complete files; an input counts as done only while its identity is
unchanged and its output exists (a rewritten input is redone). A run killed after committing k
inputs leaves k entry files, and the next run skips exactly those. `manifest.json` is rewritten at
the start and end of every run from the entry files (the newest `recorded` wins), so two runs of
the same root at once keep each other's entries.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Callable

from pipeline import storage
from schemas.base import InputError, StorageOptions

log = logging.getLogger(__name__)

ENTRIES_DIR = "manifest.d"
COUNTS = ("rows_in", "rows_written", "rows_rejected")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Manifest:
    """One root's manifest. Only the driver of a run writes it."""

    def __init__(self, root: str, fmt: str, meta: dict[str, Any], options: StorageOptions | None = None,
                 data: dict[str, Any] | None = None):
        self.root = root
        self.format = fmt
        self.options = options
        self.data = data or {"format": fmt, **meta, "created": now(), "updated": now(), "inputs": {}}

    @property
    def path(self) -> str:
        return storage.join(self.root, "manifest.json")

    @property
    def entries_dir(self) -> str:
        return storage.join(self.root, ENTRIES_DIR)

    def entry_path(self, url: str) -> str:
        return storage.join(self.entries_dir, storage.output_name(url, ".json"))

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        return self.data["inputs"]

    @classmethod
    def open(cls, root: str, fmt: str, meta: dict[str, Any], options: StorageOptions | None = None,
             check: Callable[[dict[str, Any]], None] | None = None) -> "Manifest":
        """The root's manifest (checked to be `fmt`, then by `check(old_data)`), or a new one with `meta`."""
        m = cls(root, fmt, meta, options)
        if storage.exists(m.path, options):
            try:
                data = json.loads(storage.read_text(m.path, options))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InputError(f"{m.path} is not valid JSON ({err}); move it away to rebuild it") from None
            if isinstance(data, dict) and "inputs" not in data and isinstance(data.get("shards"), dict):
                data["inputs"] = data.pop("shards")  # quantize manifests before the shared format
            if not isinstance(data, dict) or data.get("format") != fmt or not isinstance(data.get("inputs"), dict):
                raise InputError(f"{m.path} is not a {fmt} manifest")
            if check is not None:
                check(data)
            data.update({k: v for k, v in meta.items() if data.get(k) != v})
            m.data = data
        m._merge_entry_files()
        return m

    def _merge_entry_files(self) -> None:
        fs, p = storage.get_fs(self.entries_dir, self.options)
        if not fs.exists(p):
            return
        files = [f for f in fs.find(p) if f.endswith(".json")]
        blobs = fs.cat(files) if files else {}
        for name, blob in blobs.items():
            try:
                entry = json.loads(blob)
                url = entry.pop("input")
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                log.warning("ignoring unreadable manifest entry %s", name)
                continue
            mine = self.inputs.get(url)
            if mine is None or entry.get("recorded", "") > mine.get("recorded", ""):
                self.inputs[url] = entry

    def is_done(self, url: str, identity: dict[str, Any] | None) -> bool:
        e = self.inputs.get(url)
        if not e or e.get("status") != "done" or (identity is not None and e.get("identity") != identity):
            return False
        return storage.exists(storage.join(self.root, *e["output"].split("/")), self.options)

    def commit(self, url: str, status: str, **entry: Any) -> dict[str, Any]:
        """Record one input now (its own small file). Raises if the store refuses: the input did not commit."""
        record = {"status": status, **entry, "recorded": now()}
        storage.write_text(self.entry_path(url), json.dumps({"input": url, **record}, sort_keys=True) + "\n", self.options)
        self.inputs[url] = record
        return record

    def totals(self, urls: list[str] | None = None) -> dict[str, int]:
        chosen = self.inputs if urls is None else {u: self.inputs[u] for u in urls if u in self.inputs}
        done = [e for e in chosen.values() if e.get("status") == "done"]
        keys = sorted({k for e in done for k, v in e.items() if isinstance(v, int) and not isinstance(v, bool)} | set(COUNTS))
        out = {k: sum(int(e.get(k) or 0) for e in done) for k in keys}
        out["inputs_done"] = len(done)
        out["inputs_failed"] = sum(1 for e in chosen.values() if e.get("status") == "failed")
        return out

    def save(self) -> None:
        """Rewrite manifest.json: entries other runs committed meanwhile are kept (the newest wins)."""
        self._merge_entry_files()
        self.data["updated"] = now()
        self.data["inputs"] = dict(sorted(self.inputs.items()))
        self.data["totals"] = self.totals()
        storage.write_text(self.path, json.dumps(self.data, indent=1) + "\n", self.options)
