"""One way to reach data: local paths, directories, globs, brace lists and s3:// URLs (fsspec).

Everything that writes goes through `atomic_write`: readers only ever see whole files (local:
a hidden temp file in the same directory, then a rename; S3: an object appears only when its
upload completes, and a failed write aborts the upload instead of completing it). Output names,
URL canonicalisation, directory put/get and the clean-up of temp files left by killed runs live
here too, so no stage re-does them.

S3 settings come per call from `StorageOptions` (a config's `storage` section; empty fields fall
back to the usual AWS_* variables): connect/read timeouts and a bounded number of attempts, each
retry logged as one line, so an unreachable or hung endpoint ends a run instead of stalling it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import re
import secrets
import shutil
import socket
import tempfile
import time
from typing import Any, Iterable, Iterator

import fsspec
from fsspec.core import url_to_fs

from schemas.base import StorageOptions

log = logging.getLogger("vbpe.storage")

_GLOB_CHARS = re.compile(r"[*?\[]")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIX = ".parquet"
_NAME_SUFFIXES = (PARQUET_SUFFIX, *SHARD_SUFFIXES)
_HOST = re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname())[:32] or "host"
# Temp files: `.<name>.tmp-<host>-<pid>-<random>` (older runs wrote `.<name>.tmp-<pid>-<random>`).
_TEMP = re.compile(r"^\..+\.tmp-(?:(?P<host>[A-Za-z0-9_]+)-)?(?P<pid>\d+)(?:-[0-9a-f]+)?$")


class StorageUnavailable(OSError):
    """The store could not be reached (connection refused, timeouts) after the configured attempts."""


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _is_s3(path: str) -> bool:
    return path.startswith(("s3://", "s3a://"))


# ---------------------------------------------------------------------------------------------- S3

_sessions: dict[int, Any] = {}


def _retry_logger(max_attempts: int):
    last: list[Any] = [None]

    def on_needs_retry(attempts: int = 0, caught_exception: BaseException | None = None, response: Any = None,
                       operation: Any = None, **_: Any) -> None:
        if caught_exception is not None:
            what = f"{type(caught_exception).__name__}: {caught_exception}"
        else:
            status = (response[0].status_code if response and response[0] is not None else None)
            if status is None or status < 500 and status != 429:
                return
            what = f"HTTP {status}"
        op = getattr(operation, "name", "request")
        key = (op, what, min(attempts, max_attempts))
        if key == last[0]:  # the last attempt is reported twice by botocore's retry handlers
            return
        last[0] = key
        if attempts < max_attempts:
            log.warning("S3 %s failed (%s); attempt %d of %d, retrying", op, what, attempts, max_attempts)
        else:
            log.warning("S3 %s failed (%s); attempt %d of %d, no retries left", op, what, min(attempts, max_attempts),
                        max_attempts)
    return on_needs_retry


def _no_expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Uploads wait for "100 Continue" with no timeout at all: a hung store would hold them forever."""
    params.get("headers", {}).pop("Expect", None)


def _session(max_attempts: int):
    """One aiobotocore session per attempt limit: every retry logged, no upload waits without a timeout."""
    if max_attempts not in _sessions:
        from aiobotocore.session import AioSession

        session = AioSession()
        session.register("needs-retry.s3", _retry_logger(max_attempts))
        session.register("before-call.s3", _no_expect_continue)  # after the built-in handler that adds it
        _sessions[max_attempts] = session
    return _sessions[max_attempts]


def _options(path: str, options: StorageOptions | None) -> StorageOptions:
    """The caller's options; without them, the defaults (AWS_* variables). There is no process-wide default:
    every stage passes its config's `storage` on every call."""
    return options if options is not None else StorageOptions()


def get_fs(path: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    if not _is_s3(path):
        return url_to_fs(path)
    opts = _options(path, options)
    fs, p = url_to_fs(path, **opts.fsspec_kwargs())
    if getattr(fs, "_vbpe_hooked", False) is False:
        fs.retries = opts.fs_retries
        if fs.session is None:  # before its first request: use a session that logs retries
            fs.session = _session(opts.max_attempts)
            fs._session_is_owned = False
        fs._vbpe_hooked = True
    return fs, p


def unavailable_cause(err: BaseException) -> BaseException | None:
    """The connection / timeout error behind `err` (following causes and contexts), if there is one."""
    try:
        from botocore.exceptions import ConnectionClosedError, ConnectionError as BotoConnectionError, ReadTimeoutError
    except ImportError:  # pragma: no cover - botocore is a dependency of s3fs
        return None
    kinds: tuple[type[BaseException], ...] = (BotoConnectionError, ReadTimeoutError, ConnectionClosedError,
                                              StorageUnavailable)
    try:
        from fsspec.exceptions import FSTimeoutError

        kinds += (FSTimeoutError,)
    except ImportError:  # pragma: no cover
        pass
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kinds):
            return e
        stack.extend([e.__cause__, e.__context__, getattr(e, "cause", None)])
    return None


# ------------------------------------------------------------------------------------------ reading


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


def expand(paths: Iterable[str], suffixes: tuple[str, ...], options: StorageOptions | None = None,
           fresh: bool = False) -> list[str]:
    """Files named by `paths` (files, dirs searched recursively, globs, {a,b} and {000..009} lists).

    Returns full URLs for remote paths, sorted and de-duplicated so every run sees the same order.
    A name that matches nothing is an error: silently reading fewer inputs loses data. `fresh`
    drops fsspec's cached S3 listings first (a long-lived process must see files added since).
    """
    found: list[str] = []
    for raw in paths:
        for path in _unbrace(str(raw)):
            fs, p = get_fs(path, options)
            if fresh and is_remote(path):
                fs.invalidate_cache()
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
    """A file to read; for "wb", `atomic_write(path)` (use it in a `with` block: nobody sees half a file)."""
    if mode == "wb":
        return atomic_write(path, options)
    if "r" not in mode or "+" in mode:
        raise ValueError(f"open_file mode {mode!r}: read, or write whole files with 'wb'")
    fs, p = get_fs(path, options)
    return fs.open(p, mode)


def read_bytes(path: str, options: StorageOptions | None = None) -> bytes:
    with open_file(path, "rb", options) as f:
        return f.read()


def read_text(path: str, options: StorageOptions | None = None) -> str:
    return read_bytes(path, options).decode("utf-8")


def exists(path: str, options: StorageOptions | None = None) -> bool:
    fs, p = get_fs(path, options)
    return fs.exists(p)


def identity(path: str, options: StorageOptions | None = None) -> dict[str, Any]:
    """Size plus the store's modification stamp (ETag on S3, mtime locally): changes when the file is rewritten."""
    fs, p = get_fs(path, options)
    info = fs.info(p)
    stamp = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    return {"size": int(info.get("size") or 0), "stamp": str(stamp).strip('"') if stamp is not None else None}


# ------------------------------------------------------------------------------------------ writing


def _temp_name(path: str) -> str:
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_write(path: str, options: StorageOptions | None = None) -> Iterator[Any]:
    """A binary file object for `path` that becomes visible only if the block ends without an error."""
    if is_remote(path):
        fs, p = get_fs(path, options)
        f = fs.open(p, "wb")
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()  # abort the multipart upload
            f.closed = True  # skip close(): it would upload what was written so far
            raise
        f.close()
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes, options: StorageOptions | None = None) -> None:
    with atomic_write(path, options) as f:
        f.write(data)


def write_text(path: str, text: str, options: StorageOptions | None = None) -> None:
    write_bytes(path, text.encode("utf-8"), options)


def write_parquet(table: Any, path: str, options: StorageOptions | None = None, compression: str = "zstd",
                  **kwargs: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_write(path, options) as f:
        pq.write_table(table, f, compression=compression, **kwargs)


def remove(path: str, options: StorageOptions | None = None) -> bool:
    """Delete a file if it exists; True if it did."""
    fs, p = get_fs(path, options)
    if not fs.exists(p):
        return False
    fs.rm(p)
    return True


def makedirs(path: str, options: StorageOptions | None = None) -> None:
    if not is_remote(path):  # object stores have no directories
        os.makedirs(path, exist_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: str, max_age_seconds: float = 3600.0) -> int:
    """Temp files of killed runs (local only: S3 never shows an unfinished upload); returns how many went.

    A temp file of this host whose process is gone is removed at once; one of another host (a shared
    file system) or of the old naming only when older than `max_age_seconds`, since its writer may live.
    """
    if is_remote(directory) or not os.path.isdir(directory):
        return 0
    removed = 0
    now = time.time()
    for name in os.listdir(directory):
        m = _TEMP.match(name)
        if not m:
            continue
        full = os.path.join(directory, name)
        host, pid = m.group("host"), int(m.group("pid"))
        try:
            if host == _HOST:
                stale = not _pid_alive(pid)
            else:
                stale = now - os.path.getmtime(full) >= max_age_seconds
            if stale:
                os.remove(full)
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d temp files left by killed runs in %s", removed, directory)
    return removed


# ------------------------------------------------------------------------------------ directories


@contextlib.contextmanager
def local_dir(path: str, options: StorageOptions | None = None) -> Iterator[str]:
    """The directory itself when local; a temporary download of it when remote (removed afterwards)."""
    if not is_remote(path):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no such directory: {path}")
        yield path
        return
    fs, p = get_fs(path, options)
    if not fs.exists(p):
        raise FileNotFoundError(f"no such directory: {path}")
    with tempfile.TemporaryDirectory(prefix="vbpe-") as tmp:
        fs.get(p.rstrip("/") + "/", tmp, recursive=True)
        yield tmp


def put_dir(local: str, dest: str, options: StorageOptions | None = None) -> None:
    """Copy a finished local directory to `dest`, replacing what was there.

    Locally the new directory appears at once (copied beside it, then renamed into place); on S3,
    objects are uploaded one by one (each whole) after the old ones are removed.
    """
    if is_remote(dest):
        fs, p = get_fs(dest, options)
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


# ------------------------------------------------------------------------------------------- names


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def canonical_url(path: str) -> str:
    """The key an input is known by in manifests: its URL, or its absolute local path."""
    return path if is_remote(path) else os.path.abspath(path)


def output_name(url: str, suffix: str = PARQUET_SUFFIX) -> str:
    """Readable and collision-free across directories: the input's stem plus a hash of its full URL."""
    base = posixpath.basename(url.rstrip("/"))
    for s in _NAME_SUFFIXES:
        if base.endswith(s):
            base = base[: -len(s)]
            break
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._") or "input"
    return f"{base}-{hashlib.sha1(url.encode()).hexdigest()[:8]}{suffix}"
