"""LLaVA-style conversation records -> normalised records; every bad record becomes a counted reject.

Accepted shapes (JSON list, JSONL, or Parquet with the same columns):
  {"id": ..., "image": "coco/0001.jpg" | ["a.jpg", "b.jpg"] | null, "category": "perception",
   "conversations": [{"from": "human", "value": "<image>\\nWhat ..."}, {"from": "gpt", "value": "..."}]}
`role`/`content` keys and `messages` are accepted too. `<image>` placeholders in user turns mark
where the images go (`DataConfig.images: inline`, one placeholder per image, in order) or are
removed (`first`, the default: all images come before the text).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

from schemas.base import InputError, StorageOptions
from schemas.train import CATEGORIES, CATEGORY_ALIASES, ConversationSource
from pipeline import storage
from pipeline.rejects import Reject

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant", "system": "system"}
PLACEHOLDER = "<image>"
_PLACEHOLDER = re.compile(r"[ \t]*<image>[ \t]*\n?")


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    content: str


@dataclass
class Record:
    id: str
    images: list[str]  # as the record names them, in order
    turns: list[Turn]  # user turns keep one PLACEHOLDER per image slot when inline
    category: str
    source: str
    row: int

    @property
    def image(self) -> str | None:
        return self.images[0] if self.images else None


def _rows(path: str, options: StorageOptions | None) -> Iterator[tuple[int, Any]]:
    """(row, raw record) pairs; a JSONL line that does not parse is yielded as an exception to reject."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with storage.open_file(path, options=options) as f:
            table = pq.read_table(f)
        yield from enumerate(table.to_pylist())
        return
    text = storage.read_text(path, options)
    if path.endswith(".jsonl"):
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as err:
                yield i, ValueError(f"invalid JSON: {err.msg}")
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of records")
    yield from enumerate(data)


def _category(raw: dict, default: str | None) -> str:
    value = raw.get("category", default)
    if value is None:
        raise ValueError("no category (neither on the record nor on its source)")
    name = CATEGORY_ALIASES.get(str(value).strip().lower(), str(value).strip().lower())
    if name not in CATEGORIES:
        raise ValueError(f"unknown category: {value!r}")
    return name


def _images(raw: dict) -> list[str]:
    image = raw.get("image", raw.get("images"))
    images = image if isinstance(image, list) else [image]
    out = []
    for one in images:
        if one is None or one == "":
            continue
        if not isinstance(one, str):
            raise ValueError(f"bad image field: {type(one).__name__}")
        out.append(one)
    return out


def _turns(raw: dict, n_images: int, inline: bool) -> list[Turn]:
    convs = raw.get("conversations", raw.get("messages"))
    if not isinstance(convs, list) or not convs:
        raise ValueError("no conversations")
    turns = []
    for t in convs:
        if not isinstance(t, dict):
            raise ValueError("a turn is not a mapping")
        who = t.get("from", t.get("role"))
        role = ROLES.get(str(who).lower()) if who is not None else None
        if role is None:
            raise ValueError(f"unknown speaker: {who!r}")
        text = t.get("value", t.get("content"))
        if not isinstance(text, str):
            raise ValueError(f"turn without text: {role}")
        if role == "user":
            text = _PLACEHOLDER.sub(PLACEHOLDER if inline else "", text)
        turns.append(Turn(role, text.strip()))
    answers = [t for t in turns if t.role == "assistant"]
    if not answers:
        raise ValueError("no answer turn")
    if any(not t.content for t in answers):
        raise ValueError("empty answer")
    if inline:
        slots = sum(t.content.count(PLACEHOLDER) for t in turns if t.role == "user")
        if slots and slots != n_images:  # none at all: the images go first, as with `first`
            raise ValueError(f"image placeholders: {slots} in the text for {n_images} images")
    return turns


def parse(raw: Any, default_category: str | None, source: str, row: int, inline: bool = False) -> Record:
    if isinstance(raw, Exception):
        raise raw
    if not isinstance(raw, dict):
        raise ValueError(f"not a mapping: {type(raw).__name__}")
    rid = raw.get("id")
    images = _images(raw)
    return Record(
        id=str(rid) if rid is not None else f"{os.path.basename(source)}:{row}",
        images=images,
        turns=_turns(raw, len(images), inline),
        category=_category(raw, default_category),
        source=source,
        row=row,
    )


SUFFIXES = (".json", ".jsonl", ".parquet")


def source_files(sources: list[ConversationSource], options: StorageOptions | None = None) -> list[tuple[str, str | None]]:
    """(file, default category) of every conversation file, in order."""
    return [(path, src.category) for src in sources for path in storage.expand(src.paths(), SUFFIXES, options)]


def read_file(path: str, default_category: str | None, inline: bool = False,
              options: StorageOptions | None = None) -> Iterator[Record | Reject]:
    """Every row of one file, as a Record or as the Reject that says why not."""
    for row, raw in _rows(path, options):
        try:
            yield parse(raw, default_category, path, row, inline)
        except ValueError as err:
            key = raw.get("id") if isinstance(raw, dict) else None
            yield Reject(None if key is None else str(key), path, row, str(err))


def read_records(sources: list[ConversationSource], inline: bool = False,
                 options: StorageOptions | None = None) -> tuple[list[Record], list[Reject]]:
    """Every input row ends up in exactly one of the two lists."""
    records: list[Record] = []
    rejects: list[Reject] = []
    for path, category in source_files(sources, options):
        for item in read_file(path, category, inline, options):
            (records if isinstance(item, Record) else rejects).append(item)
    return records, rejects
