"""Write WebDataset tar shards: members of a sample contiguous, fixed metadata so equal input gives equal bytes."""
from __future__ import annotations

import io
import os
import tarfile
from typing import Iterable

from pipeline import storage
from schemas.base import StorageOptions


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_shard(path: str, samples: Iterable[tuple[str, dict[str, bytes]]], options: StorageOptions | None = None) -> int:
    """Write one shard (local or s3://), whole or not at all; returns its size in bytes.

    A local shard that already holds exactly these bytes is left alone, so rebuilding a corpus does not
    make every stage that tracks its inputs' identity (size + mtime) redo it.
    """
    data = tar_bytes(samples)
    if not storage.is_remote(path) and os.path.isfile(path) and os.path.getsize(path) == len(data):
        with open(path, "rb") as f:
            if f.read() == data:
                return len(data)
    storage.write_bytes(path, data, options)
    return len(data)
