"""`vbpe quantize`: shards -> code grids on Ray, resumable, every input row accounted for.

Stages: expand inputs; skip shards the manifest already has; (fit the k-means codebook); load and
fingerprint the quantizer once on the driver; Ray Data reads each shard in its own task (so one
bad shard cannot stop the others), an actor pool encodes, and the driver commits each shard's
grids + rejects + manifest entry as soon as all of its rows are back.
"""
from __future__ import annotations

import logging
import time

from pipeline import storage
from pipeline.quantize.outputs import SHARD_SUFFIXES, Layout, Manifest, canonical_url, commit_shard, remove_stale_temps
from pipeline.quantize.registry import prepare
from pipeline.quantize.summary import RunSummary
from schemas.quantize import QuantizeConfig

log = logging.getLogger(__name__)


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
        from pipeline.quantize.dataset import encoded_shards

        for res in encoded_shards(cfg, spec, tensors, todo, summary.trace):
            commit_shard(res, layout, manifest, options, started)
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
