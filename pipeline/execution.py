"""Where a stage's work runs, decided the same way for every stage: this process or Ray.

Every stage config carries the same four fields (`schemas.base.ExecutionOptions`): `executor`,
`workers`, `cpus`, `ray_address`. `plan()` turns them into a `Placement`; `ensure_ray()` is the one
way to join a cluster or start a private local one; `run_items()` runs one function over many
items here or as Ray tasks and yields each outcome as soon as it is known (so the driver commits
it at once); `collect_stream()` drains a Ray Data stream through a per-input collector.

Joining vs starting: an explicit `ray_address`, else `RAY_ADDRESS` (set by `ray job submit` and
`vbpe submit`), is joined as is, with whatever authentication that cluster uses. Without either, a
private cluster is started for this process only: token authentication disabled (nobody else can
reach it; its dashboard is off) and a temporary directory of its own, removed at exit.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, Protocol, TypeVar

from schemas.base import ConfigError, ExecutionOptions

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Placement:
    """What `plan()` decided: `ray` or `local`, and for Ray how many workers of how many CPUs."""

    mode: str
    workers: int  # 0: as many as the cluster's CPUs allow (resolved by `worker_count` once Ray is up)
    cpus: float
    address: str | None

    @property
    def on_ray(self) -> bool:
        return self.mode == "ray"


def cluster_address(opts: ExecutionOptions) -> str | None:
    return opts.ray_address or os.environ.get("RAY_ADDRESS") or None


def plan(opts: ExecutionOptions, ray_only: str | None = None) -> Placement:
    """`auto` means Ray when workers > 0 or a cluster is named (ray_address or RAY_ADDRESS), else here.

    `ray_only`: the stage (or this input kind) cannot run without Ray; the reason refuses `executor: local`.
    """
    address = cluster_address(opts)
    if opts.executor == "local":
        if ray_only:
            raise ConfigError(f"executor: local is not possible here: {ray_only} (use auto or ray; without a "
                              "cluster a private local Ray is started)")
        mode = "local"
    elif opts.executor == "ray" or ray_only:
        mode = "ray"
    else:
        mode = "ray" if (opts.workers > 0 or address) else "local"
    return Placement(mode, opts.workers, opts.cpus, address)


_private: dict[str, Any] = {}


def _cleanup_private() -> None:
    temp = _private.pop("temp_dir", None)
    if temp is None:
        return
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address` (else RAY_ADDRESS); without either, start a private local cluster for this process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, configure_logging=False, log_to_driver=True)
        return
    # Ray's socket paths are length-limited: keep the directory short.
    temp = tempfile.mkdtemp(prefix="vbpe-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    _private["temp_dir"] = temp
    atexit.register(_cleanup_private)
    log.info("starting a private local Ray (temp dir %s)", temp)
    ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp, configure_logging=False, log_to_driver=True,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})


def worker_count(placement: Placement) -> int:
    """Ray workers to use: the configured number, or as many `cpus`-sized ones as the cluster holds (>= 1)."""
    if placement.workers:
        return placement.workers
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    return max(1, int(cpus // placement.cpus))


@dataclass
class Outcome(Generic[T, R]):
    """One item's result, or the one-line text of the error that stopped it."""

    item: T
    result: R | None = None
    error: str | None = None
    unavailable: bool = False  # the error was the store being unreachable: later items would fail the same way

    @classmethod
    def failed(cls, item: T, err: BaseException) -> "Outcome[T, R]":
        from pipeline.storage import unavailable_cause

        return cls(item, error=error_text(err), unavailable=unavailable_cause(err) is not None)

    @property
    def ok(self) -> bool:
        return self.error is None


def error_text(err: BaseException) -> str:
    """One line naming the error; a Ray task error is reported by the exception inside it."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}".rstrip(": ")


def run_items(fn: Callable[[T, Any], R], items: Iterable[T], placement: Placement, shared: Any = None,
              max_retries: int = 3) -> Iterator[Outcome[T, R]]:
    """`fn(item, shared)` for every item; each outcome is yielded as soon as it is known.

    Local: one after the other in this process. Ray: one task per item (`placement.cpus` each), at
    most `worker_count` in flight, `shared` put in the object store once. Ray retries tasks whose
    worker or node died (e.g. spot preemption); an exception raised by `fn` is not retried and
    becomes that item's error: one bad item never stops the others.
    """
    items = list(items)
    if not placement.on_ray:
        for item in items:
            try:
                result = fn(item, shared)
            except Exception as err:
                log.debug("item failed", exc_info=True)
                yield Outcome.failed(item, err)
            else:
                yield Outcome(item, result)
        return
    import ray

    ensure_ray(placement.address)
    in_flight = worker_count(placement)
    task = ray.remote(num_cpus=placement.cpus, max_retries=max_retries, retry_exceptions=False)(fn)
    shared_ref = ray.put(shared)
    log.info("Ray: %d items, up to %d at a time (%g CPUs each)", len(items), in_flight, placement.cpus)
    queue = list(reversed(items))
    pending: dict[Any, T] = {}
    while queue or pending:
        while queue and len(pending) < in_flight:
            item = queue.pop()
            pending[task.remote(item, shared_ref)] = item
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            item = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as err:
                yield Outcome.failed(item, err)
            else:
                yield Outcome(item, result)


@dataclass
class StreamTrace:
    """When blocks of a Ray Data stream reached the driver (and Ray Data's own stats), for benchmarks."""

    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, items in block)
    dataset_stats: str = ""

    def steady_rate(self) -> float:
        """Items after the first block / time from the first to the last block: start-up excluded."""
        if len(self.arrivals) < 2 or self.arrivals[-1][0] <= self.arrivals[0][0]:
            return float("nan")
        return sum(n for _, n in self.arrivals[1:]) / (self.arrivals[-1][0] - self.arrivals[0][0])


class Collector(Protocol[R]):
    def add(self, block: Any) -> list[R]:
        """Take one block; return the inputs it completed."""

    def unfinished(self) -> list[str]:
        """Inputs not complete yet."""


def collect_stream(ds: Any, collector: Collector[R], trace: StreamTrace | None = None,
                   count: Callable[[Any], int] | None = None) -> Iterator[R]:
    """Drain `ds` (pyarrow blocks) through `collector`, yielding each input as soon as it is whole.

    A stream that ends while inputs are still incomplete is a bug in the pipeline, not bad data: it raises.
    """
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if trace is not None:
            trace.arrivals.append((time.perf_counter(), count(block) if count else block.num_rows))
        yield from collector.add(block)
    if trace is not None:
        trace.dataset_stats = ds.stats()
    missing = collector.unfinished()
    if missing:
        raise RuntimeError(f"stream ended before {len(missing)} inputs were complete: {missing[:3]}")
