"""The run loop incremental stages (quantize, tokenize) share around their manifest (pipeline/manifest.py).

`Tally` is what a run did with its inputs (the counts both stages report); `InputRun` opens the run
(stale temp files removed, each input's identity read, inputs already done skipped) and records each
outcome the moment it is known: an input's files, then its entry; a failure is an entry too, so the
next run retries it. Once the store is unreachable the run stops starting inputs (they are
`not_attempted`, left for the next run) instead of each waiting out its timeouts, and `finish()`
rewrites manifest.json unless the store is still down (the entry files already hold every commit).
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pipeline import storage
from pipeline.execution import error_text
from pipeline.manifest import Manifest
from schemas.base import StorageOptions

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Tally:
    inputs: int = 0
    skipped: int = 0  # done by an earlier run, with the same identity
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # input URL -> one-line error
    not_attempted: int = 0  # left for the next run after the store became unreachable
    rows_in: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    totals: dict[str, int] = field(default_factory=dict)  # over every run of these inputs (the manifest's)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_attempted

    def count_lines(self, noun: str, rate: str = "") -> list[str]:
        """The two lines every incremental stage starts its summary with."""
        left = f", {self.not_attempted} left for the next run" if self.not_attempted else ""
        return [f"{noun}: {self.inputs} ({self.done} done now, {self.skipped} already done, {len(self.failed)} failed{left})",
                f"this run: rows in {self.rows_in} = written {self.rows_written} + rejected {self.rows_rejected}{rate}"]

    def failure_lines(self) -> list[str]:
        return [f"FAILED {url}: {err}" for url, err in self.failed.items()]


class InputRun:
    """One run over `urls` against `manifest`: which inputs to do, and each outcome recorded as it comes."""

    def __init__(self, manifest: Manifest, urls: list[str], tally: Tally, options: StorageOptions | None,
                 output_dirs: Iterable[str] = ()):
        for d in (*output_dirs, manifest.entries_dir):
            storage.remove_stale_temps(d)  # left by killed runs; a live writer's temp files are kept
        self.manifest, self.tally = manifest, tally
        self.identities = {u: storage.identity(u, options) for u in urls}
        self.todo = [u for u in urls if not manifest.is_done(u, self.identities[u])]
        tally.inputs, tally.skipped = len(urls), len(urls) - len(self.todo)
        self.count = 0
        self.stopped = False
        manifest.save()

    def _progress(self) -> str:
        return f"[{self.count}/{len(self.todo)}]"

    def fail(self, url: str, error: str, unavailable: bool = False, **entry: Any) -> None:
        """Record `url` as failed (its entry too, unless the store is what failed)."""
        self.count += 1
        self._fail(url, error, unavailable, entry)

    def _fail(self, url: str, error: str, unavailable: bool, entry: dict[str, Any]) -> None:
        self.tally.failed[url] = error
        log.warning("%s FAILED %s: %s", self._progress(), url, error)
        if unavailable:
            self._stop()
            return
        try:
            self.manifest.commit(url, "failed", identity=self.identities.get(url), error=error, **entry)
        except Exception as err:
            log.warning("could not record the failure of %s: %s", url, error_text(err))
            if storage.unavailable_cause(err) is not None:
                self._stop()

    def commit(self, url: str, rows_in: int, rows_written: int, rows_rejected: int, reasons: dict[str, int] | None = None,
               write: Callable[[], None] | None = None, **entry: Any) -> bool:
        """`write()` the input's files (when the driver writes them), then its `done` entry; False if either failed."""
        self.count += 1
        try:
            if write is not None:
                write()
            self.manifest.commit(url, "done", identity=self.identities.get(url), rows_in=rows_in,
                                 rows_written=rows_written, rows_rejected=rows_rejected, **entry)
        except Exception as err:
            self._fail(url, f"could not write its output: {error_text(err)}", storage.unavailable_cause(err) is not None,
                       {k: v for k, v in entry.items() if k not in ("output", "rejects")})
            return False
        t = self.tally
        t.done += 1
        t.rows_in += rows_in
        t.rows_written += rows_written
        t.rows_rejected += rows_rejected
        t.reasons.update(reasons or {})
        log.info("%s %s: %d written, %d rejected", self._progress(), url, rows_written, rows_rejected)
        return True

    def _stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.tally.not_attempted = len(self.todo) - self.count
            log.warning("storage unreachable: stopping; %d inputs left for the next run", self.tally.not_attempted)

    def finish(self, urls: list[str] | None = None, then: Callable[[], None] | None = None) -> None:
        """Rewrite manifest.json (and `then()`, e.g. an index) unless the store is down; fill in the totals."""
        try:
            self.manifest.save()
            if then is not None:
                then()
        except Exception as err:
            if storage.unavailable_cause(err) is None:
                raise
            log.warning("could not rewrite %s (%s); the entries committed so far are in %s", self.manifest.path,
                        error_text(err), self.manifest.entries_dir)
        self.tally.totals = self.manifest.totals(urls)
