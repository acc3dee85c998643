"""Image shards straight to tokens: read, quantize and apply the vocabulary in one Ray Data pass.

The quantize stage's pipeline (reader tasks -> encoder actor pool, pipeline.quantize.dataset) gains
one more `map_batches` (pipeline.tokenize.stream) that turns code rows into token rows, so no
code-grid files are written in between. The driver regroups rows per shard with the quantize
stage's collector and commits each shard like a grid file (files first, then a manifest entry keyed
by the shard URL), so versions, incremental runs, rejects and failures behave the same for both
kinds of input.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.bpe.vocab import Vocabulary
from pipeline.execution import Outcome, StreamTrace, collect_stream, ensure_ray
from pipeline.ingest.stream_rows import IMAGE
from pipeline.quantize.collect import Collector, ShardResult
from pipeline.quantize.dataset import image_rows
from pipeline.quantize.spec import QuantizerSpec
from pipeline.rejects import count_reasons, write_rejects
from pipeline.tokenize.token_table import output_schema
from pipeline.tokenize.worker import FileResult, key_hashes
from schemas.base import ConfigError
from schemas.layout import IdLayout
from schemas.quantize import QuantizeConfig
from schemas.tokenize import SHARDS_NEED_QUANTIZER, TokenizeConfig

log = logging.getLogger(__name__)

MIN_TOKENIZE_BATCH = 256  # rows per tokenize task at least: amortises task overhead, still streams per shard


@dataclass
class ShardJob:
    url: str  # canonical shard URL (the manifest key and each row's `source`)
    output: str
    rejects: str


def prepare_quantizer(cfg: TokenizeConfig, vocab: Vocabulary) -> tuple[QuantizerSpec, dict[str, np.ndarray]]:
    """Load and fingerprint the quantizer once; refuse it unless its codes are the vocabulary's codes."""
    if cfg.quantize is None:
        raise ConfigError(SHARDS_NEED_QUANTIZER)
    from pipeline.quantize.registry import prepare

    spec, tensors = prepare(cfg.quantize.quantizer, cfg.storage)
    what = f"codes of {spec.describe()}"
    vocab.check_codebook(spec.codebook_size, what=what)
    vocab.check_quantizer(spec.fingerprint, what=what)
    if not vocab.quantizer_fingerprint:
        log.warning("the vocabulary does not record its quantizer: only the codebook size (%d) could be checked "
                    "against %s", vocab.codebook_size, spec.describe())
    return spec, tensors


def quantize_config(cfg: TokenizeConfig, urls: list[str], out: str) -> QuantizeConfig:
    """The quantize stage's view of this run (its dataset builder takes a QuantizeConfig)."""
    assert cfg.quantize is not None
    return QuantizeConfig.model_validate({**cfg.quantize.model_dump(), "inputs": urls, "out": out,
                                          "ray_address": cfg.ray_address, "storage": cfg.storage.model_dump()})


class TokenCollector(Collector):
    """The quantize stage's per-shard reassembly (dedup by row, done at the end marker), with token rows."""

    def __init__(self, urls: dict[int, str], spec: QuantizerSpec, schema: pa.Schema):
        super().__init__(urls, spec)
        self.schema = schema

    def _grids(self, rows: pa.Table | None, url: str) -> pa.Table:
        if rows is None:
            return self.schema.empty_table()
        images = rows.filter(pc.equal(rows.column("kind"), IMAGE)).sort_by("row")
        cols = {name: images.column(name) for name in self.schema.names if name in images.column_names}
        cols["source"] = pa.array([url] * images.num_rows, pa.string())
        return pa.table(cols).select(self.schema.names).cast(self.schema)


def write_shard(res: ShardResult, job: ShardJob, options) -> FileResult:
    """One finished shard -> its tokens file and rejects file (both whole or absent)."""
    table, rejects = res.grids, res.rejects
    if res.rows_in != res.rows_written + res.rows_rejected:
        raise RuntimeError(f"{res.url}: {res.rows_in} rows in but {res.rows_written} written + {res.rows_rejected} rejected")
    storage.write_parquet(table, job.output, options)
    if res.rows_rejected:
        write_rejects(job.rejects, rejects, "tokenize", options)
    else:
        storage.remove(job.rejects, options)  # left by an earlier attempt on an older copy of this shard
    reasons = count_reasons(rejects.column("reason").to_pylist() if res.rows_rejected else [])
    cells = pc.sum(pc.multiply(table.column("height").cast(pa.int64()), table.column("width").cast(pa.int64()))).as_py()
    tokens = pc.sum(table.column("n_tokens")).as_py()
    return FileResult(res.url, res.rows_in, res.rows_written, res.rows_rejected, int(tokens or 0), int(cells or 0),
                      res.read_seconds, bool(res.rows_rejected), reasons, key_hashes(table.column("key").to_pylist()))


def _outcome(res: ShardResult, job: ShardJob, cfg: TokenizeConfig) -> Outcome:
    if res.error is not None:  # the reader could not read the shard at all
        return Outcome(job, error=res.error)
    try:
        return Outcome(job, write_shard(res, job, cfg.storage))
    except Exception as err:  # e.g. the store refused the upload: this shard fails, the others go on
        log.debug("%s failed", job.url, exc_info=True)
        return Outcome.failed(job, err)


def build_dataset(cfg: TokenizeConfig, spec: QuantizerSpec, tensors: dict[str, np.ndarray], vocab: Vocabulary,
                  layout: IdLayout | None, urls: list[str], out: str):
    """Reader tasks -> encoder actors (the quantize stage's dataset) -> tokenize tasks."""
    import ray

    from pipeline.quantize.dataset import build_dataset as quantize_dataset
    from pipeline.tokenize.stream import tokenize_stream

    qcfg = quantize_config(cfg, urls, out)
    ds = quantize_dataset(qcfg, spec, ray.put(tensors), urls)
    return ds.map_batches(
        tokenize_stream,
        fn_kwargs={"vocab": [ray.put(vocab.to_json())], "fingerprint": vocab.fingerprint(),
                   "layout": layout.model_dump(mode="json") if layout else None},
        batch_size=max(MIN_TOKENIZE_BATCH, qcfg.batch_size),
        batch_format="pyarrow",
        num_cpus=cfg.cpus,
        compute=ray.data.TaskPoolStrategy(size=cfg.workers) if cfg.workers else None,
        udf_modifying_row_count=False,
    )


def _warn_if_no_cpu_left(cfg: TokenizeConfig) -> None:
    """Readers + encoder actors holding every CPU leave the tokenize tasks none until reading ends: correct, but
    nothing is committed (and token blocks pile up) until then. Worth one line, since it looks like a hang."""
    import ray

    q = cfg.quantize
    cpus = ray.cluster_resources().get("CPU", 0.0)
    held = q.cpus_per_reader + (q.max_actors or q.num_actors) * q.cpus_per_actor
    if cpus and held + cfg.cpus > cpus:
        log.warning("the cluster has %.1f CPUs; reader tasks (%.2f) + encoder actors (%.2f) + one tokenize task (%.2f) "
                    "do not fit at once, so shards are tokenized and committed only as reading ends: lower "
                    "quantize.cpus_per_reader / cpus_per_actor or cpus", cpus, q.cpus_per_reader,
                    held - q.cpus_per_reader, cfg.cpus)


def run_shards(cfg: TokenizeConfig, spec: QuantizerSpec, tensors: dict[str, np.ndarray], vocab: Vocabulary,
               layout: IdLayout | None, jobs: list[ShardJob], out: str, trace: StreamTrace | None = None) -> Iterator[Outcome]:
    """Yield each shard's outcome as soon as all its rows are back and its files are written."""
    ensure_ray(cfg.ray_address)
    _warn_if_no_cpu_left(cfg)
    urls = [j.url for j in jobs]
    ds = build_dataset(cfg, spec, tensors, vocab, layout, urls, out)
    schema = output_schema(vocab.fingerprint(), vocab.codebook_size, layout, vocab.quantizer_fingerprint)
    collector = TokenCollector(dict(enumerate(urls)), spec, schema)
    for res in collect_stream(ds, collector, trace, count=image_rows):
        yield _outcome(res, jobs[res.index], cfg)
