"""The vocabulary file: what the contract (docs/bpe.md) says a vocabulary stores, as JSON (never pickle).

Format `vbpe-vocab` version 1. Floats are written with repr precision, so S and P round-trip
bit-exactly and a reloaded vocabulary replays the same merges.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline import storage
from schemas.base import InputError, StorageOptions

FORMAT_NAME = "vbpe-vocab"
FORMAT_VERSION = 1


@dataclass
class Merge:
    id: int
    pair: tuple[int, int]
    frequency: int
    consistency: float
    priority: float
    offset: tuple[int, int]  # mode offset u* = (dy, dx)
    histogram: list[tuple[int, int, int]]  # (dy, dx, count), sorted by (dy, dx)
    merged: int = 0  # instances merged in this step over the training grids (compression curve)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pair": list(self.pair),
            "frequency": self.frequency,
            "consistency": self.consistency,
            "priority": self.priority,
            "offset": list(self.offset),
            "histogram": [list(h) for h in self.histogram],
            "merged": self.merged,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Merge":
        return Merge(
            int(d["id"]), (int(d["pair"][0]), int(d["pair"][1])), int(d["frequency"]), float(d["consistency"]),
            float(d["priority"]), (int(d["offset"][0]), int(d["offset"][1])),
            [(int(a), int(b), int(c)) for a, b, c in d["histogram"]], int(d.get("merged", 0)),
        )


@dataclass
class CorpusStats:
    grids: int = 0
    cells: int = 0
    shapes: list[tuple[int, int, int]] = field(default_factory=list)  # (height, width, grids)
    rejected: int = 0
    held_out: int = 0  # accepted grids left out of learning (see Vocabulary.holdout)
    tokens_after: int = 0  # instances left after the last merge (the learner's final segmentation)
    fingerprint: str = ""  # order-independent hash of every accepted grid (key, shape, codes)


@dataclass
class Vocabulary:
    codebook_size: int
    sigma: float
    min_frequency: int
    alpha: float  # effective, in count units
    alpha_rel: float | None = None
    requested_merges: int = 0
    merges: list[Merge] = field(default_factory=list)
    corpus: CorpusStats = field(default_factory=CorpusStats)
    quantizer_fingerprint: str | None = None
    stopped: str = ""  # why learning ended
    software: dict[str, str] = field(default_factory=dict)
    holdout: dict[str, Any] | None = None  # {"fraction", "salt"}: grids whose key hash fell below were not learned from

    @property
    def size(self) -> int:
        """Number of token ids: V codes plus the merges."""
        return self.codebook_size + len(self.merges)

    def tokens_per_grid(self) -> np.ndarray:
        """Mean tokens per training grid after 0, 1, ..., len(merges) merges."""
        if self.corpus.grids == 0:
            return np.zeros(len(self.merges) + 1)
        merged = np.array([0] + [m.merged for m in self.merges], dtype=np.int64)
        return (self.corpus.cells - np.cumsum(merged)) / self.corpus.grids

    def merge_table(self) -> np.ndarray:
        """(k, 5) int64 rows (a, b, id, dy, dx) in id order, what the encoder needs."""
        out = np.empty((len(self.merges), 5), np.int64)
        for k, m in enumerate(self.merges):
            out[k] = (m.pair[0], m.pair[1], m.id, m.offset[0], m.offset[1])
        return out

    def fingerprint(self) -> str:
        """Identity of what the vocabulary does to a grid: V and the merges with their offsets."""
        h = hashlib.sha256(f"{FORMAT_NAME}/{FORMAT_VERSION}/V={self.codebook_size}/".encode())
        h.update(np.ascontiguousarray(self.merge_table()).tobytes())
        return h.hexdigest()[:16]

    def check_codebook(self, codebook_size: int, what: str = "these grids") -> None:
        if int(codebook_size) != self.codebook_size:
            raise InputError(
                f"{what} use a codebook of {codebook_size} codes but the vocabulary was learned on "
                f"{self.codebook_size}: they come from a different quantizer"
            )

    def check_quantizer(self, fingerprint: str | None, what: str = "these grids") -> None:
        if fingerprint and self.quantizer_fingerprint and fingerprint != self.quantizer_fingerprint:
            raise InputError(
                f"{what} were made by quantizer {fingerprint} but the vocabulary was learned on codes "
                f"of quantizer {self.quantizer_fingerprint}"
            )

    def to_json(self) -> dict[str, Any]:
        corpus = asdict(self.corpus)
        corpus["shapes"] = [list(s) for s in self.corpus.shapes]
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint(),
            "codebook_size": self.codebook_size,
            "size": self.size,
            "alpha": self.alpha,
            "alpha_rel": self.alpha_rel,
            "sigma": self.sigma,
            "min_frequency": self.min_frequency,
            "requested_merges": self.requested_merges,
            "stopped": self.stopped,
            "quantizer_fingerprint": self.quantizer_fingerprint,
            "corpus": corpus,
            "software": self.software,
            "holdout": self.holdout,
            "merges": [m.to_json() for m in self.merges],
        }

    @staticmethod
    def from_json(d: dict[str, Any], source: str = "<vocabulary>") -> "Vocabulary":
        if d.get("format") != FORMAT_NAME:
            raise InputError(f"{source} is not a {FORMAT_NAME} file (format={d.get('format')!r})")
        if d.get("version") != FORMAT_VERSION:
            raise InputError(f"{source} has {FORMAT_NAME} version {d.get('version')}, this build reads {FORMAT_VERSION}")
        c = d.get("corpus", {})
        corpus = CorpusStats(
            int(c.get("grids", 0)), int(c.get("cells", 0)), [tuple(map(int, s)) for s in c.get("shapes", [])],
            int(c.get("rejected", 0)), int(c.get("held_out", 0)), int(c.get("tokens_after", 0)),
            str(c.get("fingerprint", "")),
        )
        vocab = Vocabulary(
            codebook_size=int(d["codebook_size"]), sigma=float(d["sigma"]), min_frequency=int(d["min_frequency"]),
            alpha=float(d["alpha"]), alpha_rel=None if d.get("alpha_rel") is None else float(d["alpha_rel"]),
            requested_merges=int(d.get("requested_merges", len(d["merges"]))),
            merges=[Merge.from_json(m) for m in d["merges"]], corpus=corpus,
            quantizer_fingerprint=d.get("quantizer_fingerprint"), stopped=str(d.get("stopped", "")),
            software=dict(d.get("software", {})), holdout=d.get("holdout"),
        )
        vocab.validate(source)
        stored = d.get("fingerprint")
        if stored and stored != vocab.fingerprint():
            raise InputError(f"{source}: fingerprint {stored} does not match its merges ({vocab.fingerprint()}): file edited or corrupt")
        return vocab

    def validate(self, source: str = "<vocabulary>") -> None:
        """Merges must be usable in order: ids consecutive from V, pairs made of ids that exist."""
        for k, m in enumerate(self.merges):
            expected = self.codebook_size + k
            if m.id != expected:
                raise InputError(f"{source}: merge {k} has id {m.id}, expected {expected}")
            if not (0 <= m.pair[0] < m.id and 0 <= m.pair[1] < m.id):
                raise InputError(f"{source}: merge {m.id} uses pair {m.pair} with an id not yet defined")

    def save(self, path: str, options: StorageOptions | None = None) -> None:
        storage.write_text(path, json.dumps(self.to_json(), indent=1) + "\n", options)

    @staticmethod
    def load(path: str, options: StorageOptions | None = None) -> "Vocabulary":
        try:
            data = json.loads(storage.read_text(path, options))
        except json.JSONDecodeError as err:
            raise InputError(f"{path} is not valid JSON: {err}") from None
        return Vocabulary.from_json(data, source=path)
