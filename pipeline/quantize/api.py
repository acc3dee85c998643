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
from pipeline.incremental import InputRun
from pipeline.quantize.outputs import OutputDirs, open_manifest, write_shard
from pipeline.quantize.registry import prepare
from pipeline.quantize.summary import QuantizeSummary
from pipeline.rejects import count_reasons
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
    summary = QuantizeSummary(cfg.out, spec.describe(), spec.fingerprint, fitted_codebook=fitted)
    work = InputRun(manifest, urls, summary, options, (dirs.grids_dir, dirs.rejects_dir))
    log.info("%d shards: %d to do, %d already done", len(urls), len(work.todo), summary.skipped)
    encode_start = time.perf_counter()
    if work.todo:
        from pipeline.quantize.dataset import encoded_shards

        for res in encoded_shards(cfg, spec, tensors, work.todo, summary.trace):
            timing = {"read_seconds": round(res.read_seconds, 3), "elapsed_seconds": round(time.perf_counter() - started, 3)}
            if res.error is not None:
                work.fail(res.url, res.error, **timing)
            else:
                work.commit(res.url, res.rows_in, res.rows_written, res.rows_rejected,
                            count_reasons(res.rejects.column("reason").to_pylist()),
                            write=lambda res=res: write_shard(res, dirs, options), output=dirs.grids_rel(res.url),
                            rejects=dirs.rejects_rel(res.url) if res.rows_rejected else None, error=None, **timing)
            if work.stopped:
                break
    summary.encode_seconds = time.perf_counter() - encode_start
    work.finish(urls)
    summary.seconds = time.perf_counter() - started
    return summary
