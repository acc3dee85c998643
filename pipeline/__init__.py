"""Visual BPE pipeline: ingest -> quantize -> learn -> tokenize -> train, plus report."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def _numba_cache_dir(root: Path = Path(__file__).parent) -> str:
    """A numba cache keyed by the source of every kernel module.

    numba invalidates a cached function only when its own file changes, not when a kernel it
    calls from another module (or a global array it froze in) does, so editing a shared kernel or
    constant would silently run stale code. Hashing every file that holds kernels (`@njit`) or
    constants compiled into them (marked "numba: compiled in") makes any such change a fresh cache.
    """
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        text = path.read_bytes()
        if b"@njit" in text or b"numba: compiled in" in text:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(text)
    base = os.environ.get("VBPE_NUMBA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vbpe", "numba")
    return os.path.join(base, digest.hexdigest()[:16])


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
    if "numba" in sys.modules:  # numba reads its config at import time; importing it here would load it for every user
        import numba.core.config as _numba_config

        _numba_config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
