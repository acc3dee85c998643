"""`vbpe quantize`: shards -> code grids on Ray, resumable, every input row accounted for.

Stages: expand inputs; skip shards the manifest already has; (fit the k-means codebook); load and
fingerprint the quantizer once on the driver; Ray Data reads each shard in its own task (so one
bad shard cannot stop the others), an actor pool encodes, and the driver commits each shard's
grids + rejects + manifest entry as soon as all of its rows are back.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from pipeline import storage
from pipeline.quantize.collect import Collector, ShardResult
from pipeline.quantize.outputs import SHARD_SUFFIXES, Layout, Manifest, canonical_url, remove_stale_temps, write_parquet
from pipeline.quantize.registry import prepare
from pipeline.quantize.spec import QuantizerSpec
from schemas.quantize import QuantizeConfig

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    out: str
    quantizer: str
    fingerprint: str
    shards: int = 0
    skipped: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    rows_in: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    totals: dict[str, int] = field(default_factory=dict)
    fitted_codebook: bool = False
    seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        layout = Layout(self.out)
        out = [
            f"quantizer: {self.quantizer}",
            f"shards: {self.shards} ({self.done} done now, {self.skipped} already done, {len(self.failed)} failed)",
            f"this run: rows in {self.rows_in} = written {self.rows_written} + rejected {self.rows_rejected}"
            f" in {self.seconds:.1f} s ({self.rows_written / max(self.encode_seconds, 1e-9):.1f} images/s incl. start-up)",
        ]
        if self.reasons:
            out.append("rejects by reason: " + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()))
        t = self.totals
        if t:
            out.append(f"all runs, these inputs: rows in {t['rows_in']} = written {t['rows_written']} + rejected {t['rows_rejected']}")
        for url, err in self.failed.items():
            out.append(f"FAILED {url}: {err}")
        out.append(f"grids: {layout.grids_dir}  rejects: {layout.rejects_dir}  manifest: {layout.manifest}")
        return out


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
    threads = cfg.torch_threads or (None if gpus else max(1, int(cfg.cpus_per_actor)))
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


def encoded_shards(cfg: QuantizeConfig, spec: QuantizerSpec, tensors: dict[str, np.ndarray], urls: list[str]) -> Iterator[ShardResult]:
    """Run the pipeline over `urls`; yield each shard's result as soon as all its rows are back."""
    import ray

    ensure_ray(cfg.ray_address)
    ds = build_dataset(cfg, spec, ray.put(tensors), urls)
    collector = Collector(dict(enumerate(urls)), spec)
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from collector.add(block)
    missing = collector.unfinished()
    if missing:
        raise RuntimeError(f"stream ended before {len(missing)} shards were complete: {missing[:3]}")


def commit(res: ShardResult, layout: Layout, manifest: Manifest, options: Any, started: float) -> None:
    """Files first, manifest entry last: an entry saying `done` always points at complete files."""
    url = res.url
    common = {"read_seconds": round(res.read_seconds, 3), "elapsed_seconds": round(time.perf_counter() - started, 3)}
    if res.error is not None:
        manifest.record(url, status="failed", error=res.error, **common)
    else:
        rejects_rel = layout.rejects_rel(url)
        if res.rows_rejected:
            write_parquet(res.rejects, layout.path(rejects_rel), options)
        elif storage.exists(layout.path(rejects_rel), options):
            fs, p = storage.get_fs(layout.path(rejects_rel), options)
            fs.rm(p)
        write_parquet(res.grids, layout.path(layout.grids_rel(url)), options)
        manifest.record(url, status="done", output=layout.grids_rel(url), rejects=rejects_rel if res.rows_rejected else None,
                        rows_in=res.rows_in, rows_written=res.rows_written, rows_rejected=res.rows_rejected, error=None, **common)
    manifest.save(layout, options)


def run_quantize(cfg: QuantizeConfig) -> RunSummary:
    started = time.perf_counter()
    options = cfg.storage
    storage.set_default_storage(options)
    urls = sorted({canonical_url(u) for u in storage.expand(cfg.inputs, SHARD_SUFFIXES, options)})
    layout = Layout(cfg.out)
    manifest = Manifest.load(layout, options)
    fitted = False
    if cfg.fit_kmeans:
        from pipeline.quantize.fit import ensure_codebook

        fitted = ensure_codebook(cfg.quantizer, urls, cfg.ingest, options)
    spec, tensors = prepare(cfg.quantizer, options)
    log.info("%s", spec.describe())
    manifest.bind_quantizer(
        {"kind": spec.kind, "fingerprint": spec.fingerprint, "codebook_size": spec.codebook_size,
         "grid": list(spec.grid), "image_size": spec.image.size, "resample": spec.image.resample},
        cfg.out,
    )
    storage.makedirs(cfg.out, options)
    for d in (layout.grids_dir, layout.rejects_dir):
        remove_stale_temps(d)
    todo = [u for u in urls if not manifest.is_done(u, layout, options)]
    summary = RunSummary(cfg.out, spec.describe(), spec.fingerprint, shards=len(urls), skipped=len(urls) - len(todo), fitted_codebook=fitted)
    log.info("%d shards: %d to do, %d already done", len(urls), len(todo), summary.skipped)
    manifest.save(layout, options)
    encode_start = time.perf_counter()
    if todo:
        for res in encoded_shards(cfg, spec, tensors, todo):
            commit(res, layout, manifest, options, started)
            if res.error is not None:
                summary.failed[res.url] = res.error
                log.warning("[%d/%d] FAILED %s: %s", summary.done + len(summary.failed), len(todo), res.url, res.error)
                continue
            summary.done += 1
            summary.rows_in += res.rows_in
            summary.rows_written += res.rows_written
            summary.rows_rejected += res.rows_rejected
            summary.reasons.update(r.split(":", 1)[0] for r in res.rejects.column("reason").to_pylist())
            log.info("[%d/%d] %s: %d written, %d rejected", summary.done + len(summary.failed), len(todo),
                     res.url, res.rows_written, res.rows_rejected)
    summary.encode_seconds = time.perf_counter() - encode_start
    summary.totals = manifest.totals(urls)
    summary.seconds = time.perf_counter() - started
    return summary
