"""Conversation records -> training sequences (Parquet), once per run directory, reused while inputs are unchanged.

Three passes, in this process or on Ray (`prepare`, decided by the shared rule `pipeline.execution.plan`): read every conversation file into
records (one Ray Data task per file), gather the corpus ids of the images they name, and turn
records into sequences (`sequences.SequenceBuilder`: chat template, tokenizer, images, overflow
rule, held-out decision), the expensive part, as a Ray Data map over a pool of actors that share
the images through the object store. The driver streams the results, in input order, into
`sequences.parquet`, `heldout.parquet` and `sequences.rejects.parquet`, then writes `stats.json`.

Held-out split (`heldout_fraction` > 0): a record goes to `heldout.parquet` when the salted hash of
one of its images' corpus keys falls below the fraction, so no held-out image is ever trained on. The
hash is `codegrids.key_hash`, the learner's: with the same salt, images the learner held out and
images held out here come from one ordering of the keys. Text-only records always train.
Every record is accounted for: records = sequences + held out + rejects, with the reason of each reject.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.execution import plan
from pipeline.train.corpus import corpus_key, image_table
from pipeline.train.identity import content_id
from pipeline.train.paths import PreparedFiles
from pipeline.train.records import read_file, source_files
from pipeline.train.sequences import IGNORE, RESULT_SCHEMA, SequenceBuilder, records_table
from schemas.base import ConfigError, StorageOptions
from schemas.grids import REJECTS_SCHEMA
from schemas.layout import IdLayout
from schemas.train import CATEGORIES, SEQUENCES_SCHEMA, DataConfig, PrepareConfig

log = logging.getLogger(__name__)
ROW_GROUP = 1024  # sequences per Parquet row group: the unit streamed reads fetch
RECORDS_PER_BLOCK = 4096

__all__ = ["IGNORE", "inputs_fingerprint", "prepare", "tokenizer_fingerprint"]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(json.dumps([tokenizer.chat_template, tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)]).encode())
    return h.hexdigest()[:16]


def inputs_fingerprint(data: DataConfig, layout: IdLayout, tokenizer: Any, options: StorageOptions | None = None) -> str:
    """Changes when the data config, the layout, the tokenizer or the content of any input file changes."""
    files = [path for path, _ in source_files(data.conversations, options)] + storage.expand(data.corpus, (".parquet",), options)
    contents = [(path, content_id(path, options)) for path in files]
    blob = json.dumps([data.model_dump(mode="json"), layout.fingerprint(), tokenizer_fingerprint(tokenizer), contents])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_records(batch: pa.Table, inline: bool, options: StorageOptions | None) -> Iterator[pa.Table]:
    """Ray Data map: one conversation file -> its records (and parse rejects), a block at a time."""
    path, category = batch.column("path")[0].as_py(), batch.column("category")[0].as_py()
    items = []
    for item in read_file(path, category, inline, options):
        items.append(item)
        if len(items) == RECORDS_PER_BLOCK:
            yield records_table(items)
            items = []
    yield records_table(items)


def _wanted_keys(records: Iterator[pa.Table], rule: str) -> set[str]:
    keys: set[str] = set()
    for table in records:
        usable = table.filter(table.column("reason").is_null())
        for names in usable.column("images").to_pylist():
            keys.update(corpus_key(n, rule) for n in names)
    return keys


def _results_here(sources, data, tokenizer, layout, execution, options) -> tuple[Iterator[pa.Table], dict]:
    inline = data.images == "inline"
    records = records_table([item for path, category in sources for item in read_file(path, category, inline, options)])
    keys = _wanted_keys(iter([records]), data.image_key)
    images, counts = image_table(data.corpus, keys, layout, options) if keys else (image_table([], set(), layout)[0], {})
    builder = SequenceBuilder(tokenizer, data, layout, images)
    step = execution.batch_size
    return (builder(records.slice(i, step)) for i in range(0, records.num_rows, step)), counts


def _results_on_ray(sources, data, tokenizer_dir, layout, execution, placement, options) -> tuple[Iterator[pa.Table], dict]:
    import ray
    import ray.data

    from pipeline.execution import ensure_ray

    ensure_ray(placement.address)
    inline = data.images == "inline"
    files = ray.data.from_items([{"path": p, "category": c} for p, c in sources], override_num_blocks=max(1, len(sources)))
    files.context.execution_options.preserve_order = True
    records = files.map_batches(_file_records, batch_size=1, batch_format="pyarrow",
                                fn_kwargs={"inline": inline, "options": options}).materialize()
    keys = _wanted_keys(records.select_columns(["images", "reason"]).iter_batches(batch_format="pyarrow", batch_size=None),
                        data.image_key)
    images, counts = image_table(data.corpus, keys, layout, options) if keys else (image_table([], set(), layout)[0], {})
    actors = execution.workers or max(1, int(ray.available_resources().get("CPU", 1) // execution.cpus))
    results = records.map_batches(
        SequenceBuilder,
        fn_constructor_kwargs={"tokenizer": tokenizer_dir, "data": data, "layout": layout, "images": ray.put(images),
                               "options": options},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=execution.cpus,
        batch_size=execution.batch_size, batch_format="pyarrow",
    )
    log.info("tokenizing records on %d Ray Data actors", actors)
    return results.iter_batches(batch_format="pyarrow", batch_size=None), counts


class _Writers:
    """The output files, written as results stream in, and the counts for stats.json.

    Training sequences are grouped by category (foundation, perception, reasoning, instruction; input
    order within each), every category starting a new row group: a category's pool is then a run of
    whole row groups, which is what lets streamed reads fetch just the groups a batch needs. They are
    staged in one local file per category and copied into place at the end; held-out sequences and
    rejects keep the input order.
    """

    def __init__(self, files: PreparedFiles, options: StorageOptions | None = None):
        import tempfile

        self.files = files
        self.options = options
        self._outputs = contextlib.ExitStack()  # whole files or none: aborted when preparation fails
        self._staging = tempfile.TemporaryDirectory(prefix="vbpe-prepare-")
        self.per_cat_writers: dict[str, pq.ParquetWriter] = {}
        self.heldout = self._open(files.heldout, SEQUENCES_SCHEMA)
        self.rejects = self._open(files.rejects, REJECTS_SCHEMA)
        self.buffers: dict[str, list[pa.Table]] = {c: [] for c in CATEGORIES} | {"heldout": []}
        self.c = collections.Counter()
        self.reasons = collections.Counter()
        self.per_category = {"sequences": collections.Counter(), "heldout": collections.Counter()}
        self.held_images: set[str] = set()

    def _open(self, path: str, schema: pa.Schema) -> pq.ParquetWriter:
        return pq.ParquetWriter(self._outputs.enter_context(storage.atomic_write(path, self.options)), schema)

    def _writer(self, name: str) -> pq.ParquetWriter:
        if name == "heldout":
            return self.heldout
        if name not in self.per_cat_writers:
            self.per_cat_writers[name] = pq.ParquetWriter(os.path.join(self._staging.name, f"{name}.parquet"), SEQUENCES_SCHEMA)
        return self.per_cat_writers[name]

    def _flush(self, name: str, force: bool = False) -> None:
        rows = sum(t.num_rows for t in self.buffers[name])
        if rows and (force or rows >= ROW_GROUP):
            table = pa.concat_tables(self.buffers[name])
            cut = rows if force else rows - rows % ROW_GROUP
            self._writer(name).write_table(table.slice(0, cut), row_group_size=ROW_GROUP)
            self.buffers[name] = [table.slice(cut)] if cut < rows else []

    def add(self, results: pa.Table) -> None:
        reason = results.column("reason")
        bad = results.filter(reason.is_valid())
        good = results.filter(reason.is_null())
        if bad.num_rows:
            self.rejects.write_table(pa.table({
                "key": bad.column("record"), "source": bad.column("source"), "row": bad.column("row"),
                "stage": pa.array(["train"] * bad.num_rows, pa.string()), "reason": bad.column("reason"),
            }, schema=REJECTS_SCHEMA))
            self.reasons.update(r.split(":")[0] for r in bad.column("reason").to_pylist())
        self.c["records"] += results.num_rows
        self.c["rejected"] += bad.num_rows
        self.c["trailing_prompts_dropped"] += int(np.asarray(good.column("trailing")).sum()) if good.num_rows else 0
        held = np.asarray(good.column("heldout"), bool) if good.num_rows else np.zeros(0, bool)
        train, heldout = good.filter(pa.array(~held)), good.filter(pa.array(held))
        if heldout.num_rows:
            self.c["heldout"] += heldout.num_rows
            self.per_category["heldout"].update(heldout.column("category").to_pylist())
            for keys in heldout.column("images").to_pylist():
                self.held_images.update(keys)
            self.buffers["heldout"].append(heldout.select(SEQUENCES_SCHEMA.names).cast(SEQUENCES_SCHEMA))
            self._flush("heldout")
        if train.num_rows:
            self.c["sequences"] += train.num_rows
            self.per_category["sequences"].update(train.column("category").to_pylist())
            self.c["truncated"] += int(np.asarray(train.column("truncated")).sum())
            self.c["text_only"] += sum(1 for k in train.column("images").to_pylist() if not k)
            self.c["tokens"] += int(np.asarray(train.column("n_tokens")).sum())
            self.c["label_tokens"] += int(np.asarray(train.column("n_labels")).sum())
            cats = np.asarray(train.column("category").to_pylist())
            for c in CATEGORIES:
                part = train.filter(pa.array(cats == c))
                if part.num_rows:
                    self.buffers[c].append(part.select(SEQUENCES_SCHEMA.names).cast(SEQUENCES_SCHEMA))
                    self._flush(c)

    def __enter__(self) -> "_Writers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
            else:
                for writer in (self.heldout, self.rejects, *self.per_cat_writers.values()):
                    with contextlib.suppress(Exception):
                        writer.close()
        except BaseException as err:
            self._outputs.__exit__(type(err), err, err.__traceback__)
            raise
        finally:
            self._staging.cleanup()
        self._outputs.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        for name in self.buffers:
            self._flush(name, force=True)
        for writer in (self.heldout, self.rejects, *self.per_cat_writers.values()):
            writer.close()
        with storage.atomic_write(self.files.sequences, self.options) as handle:
            out = pq.ParquetWriter(handle, SEQUENCES_SCHEMA)
            for c in CATEGORIES:
                if c in self.per_cat_writers:
                    staged = pq.ParquetFile(os.path.join(self._staging.name, f"{c}.parquet"))
                    for g in range(staged.num_row_groups):
                        out.write_table(staged.read_row_group(g), row_group_size=ROW_GROUP)
            out.close()


def _held_out_images(keys: set[str], data: DataConfig) -> int:
    """Images held out by the hash (a held-out record may also show training images)."""
    from pipeline.codegrids import key_hash

    ordered = sorted(keys)
    return int((key_hash(ordered, data.heldout_salt) < data.heldout_fraction).sum()) if ordered else 0


def prepare(data: DataConfig, tokenizer: Any, layout: IdLayout, out_dir: str, fingerprint: str | None = None,
            execution: PrepareConfig | None = None, tokenizer_dir: str | None = None,
            options: StorageOptions | None = None) -> dict:
    """Write sequences, held-out sequences and rejects, then stats.json (the marker of a complete preparation).

    `fingerprint`: inputs_fingerprint() of these arguments, when the caller has computed it already.
    `tokenizer_dir`: where Ray actors load the same tokenizer from (needed on Ray). `options`: the run's storage.
    """
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no end-of-sequence token; set one before training")
    execution = execution or PrepareConfig()
    files = PreparedFiles(out_dir)
    fingerprint = fingerprint or inputs_fingerprint(data, layout, tokenizer, options)
    if storage.exists(files.stats, options):
        old = json.loads(storage.read_text(files.stats, options))
        if old.get("fingerprint") == fingerprint:
            log.info("prepared data in %s is up to date (%d sequences)", out_dir, old["sequences"])
            return {**old, "reused": True}
    sources = source_files(data.conversations, options)
    placement = plan(execution)  # the shared rule: auto is Ray when workers > 0 or a cluster is named
    on_ray = placement.on_ray
    if on_ray and tokenizer_dir is None:
        raise ConfigError("preparing on Ray needs the tokenizer's directory")
    results, counts = (_results_on_ray(sources, data, tokenizer_dir, layout, execution, placement, options) if on_ray
                       else _results_here(sources, data, tokenizer, layout, execution, options))
    with _Writers(files, options) as out:
        for table in results:
            out.add(table)
    c = out.c
    if c["sequences"] + c["heldout"] + c["rejected"] != c["records"]:
        raise RuntimeError(f"lost records: {c['records']} in, {c['sequences']} + {c['heldout']} held out + {c['rejected']} rejects")
    stats = {
        "fingerprint": fingerprint,
        "records": c["records"],
        "sequences": c["sequences"],
        "heldout": c["heldout"],
        "rejected": c["rejected"],
        "reject_reasons": dict(sorted(out.reasons.items())),
        "truncated": c["truncated"],
        "text_only": c["text_only"],
        "tokens": c["tokens"],
        "label_tokens": c["label_tokens"],
        "per_category": {k: out.per_category["sequences"][k] for k in CATEGORIES},
        "heldout_per_category": {k: out.per_category["heldout"][k] for k in CATEGORIES},
        "heldout_images": _held_out_images(out.held_images, data),
        "heldout_fraction": data.heldout_fraction,
        "heldout_salt": data.heldout_salt,
        "executor": "ray" if on_ray else "local",
        "corpus_files": 0, "corpus_rows": 0, "duplicate_keys": 0,
        **counts,
        "trailing_prompts_dropped": c["trailing_prompts_dropped"],
    }
    storage.write_text(files.stats, json.dumps(stats, indent=1), options)
    log.info(
        "prepared %d sequences (%d held out, %d rejected, %d truncated) from %d records",
        stats["sequences"], stats["heldout"], stats["rejected"], stats["truncated"], stats["records"],
    )
    return stats
