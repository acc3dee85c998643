"""One way to reach data: local paths, directories, globs, brace lists and s3:// URLs (fsspec).

S3 settings come from `StorageOptions` (config) or the standard AWS_* variables, so the same
code runs against AWS, MinIO or a moto server on loopback.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable

import fsspec
from fsspec.core import url_to_fs

from schemas.base import StorageOptions

_GLOB_CHARS = re.compile(r"[*?\[]")
_default_options: StorageOptions | None = None


def set_default_storage(options: StorageOptions | None) -> None:
    """Used by entrypoints so that every later call sees the config's S3 settings."""
    global _default_options
    _default_options = options


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _kwargs_for(path: str, options: StorageOptions | None) -> dict[str, Any]:
    opts = options or _default_options
    if not path.startswith(("s3://", "s3a://")):
        return {}
    if opts is None:
        opts = StorageOptions(endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))
    return opts.fsspec_kwargs()


def get_fs(path: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(path, **_kwargs_for(path, options))


def _unbrace(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    out: list[str] = []
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    parts = (
        [str(i).zfill(len(rng.group(1))) for i in range(int(rng.group(1)), int(rng.group(2)) + 1)]
        if rng
        else body.split(",")
    )
    for part in parts:
        out.extend(_unbrace(head + part + tail))
    return out


def expand(paths: Iterable[str], suffixes: tuple[str, ...], options: StorageOptions | None = None) -> list[str]:
    """Files named by `paths` (files, dirs searched recursively, globs, {a,b} and {000..009} lists).

    Returns full URLs for remote paths, sorted and de-duplicated so every run sees the same order.
    A name that matches nothing is an error: silently reading fewer inputs loses data.
    """
    found: list[str] = []
    for raw in paths:
        for path in _unbrace(str(raw)):
            fs, p = get_fs(path, options)
            proto = path.split("://", 1)[0] + "://" if is_remote(path) else ""
            if _GLOB_CHARS.search(p):
                hits = [h for h in fs.glob(p) if not fs.isdir(h)]
            elif fs.isdir(p):
                hits = [h for h in fs.find(p) if h.endswith(suffixes)]
            elif fs.exists(p):
                hits = [p]
            else:
                raise FileNotFoundError(f"no such file or directory: {path}")
            if not hits:
                raise FileNotFoundError(f"{path} matches no {'/'.join(suffixes)} files")
            found.extend(proto + h if proto and not h.startswith(proto) else h for h in hits)
    return sorted(set(found))


def open_file(path: str, mode: str = "rb", options: StorageOptions | None = None):
    fs, p = get_fs(path, options)
    if "w" in mode and not is_remote(path):
        fs.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    return fs.open(p, mode)


def read_text(path: str, options: StorageOptions | None = None) -> str:
    with open_file(path, "rb", options) as f:
        return f.read().decode("utf-8")


def write_text(path: str, text: str, options: StorageOptions | None = None) -> None:
    """Write whole-file text atomically where the filesystem allows (local: write then rename)."""
    if is_remote(path):
        with open_file(path, "wb", options) as f:
            f.write(text.encode("utf-8"))
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def exists(path: str, options: StorageOptions | None = None) -> bool:
    fs, p = get_fs(path, options)
    return fs.exists(p)


def makedirs(path: str, options: StorageOptions | None = None) -> None:
    fs, p = get_fs(path, options)
    if not is_remote(path):
        fs.makedirs(p, exist_ok=True)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)
