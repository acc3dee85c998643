"""Conversation records -> training sequences (Parquet), once per run directory, reused while inputs are unchanged.

A sequence is [BOS] + the image's ids + the chat-formatted turns + [EOS]. Labels are -100 except on
answer tokens (and on the image ids when `image_loss` is set). Overflow rule, `max_length` = L:
  - drop:     a sequence longer than L is rejected ("too long").
  - truncate: it is cut to its first L tokens; it is rejected instead if BOS + image do not fit in L
              ("image does not fit") or no answer token is left ("no answer within max_length").
Held-out split (`heldout_fraction` > 0): a record goes to `heldout.parquet` when the salted hash of
one of its images' corpus keys falls below the fraction, so no held-out image is ever trained on. The
hash is `codegrids.key_hash`, the learner's: with the same salt, images the learner held out and
images held out here come from one ordering of the keys. Text-only records always train.
Every record is accounted for: records = sequences + held out + rejects, with the reason of each reject.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.codegrids import key_hash, rejects_table
from pipeline.train import chat
from pipeline.train.corpus import check_ids, corpus_key, load_images
from pipeline.train.identity import content_id
from pipeline.train.paths import PreparedFiles
from pipeline.train.records import Record, Reject, read_records
from schemas.base import ConfigError
from schemas.layout import IdLayout
from schemas.train import CATEGORIES, SEQUENCES_SCHEMA, DataConfig

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class Sequence:
    input_ids: np.ndarray
    labels: np.ndarray
    truncated: bool


def build_sequence(
    tokenizer: Any, record: Record, image_ids: np.ndarray | None, data: DataConfig
) -> Sequence:
    """One training sequence, or ValueError with the reason it cannot be used."""
    text_ids, answer = chat.encode(tokenizer, record.turns)
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    image = [] if image_ids is None else image_ids.tolist()
    ids = bos + image + text_ids
    labels = [IGNORE] * len(bos) + (image if data.image_loss else [IGNORE] * len(image))
    labels += [t if a else IGNORE for t, a in zip(text_ids, answer)]
    if ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    truncated = False
    limit = data.max_length
    if len(ids) > limit:
        if data.overflow == "drop":
            raise ValueError(f"too long: {len(ids)} tokens > max_length {limit}")
        if len(bos) + len(image) >= limit:
            raise ValueError(f"image does not fit: {len(bos) + len(image)} image tokens, max_length {limit}")
        ids, labels, truncated = ids[:limit], labels[:limit], True
        if all(label == IGNORE for label in labels[len(bos) + len(image) :]):
            raise ValueError(f"no answer within max_length: {limit}")
    return Sequence(np.asarray(ids, np.int32), np.asarray(labels, np.int32), truncated)


def _without_trailing_prompts(record: Record) -> int:
    """Drop turns after the last answer (nothing to learn from them); returns how many were dropped."""
    last = max(i for i, t in enumerate(record.turns) if t.role == "assistant")
    dropped = len(record.turns) - 1 - last
    del record.turns[last + 1 :]
    return dropped


def _list_array(arrays: list[np.ndarray]) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(json.dumps([tokenizer.chat_template, tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)]).encode())
    return h.hexdigest()[:16]


def inputs_fingerprint(data: DataConfig, layout: IdLayout, tokenizer: Any) -> str:
    """Changes when the data config, the layout, the tokenizer or the content of any input file changes."""
    files = []
    for src in data.conversations:
        files += storage.expand(src.paths(), (".json", ".jsonl", ".parquet"))
    files += storage.expand(data.corpus, (".parquet",))
    contents = [(path, content_id(path)) for path in files]
    blob = json.dumps([data.model_dump(mode="json"), layout.fingerprint(), tokenizer_fingerprint(tokenizer), contents])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build(records: list[Record], data: DataConfig, tokenizer: Any, layout: IdLayout) -> tuple[list, list[Reject], dict]:
    wanted = {corpus_key(r.image, data.image_key) for r in records if r.image}
    images, counts = load_images(data.corpus, wanted, layout) if wanted else ({}, {})
    seqs: list[tuple[Record, Sequence]] = []
    rejects: list[Reject] = []
    trailing = 0
    for rec in records:
        try:
            image_ids = None
            if rec.image:
                key = corpus_key(rec.image, data.image_key)
                image_ids = images.get(key)
                if image_ids is None:
                    raise ValueError(f"unknown image key: {key!r}")
                bad = check_ids(image_ids, layout)
                if bad:
                    raise ValueError(bad)
            trailing += _without_trailing_prompts(rec)
            seqs.append((rec, build_sequence(tokenizer, rec, image_ids, data)))
        except ValueError as err:
            rejects.append(Reject(rec.id, rec.source, rec.row, str(err)))
    return seqs, rejects, {**counts, "trailing_prompts_dropped": trailing}


def n_targets(labels: np.ndarray) -> int:
    """Labels some position predicts: the first label has no position before it."""
    return int((labels[1:] != IGNORE).sum())


def _sequences_table(seqs: list[tuple[Record, Sequence]], data: DataConfig) -> pa.Table:
    keys = [[corpus_key(r.image, data.image_key)] if r.image else [] for r, _ in seqs]
    return pa.Table.from_arrays(
        [
            pa.array([r.id for r, _ in seqs], pa.string()),
            pa.array([r.category for r, _ in seqs], pa.string()),
            pa.array([corpus_key(r.image, data.image_key) if r.image else None for r, _ in seqs], pa.string()),
            _list_array([s.input_ids for _, s in seqs]),
            _list_array([s.labels for _, s in seqs]),
            pa.array([len(s.input_ids) for _, s in seqs], pa.int32()),
            pa.array([int((s.labels != IGNORE).sum()) for _, s in seqs], pa.int32()),
            pa.array([s.truncated for _, s in seqs], pa.bool_()),
            pa.array([r.source for r, _ in seqs], pa.string()),
            pa.array([r.row for r, _ in seqs], pa.int64()),
            pa.array(keys, pa.list_(pa.string())),
            pa.array([n_targets(s.labels) for _, s in seqs], pa.int32()),
        ],
        schema=SEQUENCES_SCHEMA,
    )


def _write_parquet(table: pa.Table, path: str) -> None:
    with storage.open_file(path, "wb") as f:
        pq.write_table(table, f)


def heldout_split(seqs: list[tuple[Record, Sequence]], data: DataConfig) -> tuple[list, list, set[str]]:
    """(training, held out, held-out image keys): held out when any of the record's images is."""
    if data.heldout_fraction <= 0:
        return seqs, [], set()
    keys = sorted({corpus_key(r.image, data.image_key) for r, _ in seqs if r.image})
    held = {k for k, h in zip(keys, key_hash(keys, data.heldout_salt)) if h < data.heldout_fraction}
    train, heldout = [], []
    for rec, seq in seqs:
        (heldout if rec.image and corpus_key(rec.image, data.image_key) in held else train).append((rec, seq))
    return train, heldout, held


def _per_category(seqs: list[tuple[Record, Sequence]]) -> dict[str, int]:
    return {c: sum(1 for r, _ in seqs if r.category == c) for c in CATEGORIES}


def prepare(data: DataConfig, tokenizer: Any, layout: IdLayout, out_dir: str, fingerprint: str | None = None) -> dict:
    """Write sequences, held-out sequences and rejects, then stats.json (the marker of a complete preparation).

    `fingerprint`: inputs_fingerprint() of these arguments, when the caller has computed it already.
    """
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no end-of-sequence token; set one before training")
    files = PreparedFiles(out_dir)
    fingerprint = fingerprint or inputs_fingerprint(data, layout, tokenizer)
    stats_path = files.stats
    if storage.exists(stats_path):
        old = json.loads(storage.read_text(stats_path))
        if old.get("fingerprint") == fingerprint:
            log.info("prepared data in %s is up to date (%d sequences)", out_dir, old["sequences"])
            return {**old, "reused": True}

    records, rejects = read_records(data.conversations)
    n_in = len(records) + len(rejects)
    seqs, more, counts = _build(records, data, tokenizer, layout)
    rejects += more
    train, heldout, held_keys = heldout_split(seqs, data)
    if len(train) + len(heldout) + len(rejects) != n_in:
        raise RuntimeError(f"lost records: {n_in} in, {len(train)} + {len(heldout)} held out + {len(rejects)} rejects")
    _write_parquet(_sequences_table(train, data), files.sequences)
    _write_parquet(_sequences_table(heldout, data), files.heldout)
    _write_parquet(rejects_table(rejects, "train"), files.rejects)
    stats = {
        "fingerprint": fingerprint,
        "records": n_in,
        "sequences": len(train),
        "heldout": len(heldout),
        "rejected": len(rejects),
        "reject_reasons": dict(sorted(collections.Counter(r.reason.split(":")[0] for r in rejects).items())),
        "truncated": int(sum(s.truncated for _, s in train)),
        "text_only": sum(1 for r, _ in train if not r.image),
        "tokens": int(sum(len(s.input_ids) for _, s in train)),
        "label_tokens": int(sum((s.labels != IGNORE).sum() for _, s in train)),
        "per_category": _per_category(train),
        "heldout_per_category": _per_category(heldout),
        "heldout_images": len(held_keys),
        "heldout_fraction": data.heldout_fraction,
        "heldout_salt": data.heldout_salt,
        **counts,
    }
    storage.write_text(stats_path, json.dumps(stats, indent=1))
    log.info(
        "prepared %d sequences (%d held out, %d rejected, %d truncated) from %d records",
        stats["sequences"], stats["heldout"], stats["rejected"], stats["truncated"], stats["records"],
    )
    return stats
