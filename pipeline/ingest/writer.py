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
    """Write one shard (local or s3://); returns its size in bytes."""
    data = tar_bytes(samples)
    if storage.is_remote(path):
        with storage.open_file(path, "wb", options) as f:
            f.write(data)
        return len(data)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)
