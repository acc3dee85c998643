"""The held-out sample: grids chosen by a salted hash of their key, so any run picks the same ones.

The split depends only on (salt, key), never on file order or worker count, so a learner that
excludes `holdout_mask(keys, fraction, salt)` from training leaves exactly this sample unseen.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipeline.codegrids import Corpus, Grids, holdout_mask, key_hash, read_rows  # noqa: F401 (re-exported)
from schemas.base import StorageOptions


def take(grids: Grids, index: np.ndarray) -> Grids:
    """Grids `index` (in the given order), with their codes."""
    o = grids.offsets
    index = np.asarray(index, np.int64)
    parts = [grids.codes[o[i] : o[i + 1]] for i in index]
    return Grids(
        [grids.keys[i] for i in index],
        grids.heights[index],
        grids.widths[index],
        np.concatenate(parts) if parts else np.empty(0, np.int32),
        [grids.sources[i] for i in index] if grids.sources else [],
        [grids.captions[i] for i in index] if grids.captions else [],
    )


@dataclass
class Sample:
    grids: Grids  # the held-out grids, in corpus order
    rows_read: int  # rows in the corpus
    rows_rejected: int  # rows the grid reader rejected (bad shape, codes, ...)
    in_split: int  # accepted rows whose key falls in the split (before the cap)
    reject_reasons: dict[str, int]
    fingerprint_sum: int | None = None  # `Grids.fingerprint_sum` of every accepted row (when asked for)


def read_holdout(corpus: Corpus, fraction: float, salt: str, cap: int, chunk_rows: int = 20_000,
                 options: StorageOptions | None = None, fingerprint: bool = False) -> Sample:
    """Read the corpus in chunks and keep the held-out grids; beyond `cap`, the smallest hashes win.

    With `fingerprint`, also hash every accepted grid (to tell whether these are the training grids).
    """
    total = 0
    kept: list[Grids] = []
    hashes: list[np.ndarray] = []
    rejected = 0
    reasons: dict[str, int] = {}
    in_split = 0
    for start in range(0, corpus.rows, chunk_rows):
        part = read_rows(corpus, start, min(corpus.rows, start + chunk_rows), options)
        rejected += len(part.rejects)
        if fingerprint:
            total = (total + part.fingerprint_sum()) % (1 << 64)
        for r in part.rejects:
            head = re.sub(r"-?\d+", "N", r.reason or "unknown")  # group "code 9000 outside ..." by kind
            reasons[head] = reasons.get(head, 0) + 1
        h = key_hash(part.keys, salt)
        idx = np.flatnonzero(h < fraction)
        in_split += idx.size
        if idx.size:
            kept.append(take(part, idx))
            hashes.append(h[idx])
    grids = Grids.concat(kept)
    if len(grids) > cap:
        h = np.concatenate(hashes)
        keep = np.sort(np.argsort(h, kind="stable")[:cap])
        grids = take(grids, keep)
    return Sample(grids, corpus.rows, rejected, in_split, reasons, total if fingerprint else None)
