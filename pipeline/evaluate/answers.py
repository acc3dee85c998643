"""Where the answers are in a prepared sequence, and when a generated answer counts as right.

Prepared sequences (`schemas.train.SEQUENCES_SCHEMA`) label exactly the answer tokens (the text each
assistant turn adds, with the template's end-of-turn marker, and the final EOS). Each maximal run of
labelled positions is one answer; everything before it (image, earlier turns with their gold answers,
the question) is its prompt.
"""
from __future__ import annotations

import re
import string

import numpy as np

IGNORE = -100
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def answer_spans(labels: np.ndarray, skip_first: int = 0) -> list[tuple[int, int]]:
    """[start, end) of each run of labels != IGNORE, ignoring runs that start before `skip_first`
    (e.g. the image ids when the sequences were prepared with `image_loss`)."""
    on = np.asarray(labels) != IGNORE
    if not on.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[False], on, [False]]).astype(np.int8)))
    spans = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
    return [(a, b) for a, b in spans if a >= max(skip_first, 1)]


def cut_at_stop(ids: list[int], stop: set[int]) -> list[int]:
    """The ids before the first stop id (end of turn / end of sequence)."""
    for i, t in enumerate(ids):
        if t in stop:
            return ids[:i]
    return ids


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style exact match)."""
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
