"""The quantize stage: shards -> code grids on Ray, resumable, every input row accounted for.

Order of work: expand inputs (refusing names that match nothing); (fit the k-means codebook); load
and fingerprint the quantizer once on the driver; skip shards the manifest has as done with the
same identity; Ray Data reads each shard in its own task (so one bad shard cannot stop the
others), an actor pool encodes, and the driver commits each shard (grids, rejects, then its
manifest entry) as soon as all of its rows are back. A shard whose files or entry cannot be
written is recorded as failed; once the store is unreachable, the remaining shards are left for
the next run instead of each waiting out its timeouts.
"""
from __future__ import annotations

import logging
import time

from pipeline import execution, storage
from pipeline.quantize.outputs import OutputDirs, commit_shard, open_manifest
from pipeline.quantize.registry import prepare
from pipeline.quantize.summary import QuantizeSummary
from pipeline.rejects import reason_kind
from schemas.quantize import QuantizeConfig

log = logging.getLogger(__name__)


def run(cfg: QuantizeConfig) -> QuantizeSummary:
    started = time.perf_counter()
    options = cfg.storage
    execution.plan(cfg, ray_only="shards are read and quantized in a Ray Data pipeline")  # refuses executor: local
    urls = sorted({storage.canonical_url(u) for u in storage.expand(cfg.inputs, storage.SHARD_SUFFIXES, options, fresh=True)})
    dirs = OutputDirs(cfg.out)
    fitted = False
    if cfg.fit_kmeans:
        from pipeline.quantize.fit import ensure_codebook

        fitted = ensure_codebook(cfg.quantizer, urls, cfg.ingest, options)
    spec, tensors = prepare(cfg.quantizer, options)
    log.info("%s", spec.describe())
    manifest = open_manifest(dirs, {"kind": spec.kind, "fingerprint": spec.fingerprint, "codebook_size": spec.codebook_size,
                                    "grid": list(spec.grid), "image_size": spec.image.size,
                                    "resample": spec.image.resample}, options)
    storage.makedirs(cfg.out, options)
    for d in (dirs.grids_dir, dirs.rejects_dir, manifest.entries_dir):
        storage.remove_stale_temps(d)
    identities = {u: storage.identity(u, options) for u in urls}
    todo = [u for u in urls if not manifest.is_done(u, identities[u])]
    summary = QuantizeSummary(cfg.out, spec.describe(), spec.fingerprint, shards=len(urls), skipped=len(urls) - len(todo),
                              fitted_codebook=fitted)
    log.info("%d shards: %d to do, %d already done", len(urls), len(todo), summary.skipped)
    manifest.save()
    encode_start = time.perf_counter()
    if todo:
        from pipeline.quantize.dataset import encoded_shards

        for res in encoded_shards(cfg, spec, tensors, todo, summary.trace):
            progress = f"[{summary.done + len(summary.failed) + 1}/{len(todo)}]"
            try:
                commit_shard(res, identities[res.url], dirs, manifest, options, started)
            except Exception as err:
                summary.failed[res.url] = execution.error_text(err)
                log.warning("%s FAILED %s: could not write its output: %s", progress, res.url, summary.failed[res.url])
                if storage.unavailable_cause(err) is not None:
                    summary.not_attempted = len(todo) - summary.done - len(summary.failed)
                    log.warning("storage unreachable: %d shards left for the next run", summary.not_attempted)
                    break
                continue
            if res.error is not None:
                summary.failed[res.url] = res.error
                log.warning("%s FAILED %s: %s", progress, res.url, res.error)
                continue
            summary.done += 1
            summary.rows_in += res.rows_in
            summary.rows_written += res.rows_written
            summary.rows_rejected += res.rows_rejected
            summary.reasons.update(reason_kind(r) for r in res.rejects.column("reason").to_pylist())
            log.info("%s %s: %d written, %d rejected", progress, res.url, res.rows_written, res.rows_rejected)
    summary.encode_seconds = time.perf_counter() - encode_start
    try:
        manifest.save()
    except Exception as err:
        if storage.unavailable_cause(err) is None:
            raise
        log.warning("could not rewrite %s (%s): the entries committed so far are in %s", manifest.path,
                    execution.error_text(err), manifest.entries_dir)
    summary.totals = manifest.totals(urls)
    summary.seconds = time.perf_counter() - started
    return summary
