"""What kind of thing each learned token is, from its merge tree alone.

- `flat`: every code in it is the same: runs and patches of one code (a, a), ((a, a), a), ...; on VQ
  grids these are flat regions (sky, walls, background) and usually dominate a vocabulary's top.
- `repeat`: two copies of one multi-code token (t, t): a repeated texture or pattern.
- `mixed`: two or more distinct codes that are not a repeat: structured shapes, edges, objects.

Shares are given of the learned vocabulary and of the token occurrences on a sample.
"""
from __future__ import annotations

import numpy as np

from pipeline.bpe.vocab import Vocabulary

KINDS = ("flat", "repeat", "mixed")


def merge_kinds(vocab: Vocabulary) -> np.ndarray:
    """Kind index (into KINDS) of every learned id, aligned with vocab.merges."""
    V = vocab.codebook_size
    single = np.empty(vocab.size, np.int64)  # the one code an id is made of, or -1
    single[:V] = np.arange(V)
    out = np.empty(len(vocab.merges), np.int64)
    for k, m in enumerate(vocab.merges):
        a, b = m.pair
        one = single[a] if single[a] >= 0 and single[a] == single[b] else -1
        single[V + k] = one
        out[k] = 0 if one >= 0 else (1 if a == b else 2)
    return out


def kind_shares(vocab: Vocabulary, usage: np.ndarray) -> dict[str, dict[str, float | int]]:
    """Per kind: learned ids, their share of the learned ids, their occurrences and share of all occurrences
    (base codes included in the total; their own share is under `base codes`)."""
    V, M = vocab.codebook_size, len(vocab.merges)
    kinds = merge_kinds(vocab)
    usage = np.asarray(usage, np.int64)
    total = max(1, int(usage.sum()))
    out: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(KINDS):
        ids = np.flatnonzero(kinds == i)
        n = int(usage[V + ids].sum()) if ids.size else 0
        out[name] = {"ids": int(ids.size), "share_of_vocabulary": ids.size / M if M else 0.0,
                     "occurrences": n, "share_of_tokens": n / total}
    base = int(usage[:V].sum())
    out["base codes"] = {"ids": V, "share_of_vocabulary": None, "occurrences": base, "share_of_tokens": base / total}
    return out
