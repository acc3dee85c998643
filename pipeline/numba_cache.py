"""numba's on-disk cache of this package's kernels, keyed by what the kernels are, not by where they live.

numba files a cached kernel under a hash of its source file's directory, so the same code elsewhere
(the copy of the working directory a Ray job unpacks, afresh on every cluster, or a second checkout)
compiles everything again, in every process that uses the kernels. Kernels of this package are filed
under their directory inside the package instead. That is safe because the cache directory is keyed
by the content of every kernel module (pipeline/__init__.py) and numba checks each file's own content.
Kernel modules import `njit` from here: numba is imported, and the locator installed, when the first
kernel compiles (`Kernel`).
"""
from __future__ import annotations

import os

__all__ = ["njit", "Kernel"]

_ROOT = os.path.dirname(os.path.abspath(__file__))
_numba_njit = None


def _numba():
    """numba's njit, imported (and the package's cache locator installed) on the first compile."""
    global _numba_njit
    if _numba_njit is None:
        from numba import njit as numba_njit
        from numba.core import caching, config

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

        if not any(c.__name__ == "PackageCacheLocator" for c in caching.CacheImpl._locator_classes):
            caching.CacheImpl._locator_classes.insert(0, PackageCacheLocator)
        _numba_njit = numba_njit
    return _numba_njit


class Kernel:
    """An @njit function whose numba dispatcher is made on its first use, from Python or from
    another kernel being compiled. So a process that only imports kernel modules, like the
    learner's driver on Ray (its actors do the work), never loads numba and LLVM (~65 MB RSS).

    numba sees a kernel through the dispatcher: `_numba_type_` types it where another kernel calls
    it, `targetoptions` and `py_func` let numba's inliner honour inline="always"."""

    def __init__(self, py_func, options: dict):
        self.py_func = py_func
        self.options = dict(options)
        self.targetoptions = {"inline": options["inline"]} if "inline" in options else {}
        self.__name__, self.__qualname__, self.__doc__ = py_func.__name__, py_func.__qualname__, py_func.__doc__
        self.__module__ = py_func.__module__
        self._dispatcher = None

    @property
    def dispatcher(self):
        if self._dispatcher is None:
            self._dispatcher = _numba()(**self.options)(self.py_func)
        return self._dispatcher

    @property
    def _numba_type_(self):
        return self.dispatcher._numba_type_

    def __call__(self, *args):
        return self.dispatcher(*args)

    def __repr__(self) -> str:
        return f"Kernel({self.__module__}.{self.__qualname__})"


def njit(fn=None, **options):
    """numba.njit, deferred (`Kernel`): `@njit(cache=True)` or `@njit`."""
    if fn is not None:
        return Kernel(fn, options)
    return lambda f: Kernel(f, options)
