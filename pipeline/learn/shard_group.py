"""A slice of the corpus read into memory as shards, and its checkpoint state.

`ShardGroup` owns the grids of global rows [start, stop): it reads and validates them and holds
them as `bpe.shard.GridShards` (count/merge/segmentation). In local mode the driver holds one
group; with Ray each actor holds one (distributed.py).

Checkpoint state is the segmentation itself: for every accepted grid its row, shape, the anchor
(within the grid) of every cell and the token of every cell. Files cover row ranges, so a
checkpoint written with W workers resumes with any other W.
"""
from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipeline import storage
from pipeline.bpe.shard import GridShards
from pipeline.codegrids import Corpus, Grids, Reject, holdout_mask, read_rows, select
from schemas.base import InputError, StorageOptions

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What a group read: counted grids and cells, shapes, rejects, and its share of the fingerprint."""

    rows: int = 0
    grids: int = 0
    held_out: int = 0
    cells: int = 0
    shapes: Counter = field(default_factory=Counter)
    rejects: list[Reject] = field(default_factory=list)
    fingerprint_sum: int = 0
    key_hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))  # of accepted grids, to find duplicates

    @property
    def duplicate_keys(self) -> int:
        """Accepted grids whose key another accepted grid already has."""
        return int(self.key_hashes.shape[0] - np.unique(self.key_hashes).shape[0])

    def merge(self, other: "LoadReport") -> None:
        self.rows += other.rows
        self.grids += other.grids
        self.held_out += other.held_out
        self.cells += other.cells
        self.shapes.update(other.shapes)
        self.rejects.extend(other.rejects)
        self.fingerprint_sum = (self.fingerprint_sum + other.fingerprint_sum) % (1 << 64)
        self.key_hashes = np.concatenate([self.key_hashes, other.key_hashes])


class ShardGroup(GridShards):
    @classmethod
    def read(cls, corpus: Corpus, start: int, stop: int, shard_cells: int, options: StorageOptions | None = None,
             state_dir: str | None = None, holdout: tuple[float, str] | None = None) -> "ShardGroup":
        grids = read_rows(corpus, start, stop, options)
        return_freed_memory()
        held_out = 0
        if holdout and holdout[0] > 0:
            keep = ~holdout_mask(grids.keys, *holdout)
            held_out = int((~keep).sum())
            grids = select(grids, keep)
        group = cls(grids, corpus.codebook_size, start, stop, shard_cells, options, state_dir)
        group.report.held_out = held_out
        return group

    def __init__(self, grids: Grids, codebook_size: int, start: int, stop: int, shard_cells: int = 1 << 24,
                 options: StorageOptions | None = None, state_dir: str | None = None):
        """The grids of rows [start, stop) (`grids.rows` are their global row numbers)."""
        self.start, self.stop, self.options = start, stop, options
        self.report = LoadReport(
            rows=stop - start, grids=len(grids), cells=int(grids.offsets[-1]),
            shapes=Counter(zip(grids.heights.tolist(), grids.widths.tolist())),
            rejects=grids.rejects, fingerprint_sum=grids.fingerprint_sum(), key_hashes=_key_hashes(grids.keys),
        )
        self.rows = grids.rows
        state = load_state(state_dir, grids, options) if state_dir else (None, None)
        super().__init__(grids.codes, grids.heights, grids.widths, codebook_size, shard_cells, *state)
        del grids
        return_freed_memory()

    def save_state(self, directory: str) -> str:
        """Write this group's segmentation to <directory>/state-<start>-<stop>.npz; returns the path."""
        owner, tok = self.local_state()
        buf = io.BytesIO()
        np.savez(buf, rows=self.rows, heights=self.heights, widths=self.widths, owner=owner, tok=tok)
        path = storage.join(directory, f"state-{self.start:012d}-{self.stop:012d}.npz")
        with storage.open_file(path, "wb", self.options) as f:
            f.write(buf.getvalue())
        return path


def return_freed_memory() -> None:
    """Give the memory freed after reading back to the system: Arrow's allocator and glibc keep freed
    blocks for reuse (~0.3 GB per 50K grids here), which the learner never reuses but a process's
    peak, and the host, would still carry for the whole run."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    """glibc through ctypes, or None where the C library is another one."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
LARGE_BLOCK = 256 * 1024


def map_large_blocks() -> None:
    """Make glibc give every block of 256 KB or more its own mapping, returned when it is freed.

    By default glibc raises that threshold (up to 32 MB) after a large block is freed, so the
    merge loop's per-step arrays of a few MB then come from the heap, where freed blocks stay
    resident: ~0.2 GB per learner actor at 100K grids (docs/pitfalls.md). Call it once, early,
    in a process that holds a learner's structures."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)
        libc.mallopt(M_TRIM_THRESHOLD, 4 * LARGE_BLOCK)


def _key_hashes(keys: list[str]) -> np.ndarray:
    digest = b"".join(hashlib.blake2b(k.encode(), digest_size=8).digest() for k in keys)
    return np.frombuffer(digest, np.uint64).copy()


def load_state(directory: str, grids: Grids, options: StorageOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grid-local owners and tokens of `grids` (concatenated), from every state file covering their rows."""
    fs, p = storage.get_fs(directory, options)
    files = sorted(fs.glob(storage.join(p, "state-*.npz")))
    need = grids.rows
    lo, hi = (int(need.min()), int(need.max()) + 1) if need.size else (0, 0)
    owners, toks, rows = [], [], []
    for f in files:
        r0, r1 = (int(x) for x in f.rsplit("/", 1)[-1][len("state-"):-len(".npz")].split("-"))
        if r1 <= lo or r0 >= hi:
            continue
        with fs.open(f, "rb") as fh:
            data = fh.read()
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                # NpzFile decodes an array on every z[name]: take each one once.
                f_rows, f_owner, f_tok = z["rows"], z["owner"], z["tok"]
                sizes = z["heights"].astype(np.int64) * z["widths"]
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise InputError(f"checkpoint state {f} is corrupt ({type(err).__name__}: {err}); delete {directory} "
                             f"and its checkpoint.json to start over") from None
        if f_owner.shape != f_tok.shape or int(sizes.sum()) != f_owner.shape[0] or f_rows.shape != sizes.shape:
            raise InputError(f"checkpoint state {f} is inconsistent (arrays of different lengths): delete {directory} "
                             f"and its checkpoint.json to start over")
        starts = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=starts[1:])
        for i in np.flatnonzero(np.isin(f_rows, need)):
            owners.append(f_owner[starts[i] : starts[i + 1]])
            toks.append(f_tok[starts[i] : starts[i + 1]])
            rows.append(int(f_rows[i]))
    order = np.argsort(np.array(rows, np.int64), kind="stable")
    if len(rows) != len(need) or not np.array_equal(np.array(rows, np.int64)[order], need):
        raise InputError(f"checkpoint {directory} does not cover the grids being loaded: inputs changed since it was written")
    owner = np.concatenate([owners[i] for i in order]) if rows else np.empty(0, np.int32)
    tok = np.concatenate([toks[i] for i in order]) if rows else np.empty(0, np.int32)
    if owner.shape[0] != grids.codes.shape[0]:
        raise InputError(f"checkpoint {directory} has grids of other shapes than the inputs: inputs changed")
    return owner.astype(np.int32), tok.astype(np.int32)
