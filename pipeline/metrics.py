"""Run metrics any stage can record: counts, time, throughput, peak memory, structured log lines.

A stage wraps its work in `StageMetrics` (a context manager). On exit, success or failure, it
writes one small JSON file next to the stage's outputs and logs one JSON line per event, so a
scheduler, a dashboard or a person with `jq` can tell what a run did without parsing prose:

    with StageMetrics("learn", metrics_path(out)) as m:
        m.add(rows_in=n, rows_rejected=r)
        for k in progress(range(merges), "merges", stage="learn"):
            ...
        m.set(merges=k + 1)

The stage runner (pipeline/runner.py) opens one for every stage run; code inside the run reaches
it with `current()` (counts recorded before a failure still reach the file). A run refused before
it recorded anything (bad config or input: nothing was done) writes no file.

Memory is this process's resident set (sampled by a background thread, plus the kernel's
high-water mark); work done in other processes (Ray workers) is not included.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import json
import math
import logging
import os
import resource
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

import psutil

from pipeline import storage

T = TypeVar("T")
FORMAT = "vbpe.metrics.v1"
LOG = logging.getLogger("vbpe.metrics")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def jsonable(value: Any) -> Any:
    """JSON-safe copy: str keys (a tuple key becomes "a|b"), numpy values as Python ones, NaN/inf as None."""
    if isinstance(value, dict):
        return {(("|".join(map(str, k))) if isinstance(k, tuple) else str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def log_event(event: str, logger: logging.Logger | None = None, level: int = logging.INFO, **fields: Any) -> dict[str, Any]:
    """One structured line: a JSON object with `event`, `ts` and the given fields. Returns the object."""
    record = {"event": event, "ts": _now(), **jsonable(fields)}
    (logger or LOG).log(level, "%s", json.dumps(record, sort_keys=False, default=str))
    return record


def metrics_path(output: str) -> str:
    """Where the metrics of a stage writing `output` go (the stage runner uses this for every stage).

    A directory (existing, or named with a trailing '/', or without a file extension) gets
    `<output>/metrics.json`; a file gets `<stem>.metrics.json` beside it (vocab.json -> vocab.metrics.json).
    """
    stripped = output.rstrip("/")
    base = stripped.rsplit("/", 1)[-1]
    is_dir = output.endswith("/") or "." not in base
    if not is_dir and not storage.is_remote(output):
        is_dir = os.path.isdir(output)
    if is_dir:
        return storage.join(stripped, "metrics.json")
    return f"{stripped[: len(stripped) - len(base)]}{base.rsplit('.', 1)[0]}.metrics.json"


_current: contextvars.ContextVar["StageMetrics | None"] = contextvars.ContextVar("vbpe_stage_metrics", default=None)


def current() -> "StageMetrics":
    """The metrics of the stage run in progress (a detached one, written nowhere, outside of a run)."""
    m = _current.get()
    return m if m is not None else StageMetrics("detached")


class _RssSampler(threading.Thread):
    """Samples this process's RSS so a stage reports its own peak, not the process's lifetime peak."""

    def __init__(self, interval: float):
        super().__init__(name="vbpe-rss-sampler", daemon=True)
        self.interval = interval
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop_event = threading.Event()

    def sample(self) -> int:
        rss = self.proc.memory_info().rss
        self.peak = max(self.peak, rss)
        return rss

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> int:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
        return self.sample()


class StageMetrics:
    """Counts and timings of one stage run, written as JSON (`path`) when the `with` block ends.

    Counters: rows_in / rows_out / rows_rejected (the invariant in = out + rejected is checked
    and reported, not enforced), optional merges. `set()` adds any JSON-able stage-specific
    figure. A failure inside the block is recorded (status "failed", the error) and re-raised;
    an exception of a `refusals` type before anything was recorded writes no file.
    """

    def __init__(self, stage: str, path: str | None = None, logger: logging.Logger | None = None,
                 sample_interval: float = 0.2, refusals: tuple[type[BaseException], ...] = (),
                 storage_options: Any = None, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.process_time, **fields: Any):
        self.stage = stage
        self.path = path
        self.logger = logger or LOG
        self.sample_interval = sample_interval
        self.rows_in = 0
        self.rows_out = 0
        self.rows_rejected = 0
        self.merges: int | None = None
        self.fields: dict[str, Any] = dict(fields)
        self.result: dict[str, Any] | None = None
        self.refusals = refusals
        self.storage_options = storage_options
        self.touched = False
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._token: contextvars.Token | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._sampler: _RssSampler | None = None

    def add(self, rows_in: int = 0, rows_out: int = 0, rows_rejected: int = 0) -> None:
        self.touched = True
        self.rows_in += int(rows_in)
        self.rows_out += int(rows_out)
        self.rows_rejected += int(rows_rejected)

    def set(self, merges: int | None = None, **fields: Any) -> None:
        self.touched = True
        if merges is not None:
            self.merges = int(merges)
        self.fields.update(fields)

    def event(self, name: str, **fields: Any) -> dict[str, Any]:
        """A structured log line tagged with this stage and the seconds since it started."""
        return log_event(name, self.logger, stage=self.stage, elapsed_s=round(self.elapsed, 3), **fields)

    @property
    def elapsed(self) -> float:
        return self._clock() - self._t0 if self._t0 else 0.0

    def __enter__(self) -> "StageMetrics":
        self.started_at = _now()
        self._t0 = self._clock()
        self._cpu0 = self._cpu_clock()
        self._sampler = _RssSampler(self.sample_interval)
        self._rss0 = self._sampler.peak
        self._sampler.start()
        self._token = _current.set(self)
        self.event("stage_start", pid=os.getpid())
        return self

    def sample_memory(self) -> int:
        """Sample RSS now (the background thread also does every `sample_interval`)."""
        return self._sampler.sample() if self._sampler else psutil.Process().memory_info().rss

    def snapshot(self, status: str = "running", error: str | None = None) -> dict[str, Any]:
        wall = self.elapsed
        rss_now = self._sampler.sample() if self._sampler else psutil.Process().memory_info().rss
        out: dict[str, Any] = {
            "format": FORMAT,
            "stage": self.stage,
            "status": status,
            "error": error,
            "started_at": self.started_at,
            "finished_at": _now(),
            "wall_s": round(wall, 6),
            "cpu_s": round(self._cpu_clock() - self._cpu0, 6),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_rejected": self.rows_rejected,
            "rows_accounted": self.rows_in == self.rows_out + self.rows_rejected,
            "rows_per_s": round(self.rows_in / wall, 3) if wall > 0 else None,
            "merges": self.merges,
            "merges_per_s": round(self.merges / wall, 3) if self.merges is not None and wall > 0 else None,
            "rss_start_bytes": int(self._rss0),
            "rss_end_bytes": int(rss_now),
            "peak_rss_bytes": int(max(self._sampler.peak if self._sampler else rss_now, rss_now)),
            # kernel high-water mark of the whole process (includes work before this stage)
            "process_peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "python": sys.version.split()[0],
        }
        out.update(jsonable(self.fields))
        return out

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = "ok" if exc is None else "failed"
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        if self._sampler:
            self._sampler.stop()
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        self.result = self.snapshot(status, error)
        if exc is not None and isinstance(exc, self.refusals) and not self.touched:
            self.event("stage_refused", error=error)
            return False
        if self.path:
            try:
                storage.write_text(self.path, json.dumps(self.result, indent=1) + "\n", self.storage_options)
            except Exception as err:  # metrics must never hide the stage's own outcome
                log_event("metrics_write_failed", self.logger, logging.WARNING, stage=self.stage, path=self.path,
                          error=f"{type(err).__name__}: {err}")
        keys = ("status", "error", "wall_s", "rows_in", "rows_out", "rows_rejected", "rows_per_s", "merges",
                "merges_per_s", "peak_rss_bytes")
        self.event("stage_end", path=self.path, **{k: self.result[k] for k in keys})
        return False


def progress(items: Iterable[T], desc: str, total: int | None = None, stage: str | None = None,
             unit: str = "it", logger: logging.Logger | None = None, every_s: float = 10.0) -> Iterator[T]:
    """Iterate with visible progress: a tqdm bar on a terminal, else a structured line every `every_s`.

    Ray Data stages should rely on Ray Data's own progress bars instead.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr)
        return
    t0 = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            log_event("progress", logger, stage=stage, what=desc, done=done, total=total, unit=unit,
                      rate_per_s=round(done / (now - t0), 3))
    log_event("progress", logger, stage=stage, what=desc, done=done, total=total, unit=unit,
              seconds=round(time.perf_counter() - t0, 3))
