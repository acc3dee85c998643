"""Whole directories between local disk and storage (HF from_pretrained / save_pretrained need local dirs)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from pipeline import storage


@contextlib.contextmanager
def local_dir(path: str) -> Iterator[str]:
    """The directory itself when local; a temporary download of it when remote."""
    if not storage.is_remote(path):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no such directory: {path}")
        yield path
        return
    fs, p = storage.get_fs(path)
    if not fs.exists(p):
        raise FileNotFoundError(f"no such directory: {path}")
    with tempfile.TemporaryDirectory(prefix="vbpe-") as tmp:
        fs.get(p.rstrip("/") + "/", tmp, recursive=True)
        yield tmp


def publish_dir(local: str, dest: str) -> None:
    """Copy a finished directory to dest; locally it appears at once (copy beside it, then rename)."""
    if storage.is_remote(dest):
        fs, p = storage.get_fs(dest)
        if fs.exists(p):
            fs.rm(p, recursive=True)
        fs.put(local.rstrip("/") + "/", p, recursive=True)
        return
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    shutil.rmtree(staging)
    shutil.copytree(local, staging)
    if os.path.exists(dest):
        old = tempfile.mkdtemp(prefix=".old-", dir=parent)
        os.replace(dest, os.path.join(old, "d"))
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dest)
