"""The vocabulary file: what the contract (docs/bpe.md) says a vocabulary stores, as JSON (never pickle).

Format `vbpe-vocab` version 2. Floats are written with repr precision, so S and P round-trip
bit-exactly and a reloaded vocabulary replays the same merges.

The file carries its fingerprint: a hash of every field except `software` (versions of the
tools that wrote it, which do not change what it means), so an edited merge, offset, count,
quantizer fingerprint or setting is refused on load, and so is a file without one. The same
value names the vocabulary elsewhere (tokenized corpus versions, reports). Version 1 files
(their fingerprint covered V and the merge table only) are still read.
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
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
UNCOVERED = ("fingerprint", "software")  # the only fields the fingerprint leaves out


def content_fingerprint(body: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of the canonical JSON of every covered field."""
    covered = {k: v for k, v in body.items() if k not in UNCOVERED}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _merge_table_fingerprint_v1(codebook_size: int, table: np.ndarray) -> str:
    h = hashlib.sha256(f"{FORMAT_NAME}/1/V={codebook_size}/".encode())
    h.update(np.ascontiguousarray(table).tobytes())
    return h.hexdigest()[:16]


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
        """Identity of the vocabulary: every field but `software` (see the module docstring)."""
        return content_fingerprint(self._body())

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

    def _body(self) -> dict[str, Any]:
        corpus = asdict(self.corpus)
        corpus["shapes"] = [list(s) for s in self.corpus.shapes]
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
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

    def to_json(self) -> dict[str, Any]:
        body = self._body()
        head = {"format": body.pop("format"), "version": body.pop("version")}
        return {**head, "fingerprint": content_fingerprint({**head, **body}), **body}

    @staticmethod
    def from_json(d: Any, source: str = "<vocabulary>", verify: bool = True) -> "Vocabulary":
        """Parse and check a vocabulary; `verify=False` skips the fingerprint (for code that edits one on purpose)."""
        if not isinstance(d, dict):
            raise InputError(f"{source} is not a {FORMAT_NAME} file: it holds a JSON {type(d).__name__}, not an object")
        if d.get("format") != FORMAT_NAME:
            raise InputError(f"{source} is not a {FORMAT_NAME} file (format={d.get('format')!r})")
        version = d.get("version")
        if version not in READABLE_VERSIONS:
            raise InputError(f"{source} has {FORMAT_NAME} version {version!r}, this build reads {list(READABLE_VERSIONS)}")
        stored = d.get("fingerprint")
        if verify and (not stored or not isinstance(stored, str)):
            raise InputError(f"{source} has no fingerprint: the file was edited or is incomplete (learn it again)")
        if verify and version >= 2:
            try:
                actual = content_fingerprint(d)
            except (TypeError, ValueError) as err:
                raise InputError(f"{source}: unreadable vocabulary ({err})") from None
            if actual != stored:
                raise InputError(f"{source}: fingerprint {stored} does not match its contents ({actual}): file edited or corrupt")
        try:
            vocab = Vocabulary._parse(d)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{source}: malformed vocabulary ({type(err).__name__}: {err})") from None
        vocab.validate(source)
        if verify and version == 1 and _merge_table_fingerprint_v1(vocab.codebook_size, vocab.merge_table()) != stored:
            raise InputError(f"{source}: fingerprint {stored} does not match its merges: file edited or corrupt")
        return vocab

    @staticmethod
    def _parse(d: dict[str, Any]) -> "Vocabulary":
        c = d.get("corpus", {})
        corpus = CorpusStats(
            int(c.get("grids", 0)), int(c.get("cells", 0)), [tuple(map(int, s)) for s in c.get("shapes", [])],
            int(c.get("rejected", 0)), int(c.get("held_out", 0)), int(c.get("tokens_after", 0)),
            str(c.get("fingerprint", "")),
        )
        return Vocabulary(
            codebook_size=int(d["codebook_size"]), sigma=float(d["sigma"]), min_frequency=int(d["min_frequency"]),
            alpha=float(d["alpha"]), alpha_rel=None if d.get("alpha_rel") is None else float(d["alpha_rel"]),
            requested_merges=int(d.get("requested_merges", len(d["merges"]))),
            merges=[Merge.from_json(m) for m in d["merges"]], corpus=corpus,
            quantizer_fingerprint=d.get("quantizer_fingerprint"), stopped=str(d.get("stopped", "")),
            software=dict(d.get("software", {})), holdout=d.get("holdout"),
        )

    def validate(self, source: str = "<vocabulary>") -> None:
        """Merges must be usable in order: ids consecutive from V, pairs made of ids that exist."""
        for k, m in enumerate(self.merges):
            expected = self.codebook_size + k
            if m.id != expected:
                raise InputError(f"{source}: merge {k} has id {m.id}, expected {expected}")
            if not (0 <= m.pair[0] < m.id and 0 <= m.pair[1] < m.id):
                raise InputError(f"{source}: merge {m.id} uses pair {m.pair} with an id not yet defined")

    def save(self, path: str, options: StorageOptions | None = None) -> None:
        storage.write_text(path, json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n", options)

    @staticmethod
    def load(path: str, options: StorageOptions | None = None) -> "Vocabulary":
        try:
            data = json.loads(storage.read_text(path, options))
        except json.JSONDecodeError as err:
            raise InputError(f"{path} is not valid JSON: {err}") from None
        return Vocabulary.from_json(data, source=path)
