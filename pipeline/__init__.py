"""Visual BPE pipeline: ingest -> quantize -> learn -> tokenize -> train, plus report."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _numba_cache_dir() -> str:
    """A numba cache keyed by the source of every kernel module.

    numba invalidates a cached function only when its own file changes, not when a kernel it
    calls from another module does, so editing a shared kernel would silently run stale code.
    Hashing all kernel sources into the directory name makes any kernel change a fresh cache.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        text = path.read_bytes()
        if b"@njit" in text:
            digest.update(path.name.encode())
            digest.update(text)
    base = os.environ.get("VBPE_NUMBA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vbpe", "numba")
    return os.path.join(base, digest.hexdigest()[:16])


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
    try:  # numba may already be imported (its config is read at import time)
        import numba.core.config as _numba_config

        _numba_config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
    except ImportError:
        pass
