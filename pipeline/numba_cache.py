"""numba's on-disk cache of this package's kernels, keyed by what the kernels are, not by where they live.

numba files a cached kernel under a hash of its source file's directory, so the same code elsewhere
(the copy of the working directory a Ray job unpacks, afresh on every cluster, or a second checkout)
compiles everything again, in every process that uses the kernels. Kernels of this package are filed
under their directory inside the package instead. That is safe because the cache directory is keyed
by the content of every kernel module (pipeline/__init__.py) and numba checks each file's own content.
Kernel modules import `njit` from here, so the locator is in place before their first kernel.
"""
from __future__ import annotations

import os

from numba import njit
from numba.core import caching, config

__all__ = ["njit"]

_ROOT = os.path.dirname(os.path.abspath(__file__))


class PackageCacheLocator(caching.UserProvidedCacheLocator):
    """For a file of this package: <cache dir>/pipeline/<its directory relative to the package>."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        inside = os.path.relpath(os.path.dirname(os.path.abspath(py_file)), _ROOT)
        self._cache_path = os.path.normpath(os.path.join(config.CACHE_DIR, "pipeline", inside))

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.commonpath([_ROOT, os.path.abspath(py_file)]) != _ROOT:
            return None  # not ours: numba's own locators decide
        return super().from_function(py_func, py_file)


if PackageCacheLocator not in caching.CacheImpl._locator_classes:
    caching.CacheImpl._locator_classes.insert(0, PackageCacheLocator)
