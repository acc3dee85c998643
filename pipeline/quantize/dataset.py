"""The Ray part of a quantize run: shard list -> reader tasks -> encoder actor pool -> finished shards."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from pipeline.execution import StreamTrace, collect_stream, ensure_ray
from pipeline.ingest.stream_rows import IMAGE
from pipeline.quantize.collect import Collector, ShardResult
from pipeline.quantize.spec import QuantizerSpec
from schemas.quantize import QuantizeConfig


def _num_gpus(cfg: QuantizeConfig) -> float:
    import ray

    if cfg.num_gpus is not None:
        return cfg.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _actors(cfg: QuantizeConfig, gpus: float) -> int:
    """Configured encoder actors; 0 = one per GPU of the cluster (one on a cluster without GPUs)."""
    import ray

    if cfg.actor_count:
        return cfg.actor_count
    cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    return max(1, int(cluster_gpus // gpus)) if gpus else 1


def image_rows(block: Any) -> int:
    return int(np.count_nonzero(block.column("kind").to_numpy(zero_copy_only=False) == IMAGE))


def build_dataset(cfg: QuantizeConfig, spec: QuantizerSpec, tensors_ref: Any, urls: list[str]):
    """Shard list -> read/decode tasks -> encoder actor pool. Rows carry their shard index."""
    import ray

    from pipeline.ingest.reader import read_shards
    from pipeline.quantize.actor import EncodeActor

    gpus = _num_gpus(cfg)
    actors = _actors(cfg, gpus)
    threads = cfg.torch_threads or max(1, int(cfg.actor_cpus))
    pool = (
        ray.data.ActorPoolStrategy(min_size=actors, max_size=cfg.max_actors)
        if cfg.max_actors
        else ray.data.ActorPoolStrategy(size=actors)
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
        num_cpus=cfg.actor_cpus,
        num_gpus=gpus or None,
        udf_modifying_row_count=False,
    )


def encoded_shards(cfg: QuantizeConfig, spec: QuantizerSpec, tensors: dict[str, np.ndarray], urls: list[str],
                   trace: StreamTrace | None = None) -> Iterator[ShardResult]:
    """Run the pipeline over `urls`; yield each shard's result as soon as all its rows are back."""
    import ray

    ensure_ray(cfg.ray_address)
    ds = build_dataset(cfg, spec, ray.put(tensors), urls)
    yield from collect_stream(ds, Collector(dict(enumerate(urls)), spec), trace, count=image_rows)
