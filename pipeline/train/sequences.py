"""Records -> training sequences: ids, labels, the overflow rule, the held-out decision, rejects.

A sequence is [BOS] + the chat-formatted turns + [EOS], with the record's images: all of them
first, in order (`images: first`), or each at its `<image>` placeholder (`images: inline`; a record
without placeholders has its images first). Labels are -100 except on answer tokens (and on the
image ids when `image_loss` is set). Overflow rule, `max_length` = L:
  - drop:     a sequence longer than L is rejected ("too long").
  - truncate: it is cut to its first L tokens, never inside an image (the cut moves to the image's
              start); it is rejected when an image reaches the limit and no answer token is left
              ("image does not fit") or no answer token is left otherwise ("no answer within max_length").

`SequenceBuilder` maps a batch of records (Arrow, `RECORD_SCHEMA`) to a batch of results
(`RESULT_SCHEMA`: a sequence, or a reject with its reason), the same in this process or as a
Ray Data map over many actors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.codegrids import key_hash
from pipeline.train import chat
from pipeline.train.corpus import check_ids, corpus_key
from pipeline.train.records import PLACEHOLDER, Record, Reject, Turn
from schemas.layout import IdLayout
from schemas.train import SEQUENCES_SCHEMA, DataConfig

IGNORE = -100

RECORD_SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("images", pa.list_(pa.string())),
    pa.field("turns", pa.string()),  # JSON [[role, content], ...]
    pa.field("category", pa.string()),
    pa.field("source", pa.string()),
    pa.field("row", pa.int64()),
    pa.field("reason", pa.string()),  # set when parsing rejected the row
])
RESULT_SCHEMA = SEQUENCES_SCHEMA.append(pa.field("reason", pa.string())) \
    .append(pa.field("heldout", pa.bool_())).append(pa.field("trailing", pa.int32()))


def records_table(rec: list[Record | Reject]) -> pa.Table:
    return pa.table({
        "id": [i.id if isinstance(i, Record) else i.key for i in rec],
        "images": [i.images if isinstance(i, Record) else [] for i in rec],
        "turns": [json.dumps([[t.role, t.content] for t in i.turns]) if isinstance(i, Record) else "" for i in rec],
        "category": [i.category if isinstance(i, Record) else "" for i in rec],
        "source": [i.source for i in rec],
        "row": [i.row for i in rec],
        "reason": [None if isinstance(i, Record) else i.reason for i in rec],
    }, schema=RECORD_SCHEMA)


@dataclass
class Sequence:
    input_ids: np.ndarray
    labels: np.ndarray
    truncated: bool


def build_sequence(tokenizer: Any, turns: list[Turn], images: list[np.ndarray], data: DataConfig) -> Sequence:
    """One training sequence, or ValueError with the reason it cannot be used."""
    inline = data.images == "inline"
    text_ids, answer, slots = chat.encode(tokenizer, turns, PLACEHOLDER if inline else None)
    if not slots:
        slots = [0] * len(images)  # all images before the text
    ids = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    is_answer = [False] * len(ids)
    labels = [IGNORE] * len(ids)
    spans = []  # [start, end) of every image in ids
    done = 0
    for image, at in zip(list(images) + [None], list(slots) + [len(text_ids)]):
        ids += text_ids[done:at]
        is_answer += answer[done:at]
        labels += [t if a else IGNORE for t, a in zip(text_ids[done:at], answer[done:at])]
        done = at
        if image is not None:
            spans.append((len(ids), len(ids) + len(image)))
            ids += image.tolist()
            is_answer += [False] * len(image)
            labels += image.tolist() if data.image_loss else [IGNORE] * len(image)
    if ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
        is_answer.append(True)
        labels.append(tokenizer.eos_token_id)
    limit = data.max_length
    truncated = False
    if len(ids) > limit:
        if data.overflow == "drop":
            raise ValueError(f"too long: {len(ids)} tokens > max_length {limit}")
        reaching = [(start, end) for start, end in spans if start < limit <= end]  # images that reach the limit
        cut = min([start for start, end in reaching if end > limit], default=limit)  # never inside an image
        if not any(is_answer[:cut]):
            if reaching:
                raise ValueError(f"image does not fit: an image reaches past max_length {limit}")
            raise ValueError(f"no answer within max_length: {limit}")
        ids, labels, truncated = ids[:cut], labels[:cut], True
    return Sequence(np.asarray(ids, np.int32), np.asarray(labels, np.int32), truncated)


def _without_trailing_prompts(turns: list[Turn]) -> tuple[list[Turn], int]:
    """Turns after the last answer teach nothing; (kept turns, how many were dropped)."""
    last = max(i for i, t in enumerate(turns) if t.role == "assistant")
    return turns[: last + 1], len(turns) - 1 - last


def n_targets(labels: np.ndarray) -> int:
    """Labels some position predicts: the first label has no position before it."""
    return int((labels[1:] != IGNORE).sum())


def _list_array(arrays: list[np.ndarray]) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


class SequenceBuilder:
    """Records -> results. Holds the tokenizer and the corpus images the records need (key -> ids)."""

    def __init__(self, tokenizer: Any, data: DataConfig, layout: IdLayout, images: pa.Table, options=None):
        """`tokenizer`: a tokenizer, or the directory to load it from (`options`: its StorageOptions when remote)."""
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            from pipeline.storage import local_dir

            with local_dir(tokenizer, options) as d:
                tokenizer = AutoTokenizer.from_pretrained(d)
        if type(images).__name__ == "ObjectRef":  # shared through the object store when on Ray
            import ray

            images = ray.get(images)
        self.tokenizer, self.data, self.layout = tokenizer, data, layout
        keys = images.column("key").to_pylist()
        self.index: dict[str, int] = {}
        for i, key in enumerate(keys):
            self.index.setdefault(key, i)  # a key seen twice keeps its first occurrence
        ids = images.column("input_ids").combine_chunks()
        self.values = ids.values.to_numpy(zero_copy_only=False)
        self.offsets = ids.offsets.to_numpy()

    def _image(self, name: str) -> tuple[str, np.ndarray]:
        key = corpus_key(name, self.data.image_key)
        i = self.index.get(key)
        if i is None:
            raise ValueError(f"unknown image key: {key!r}")
        ids = self.values[self.offsets[i] : self.offsets[i + 1]]
        bad = check_ids(ids, self.layout)
        if bad:
            raise ValueError(bad)
        return key, ids

    def _heldout(self, keys: list[str]) -> bool:
        fraction = self.data.heldout_fraction
        return bool(fraction > 0 and keys and (key_hash(keys, self.data.heldout_salt) < fraction).any())

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: dict[str, list] = {f.name: [] for f in RESULT_SCHEMA}
        seqs: list[Sequence] = []
        for rec in batch.to_pylist():
            reason, keys, seq, trailing = rec["reason"], [], None, 0
            if reason is None:
                try:
                    found = [self._image(name) for name in rec["images"]]
                    keys = [k for k, _ in found]
                    turns, trailing = _without_trailing_prompts([Turn(r, c) for r, c in json.loads(rec["turns"])])
                    seq = build_sequence(self.tokenizer, turns, [ids for _, ids in found], self.data)
                except (ValueError, chat.TemplateError) as err:
                    reason = str(err)
            empty = np.zeros(0, np.int32)
            seqs.append(seq or Sequence(empty, empty, False))
            rows["record"].append(rec["id"])
            rows["category"].append(rec["category"])
            rows["image"].append(keys[0] if keys else None)
            rows["images"].append(keys)
            rows["truncated"].append(bool(seq and seq.truncated))
            rows["source"].append(rec["source"])
            rows["row"].append(rec["row"])
            rows["reason"].append(reason)
            rows["heldout"].append(seq is not None and self._heldout(keys))
            rows["trailing"].append(trailing if seq is not None else 0)
        rows["input_ids"] = _list_array([s.input_ids for s in seqs])
        rows["labels"] = _list_array([s.labels for s in seqs])
        rows["n_tokens"] = [len(s.input_ids) for s in seqs]
        rows["n_labels"] = [int((s.labels != IGNORE).sum()) for s in seqs]
        rows["n_targets"] = [n_targets(s.labels) for s in seqs]
        return pa.table({f.name: rows[f.name] for f in RESULT_SCHEMA}, schema=RESULT_SCHEMA)
