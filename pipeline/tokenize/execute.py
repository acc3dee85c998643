"""Run file jobs here or as Ray tasks; yield each outcome as soon as it is known, so the driver commits it.

One Ray task per input file: a natural unit for incremental runs, a failure stays with its file,
and at most `workers` files are in flight (each holds one row group in memory at a time).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

from pipeline.tokenize.worker import FileJob, FileResult, tokenize_file
from schemas.tokenize import TokenizeConfig

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One input's result (or error), keyed by the input's path or URL; the driver records it."""

    input: str
    result: FileResult | None
    error: str | None


def run_local(jobs: list[FileJob], vocab_json: dict[str, Any]) -> Iterator[Outcome]:
    for job in jobs:
        try:
            yield Outcome(job.grid_file["path"], tokenize_file(job, vocab_json), None)
        except Exception as err:  # one bad file must not stop the others; the driver records it
            log.debug("%s failed", job.grid_file["path"], exc_info=True)
            yield Outcome(job.grid_file["path"], None, f"{type(err).__name__}: {err}")


def ensure_ray(address: str | None) -> None:
    """Join the given cluster (or RAY_ADDRESS, set under `ray job submit`), else start a private local one."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}})


def _error_text(err: BaseException) -> str:
    cause = getattr(err, "cause", None)  # RayTaskError wraps the worker's exception
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"


def run_ray(jobs: list[FileJob], vocab_json: dict[str, Any], cfg: TokenizeConfig) -> Iterator[Outcome]:
    import ray

    ensure_ray(cfg.ray_address)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    in_flight = cfg.workers or max(1, int(cpus // cfg.cpus_per_task))
    # Retries cover lost workers/nodes (e.g. spot preemption); an exception in our code is not retried.
    task = ray.remote(num_cpus=cfg.cpus_per_task, max_retries=3, retry_exceptions=False)(tokenize_file)
    vocab_ref = ray.put(vocab_json)
    log.info("Ray: %d files, up to %d at a time (%.0f CPUs in the cluster)", len(jobs), in_flight, cpus)
    pending: dict[Any, FileJob] = {}
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < in_flight:
            job = queue.pop(0)
            pending[task.remote(job, vocab_ref)] = job
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            job = pending.pop(ref)
            try:
                yield Outcome(job.grid_file["path"], ray.get(ref), None)
            except Exception as err:
                yield Outcome(job.grid_file["path"], None, _error_text(err))


def run_jobs(jobs: list[FileJob], vocab_json: dict[str, Any], cfg: TokenizeConfig) -> Iterator[Outcome]:
    if cfg.wants_ray():
        yield from run_ray(jobs, vocab_json, cfg)
    else:
        yield from run_local(jobs, vocab_json)
