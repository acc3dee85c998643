"""Writing a file so that readers only ever see it whole.

Local: write `.name.tmp-<pid>-<rand>` in the same directory, then rename (the leading dot keeps
pyarrow / DuckDB globs from picking up a half-written file). S3: an object appears only when its
upload completes, so we write in place and, on error, abort the upload instead of completing it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator

from pipeline import storage
from schemas.base import StorageOptions


@contextlib.contextmanager
def atomic_write(path: str, options: StorageOptions | None = None) -> Iterator:
    if storage.is_remote(path):
        fs, p = storage.get_fs(path, options)
        f = fs.open(p, "wb")
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()
            f.closed = True  # skip close(): it would upload what was written so far
            raise
        f.close()
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove(path: str, options: StorageOptions | None = None) -> None:
    fs, p = storage.get_fs(path, options)
    if fs.exists(p):
        fs.rm(p)


def remove_stale_temps(directory: str, max_age_seconds: float = 0.0) -> int:
    """Temp files of killed runs (local only; S3 never shows unfinished uploads)."""
    import time

    if storage.is_remote(directory) or not os.path.isdir(directory):
        return 0
    n = 0
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if name.startswith(".") and ".tmp-" in name and time.time() - os.path.getmtime(full) >= max_age_seconds:
            with contextlib.suppress(FileNotFoundError):
                os.remove(full)
                n += 1
    return n
