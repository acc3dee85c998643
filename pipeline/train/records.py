"""LLaVA-style conversation records -> normalised records; every bad record becomes a counted reject.

Accepted shapes (JSON list, JSONL, or Parquet with the same columns):
  {"id": ..., "image": "coco/0001.jpg" | null, "category": "perception",
   "conversations": [{"from": "human", "value": "<image>\\nWhat ..."}, {"from": "gpt", "value": "..."}]}
`role`/`content` keys and `messages` are accepted too. `<image>` placeholders are removed from the text:
the image's tokens always come first in the sequence.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

from schemas.base import InputError
from schemas.train import CATEGORIES, CATEGORY_ALIASES, ConversationSource
from pipeline import storage
from pipeline.rejects import Reject

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant", "system": "system"}
_PLACEHOLDER = re.compile(r"[ \t]*<image>[ \t]*\n?")


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    content: str


@dataclass
class Record:
    id: str
    image: str | None
    turns: list[Turn]
    category: str
    source: str
    row: int


def _rows(path: str) -> Iterator[tuple[int, Any]]:
    """(row, raw record) pairs; a JSONL line that does not parse is yielded as an exception to reject."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with storage.open_file(path) as f:
            table = pq.read_table(f)
        yield from enumerate(table.to_pylist())
        return
    text = storage.read_text(path)
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


def _image(raw: dict) -> str | None:
    image = raw.get("image")
    if isinstance(image, list):
        if len(image) > 1:
            raise ValueError(f"multiple images: {len(image)} (one image per record is supported)")
        image = image[0] if image else None
    if image is not None and not isinstance(image, str):
        raise ValueError(f"bad image field: {type(image).__name__}")
    return image or None


def _turns(raw: dict) -> list[Turn]:
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
        turns.append(Turn(role, _PLACEHOLDER.sub("", text).strip() if role == "user" else text.strip()))
    answers = [t for t in turns if t.role == "assistant"]
    if not answers:
        raise ValueError("no answer turn")
    if any(not t.content for t in answers):
        raise ValueError("empty answer")
    return turns


def parse(raw: Any, default_category: str | None, source: str, row: int) -> Record:
    if isinstance(raw, Exception):
        raise raw
    if not isinstance(raw, dict):
        raise ValueError(f"not a mapping: {type(raw).__name__}")
    rid = raw.get("id")
    return Record(
        id=str(rid) if rid is not None else f"{os.path.basename(source)}:{row}",
        image=_image(raw),
        turns=_turns(raw),
        category=_category(raw, default_category),
        source=source,
        row=row,
    )


def read_records(sources: list[ConversationSource]) -> tuple[list[Record], list[Reject]]:
    """Every input row ends up in exactly one of the two lists."""
    records: list[Record] = []
    rejects: list[Reject] = []
    for src in sources:
        for path in storage.expand(src.paths(), (".json", ".jsonl", ".parquet")):
            for row, raw in _rows(path):
                try:
                    records.append(parse(raw, src.category, path, row))
                except ValueError as err:
                    key = raw.get("id") if isinstance(raw, dict) else None
                    rejects.append(Reject(None if key is None else str(key), path, row, str(err)))
    return records, rejects
