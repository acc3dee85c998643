"""The Ray part of a quantize run: shard list -> reader tasks -> encoder actor pool -> finished shards."""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

import numpy as np

from pipeline.ingest.records import IMAGE
from pipeline.quantize.collect import Collector, ShardResult
from pipeline.quantize.spec import QuantizerSpec
from pipeline.quantize.summary import RunTrace
from schemas.quantize import QuantizeConfig


def ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return
    # A private local cluster on this machine only.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False, runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}})


def _num_gpus(cfg: QuantizeConfig) -> float:
    import ray

    if cfg.num_gpus is not None:
        return cfg.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def build_dataset(cfg: QuantizeConfig, spec: QuantizerSpec, tensors_ref: Any, urls: list[str]):
    """Shard list -> read/decode tasks -> encoder actor pool. Rows carry their shard index."""
    import ray

    from pipeline.ingest.reader import read_shards
    from pipeline.quantize.actor import EncodeActor

    gpus = _num_gpus(cfg)
    threads = cfg.torch_threads or max(1, int(cfg.cpus_per_actor))
    pool = (
        ray.data.ActorPoolStrategy(min_size=cfg.num_actors, max_size=cfg.max_actors)
        if cfg.max_actors
        else ray.data.ActorPoolStrategy(size=cfg.num_actors)
    )
    items = [{"shard": i, "url": u} for i, u in enumerate(urls)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        read_shards,
        fn_kwargs={"spec": spec.image, "opts": cfg.ingest, "options": cfg.storage},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=cfg.cpus_per_reader,
        # Recycles reader processes (bounds what a leaky decoder can grow to) and, since Ray Data
        # only fuses maps with identical remote args, keeps decoding out of the encoder actors.
        max_calls=cfg.shards_per_reader_process,
    )
    return ds.map_batches(
        EncodeActor,
        fn_constructor_kwargs={"spec": spec, "tensors": [tensors_ref], "num_gpus": gpus,
                               "precision": cfg.precision, "torch_threads": threads},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=pool,
        num_cpus=cfg.cpus_per_actor,
        num_gpus=gpus or None,
        udf_modifying_row_count=False,
    )


def encoded_shards(cfg: QuantizeConfig, spec: QuantizerSpec, tensors: dict[str, np.ndarray], urls: list[str],
                   trace: RunTrace | None = None) -> Iterator[ShardResult]:
    """Run the pipeline over `urls`; yield each shard's result as soon as all its rows are back."""
    import ray

    ensure_ray(cfg.ray_address)
    ds = build_dataset(cfg, spec, ray.put(tensors), urls)
    collector = Collector(dict(enumerate(urls)), spec)
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if trace is not None:
            images = int(np.count_nonzero(block.column("kind").to_numpy(zero_copy_only=False) == IMAGE))
            trace.arrivals.append((time.perf_counter(), images))
        yield from collector.add(block)
    if trace is not None:
        trace.dataset_stats = ds.stats()
    missing = collector.unfinished()
    if missing:
        raise RuntimeError(f"stream ended before {len(missing)} shards were complete: {missing[:3]}")
