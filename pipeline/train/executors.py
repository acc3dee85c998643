"""Where a stage's training loop runs: a Ray Train run, or this process as the only rank.

Both run `loop.run_loop` over the same plan and batch assignment (the driver computes them); they
differ only in what `world.py` gives the loop. The choice follows the shared rule of every stage
(`pipeline.execution.plan` on the `workers` section): `auto` is Ray when `workers` > 0 or a cluster
is named, else local.
"""
from __future__ import annotations

import functools
import os
from typing import Any

from pipeline import storage
from pipeline.train.job import StageJob
from schemas.base import ConfigError
from schemas.train import STAGES, TrainConfig


def executor(cfg: TrainConfig, stages: tuple[str, ...] = STAGES) -> str:
    """`local` or `ray` for these stages of `cfg` (the shared rule, `execution.plan`); the local executor is one
    rank, so FSDP and more workers refuse it, and Ray Train needs a worker count."""
    from pipeline import execution

    w = cfg.workers
    mode = execution.plan(w).mode
    if mode == "ray" and w.workers == 0:
        raise ConfigError("workers: 0 means training in this process, but the executor is Ray "
                          f"({'executor: ray' if w.executor == 'ray' else 'a cluster is named'}); set workers >= 1 "
                          "(Ray Train workers) or executor: local")
    if mode == "local":
        if w.workers > 1:
            raise ConfigError(f"executor: local trains in this process as one rank; workers: {w.workers} "
                              "needs executor: ray (or auto)")
        sharded = [s for s in stages if cfg.stage(s).strategy == "fsdp"]
        if sharded:
            raise ConfigError(f"executor: local is one rank, and strategy: fsdp shards over several ({', '.join(sharded)}); "
                              "use executor: ray with workers >= 2, or strategy: ddp")
    return mode


def fit_local(cfg: TrainConfig, job: StageJob, assignment, first_step: int) -> dict:
    """The stage's loop in this process as the only rank, with `cpus` torch threads (what a Ray worker gets)."""
    import math

    import torch

    from pipeline.train.loop import run_loop
    from pipeline.train.world import LocalWorld

    w = cfg.workers
    if w.use_gpu and not torch.cuda.is_available():
        raise ConfigError("workers.use_gpu is true but this process sees no GPU (executor: local)")
    world = LocalWorld(job.sequences, assignment.rows[0], assignment.per_step, first_step,
                       torch.device("cuda" if w.use_gpu else "cpu"), cfg.storage)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, math.ceil(w.cpus)))
    try:
        return run_loop(job, world)
    finally:
        torch.set_num_threads(threads)


def ray_storage(cfg: TrainConfig) -> tuple[str, Any]:
    """RunConfig(storage_path, storage_filesystem): S3 with a custom endpoint needs an explicit pyarrow filesystem."""
    path = storage.join(cfg.output, "ray")
    if not storage.is_remote(path):
        os.makedirs(path, exist_ok=True)
        return os.path.abspath(path), None
    opts = cfg.storage
    endpoint = (opts.endpoint_url if opts else None) or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return path, None
    import pyarrow.fs as pafs
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    fs = pafs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme or "https", region=(opts.region if opts else None) or "us-east-1")
    return path.split("://", 1)[1], fs


def fit_ray(cfg: TrainConfig, name: str, job: StageJob, assignment, first_step: int) -> dict:
    """A Ray Train run (`name`) of `workers` workers, each streamed its rows by Ray Data; rank 0's summary."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.train import stream
    from pipeline.train.loop import train_loop

    w = cfg.workers
    datasets = stream.rank_datasets(job.sequences, assignment, first_step, cfg.storage, w.data_cpus)
    resources = {"CPU": w.cpus, **({"GPU": w.gpus_per_worker} if w.use_gpu else {})}
    storage_path, storage_fs = ray_storage(cfg)
    trainer = TorchTrainer(
        functools.partial(train_loop, job),
        scaling_config=ScalingConfig(num_workers=w.workers, use_gpu=w.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=w.max_failures),
        ),
        datasets=datasets,
        dataset_config=stream.data_config(),
    )
    return dict(trainer.fit().return_value or {})
