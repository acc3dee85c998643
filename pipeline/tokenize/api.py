"""`run(TokenizeConfig)`: code grids (or image shards) + vocabulary + id layout -> a versioned token corpus.

Order of work: everything that can refuse the run does so first (vocabulary, layout vs vocabulary,
codebook and quantizer of every grid file, or of the quantizer that will encode the image shards,
the version's manifest); then only inputs not yet done in this version are processed (grid files
as tasks, image shards in one Ray Data pass), each committed (files, then its manifest entry) as
soon as it is back.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline import codegrids, storage
from pipeline.bpe.vocab import Vocabulary
from pipeline.metrics import StageMetrics
from pipeline.quantize.summary import RunTrace
from pipeline.tokenize import versions
from pipeline.tokenize.execute import Outcome, run_jobs
from pipeline.tokenize.files import remove_stale_temps
from pipeline.tokenize.layout import check_layout, resolve_layout
from pipeline.tokenize.worker import FileJob
from schemas.base import InputError
from schemas.layout import IdLayout
from schemas.tokenize import TokenizeConfig

log = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST_SAVE_SECONDS = 5.0
STALE_TEMP_SECONDS = 3600.0


@dataclass
class TokenizeSummary:
    version: str
    root: str
    data: str
    vocab_fingerprint: str
    layout_fingerprint: str | None
    inputs: int = 0
    skipped: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    rows_in: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    tokens: int = 0
    cells: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    totals: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    work_seconds: float = 0.0
    input_kind: str = "grids"
    trace: RunTrace = field(default_factory=RunTrace)  # shard input: when token blocks reached the driver

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "version": self.version, "root": self.root, "data": self.data,
            "vocab_fingerprint": self.vocab_fingerprint, "layout_fingerprint": self.layout_fingerprint,
            "input_kind": self.input_kind, "inputs": self.inputs, "skipped": self.skipped, "done": self.done, "failed": self.failed,
            "rows_in": self.rows_in, "rows_written": self.rows_written, "rows_rejected": self.rows_rejected,
            "tokens": self.tokens, "cells": self.cells, "reject_reasons": dict(self.reasons), "totals": self.totals,
            "seconds": round(self.seconds, 3), "rows_per_second": round(self.rows_in / max(self.work_seconds, 1e-9), 1),
        }

    def lines(self) -> list[str]:
        ratio = f", {self.cells / self.tokens:.2f} cells per token" if self.tokens else ""
        out = [
            f"version {self.version} (vocabulary {self.vocab_fingerprint}, layout {self.layout_fingerprint or 'none'})",
            f"inputs: {self.inputs} ({self.done} done now, {self.skipped} already done, {len(self.failed)} failed)",
            f"this run: rows in {self.rows_in} = written {self.rows_written} + rejected {self.rows_rejected}"
            f"{ratio}; {self.rows_in / max(self.work_seconds, 1e-9):.0f} rows/s",
        ]
        if self.reasons:
            out.append("rejects: " + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()))
        t = self.totals
        if t:
            out.append(f"version total: {t['inputs_done']} inputs, rows in {t['rows_in']} = written {t['rows_written']}"
                       f" + rejected {t['rows_rejected']}")
        out.extend(f"FAILED {url}: {err}" for url, err in self.failed.items())
        out.append(f"data: {self.data}")
        return out


def _input_kind(cfg: TokenizeConfig) -> tuple[str, list[str]]:
    if cfg.input_kind == "grids":
        return "grids", storage.expand(cfg.inputs, (".parquet",), cfg.storage)
    urls = storage.expand(cfg.inputs, (".parquet", *SHARD_SUFFIXES), cfg.storage)
    shards = [u for u in urls if u.endswith(SHARD_SUFFIXES)]
    if cfg.input_kind == "shards":
        if len(shards) != len(urls):
            raise InputError(f"input_kind: shards, but {len(urls) - len(shards)} inputs are not tar shards, e.g. "
                             f"{next(u for u in urls if not u.endswith(SHARD_SUFFIXES))}")
        return "shards", shards
    if shards and len(shards) != len(urls):
        raise InputError("inputs mix image shards and code-grid Parquet; tokenize them in separate runs")
    return ("shards", shards) if shards else ("grids", urls)


def _check_inputs(corpus: codegrids.Corpus, vocab: Vocabulary) -> None:
    """Refuse, before any work, every input whose codebook or quantizer is not the vocabulary's."""
    for gf in corpus.files:
        if gf.codebook_size is not None:
            vocab.check_codebook(gf.codebook_size, what=gf.path)
        vocab.check_quantizer(gf.quantizer_fingerprint, what=gf.path)
    undeclared = [gf.path for gf in corpus.files if gf.codebook_size is None]
    if undeclared:
        log.warning("%d inputs do not declare their codebook size (e.g. %s); codes are checked against V = %d",
                    len(undeclared), undeclared[0], vocab.codebook_size)


def _vocab_meta(vocab: Vocabulary, path: str) -> dict[str, Any]:
    return {"fingerprint": vocab.fingerprint(), "codebook_size": vocab.codebook_size, "merges": len(vocab.merges),
            "quantizer_fingerprint": vocab.quantizer_fingerprint, "source": path}


def _prepare_version(cfg: TokenizeConfig, vocab: Vocabulary, layout: IdLayout | None) -> versions.Manifest:
    options = cfg.storage
    paths = versions.VersionPaths(cfg.out, versions.version_name(vocab.fingerprint(), layout))
    manifest = versions.Manifest.open(paths, _vocab_meta(vocab, cfg.vocab), layout, options)
    storage.makedirs(paths.data_dir, options)
    storage.makedirs(paths.rejects_dir, options)
    if not storage.exists(paths.vocab, options):
        storage.write_text(paths.vocab, storage.read_text(cfg.vocab, options), options)
    if layout is not None and not storage.exists(paths.layout, options):
        storage.write_text(paths.layout, layout.to_yaml(), options)
    for d in (paths.data_dir, paths.rejects_dir):
        remove_stale_temps(d, STALE_TEMP_SECONDS)
    return manifest


def _fresh_listings(paths: list[str], options) -> None:
    """fsspec caches S3 listings per process: a long-lived driver would not see shards added since its last run."""
    for path in paths:
        if storage.is_remote(path):
            storage.get_fs(path, options)[0].invalidate_cache()


def _todo(paths: list[str], manifest: versions.Manifest, options, summary: TokenizeSummary) -> list[tuple[str, str, dict]]:
    """(path, canonical URL, identity) of every input this version does not have yet (or whose file changed since)."""
    todo = []
    for path in paths:
        url = versions.canonical_url(path)
        identity = versions.input_identity(path, options)
        if manifest.is_done(url, identity, options):
            summary.skipped += 1
        else:
            todo.append((path, url, identity))
    return todo


def _targets(paths: versions.VersionPaths, url: str) -> tuple[str, str]:
    name = versions.output_name(url)
    return storage.join(paths.data_dir, name), storage.join(paths.rejects_dir, versions.rejects_name(name))


def _grid_jobs(cfg: TokenizeConfig, corpus: codegrids.Corpus, todo: list[tuple[str, str, dict]], paths: versions.VersionPaths,
               layout: IdLayout | None) -> list[FileJob]:
    files = {gf.path: gf for gf in corpus.files}
    jobs = []
    for path, url, _ in todo:
        output, rejects = _targets(paths, url)
        jobs.append(FileJob(grid_file=vars(files[path]).copy(), output=output, rejects=rejects,
                            layout=layout.model_dump(mode="json") if layout else None,
                            storage=cfg.storage.model_dump(mode="json")))
    return jobs


def _commit(outcome: Outcome, identity: dict, manifest: versions.Manifest, summary: TokenizeSummary, progress: str) -> None:
    """The outcome's files are already in place: record it (the manifest is saved by the caller)."""
    url = versions.canonical_url(outcome.input)
    if outcome.error is not None:
        summary.failed[url] = outcome.error
        manifest.record(url, status="failed", identity=identity, error=outcome.error)
        log.warning("%s FAILED %s: %s", progress, url, outcome.error)
        return
    r, name = outcome.result, versions.output_name(url)
    manifest.record(
        url, status="done", identity=identity, output=f"data/{name}",
        rejects=f"rejects/{versions.rejects_name(name)}" if r.rejects_written else None,
        rows_in=r.rows_in, rows_written=r.rows_written, rows_rejected=r.rows_rejected, tokens=r.tokens, cells=r.cells,
        seconds=round(r.seconds, 3),
    )
    summary.done += 1
    summary.rows_in += r.rows_in
    summary.rows_written += r.rows_written
    summary.rows_rejected += r.rows_rejected
    summary.tokens += r.tokens
    summary.cells += r.cells
    summary.reasons.update(r.reasons)
    log.info("%s %s: %d written, %d rejected, %.0f rows/s", progress, url, r.rows_written, r.rows_rejected,
             r.rows_in / max(r.seconds, 1e-9))


def run(cfg: TokenizeConfig) -> TokenizeSummary:
    """Tokenize. A run refused by its checks writes nothing; one that starts records <out>/metrics.json."""
    started = time.perf_counter()
    plan = _check(cfg)
    with StageMetrics("tokenize", storage.join(cfg.out, "metrics.json")) as metrics:
        summary = _execute(cfg, plan, started)
        metrics.add(rows_in=summary.rows_in, rows_out=summary.rows_written, rows_rejected=summary.rows_rejected)
        metrics.set(version=summary.version, inputs=summary.inputs, inputs_done=summary.done,
                    inputs_skipped=summary.skipped, inputs_failed=len(summary.failed), tokens=summary.tokens,
                    cells=summary.cells)
    return summary


@dataclass
class _Plan:
    """What the checks established, before any file is written."""

    vocab: Vocabulary
    layout: IdLayout | None
    kind: str
    urls: list[str]
    corpus: codegrids.Corpus | None = None
    spec: Any = None
    tensors: Any = None


def _check(cfg: TokenizeConfig) -> _Plan:
    storage.set_default_storage(cfg.storage)
    _fresh_listings([*cfg.inputs, cfg.out], cfg.storage)
    vocab = Vocabulary.load(cfg.vocab)
    layout = resolve_layout(cfg.layout)
    if layout is not None:
        check_layout(layout, vocab, cfg.vocab)
    kind, urls = _input_kind(cfg)
    if kind == "shards":  # refuse a quantizer whose codes are not the vocabulary's before any work
        from pipeline.tokenize import shards

        spec, tensors = shards.prepare_quantizer(cfg, vocab)
        return _Plan(vocab, layout, kind, sorted({versions.canonical_url(u) for u in urls}), spec=spec, tensors=tensors)
    if cfg.quantize is not None:
        log.info("inputs are code grids: the `quantize` section is not used")
    corpus = codegrids.open_corpus(urls, codebook_size=vocab.codebook_size, options=cfg.storage)
    _check_inputs(corpus, vocab)
    return _Plan(vocab, layout, kind, [gf.path for gf in corpus.files], corpus=corpus)


def _execute(cfg: TokenizeConfig, plan: _Plan, started: float) -> TokenizeSummary:
    options = cfg.storage
    vocab, layout, kind, urls, corpus = plan.vocab, plan.layout, plan.kind, plan.urls, plan.corpus
    manifest = _prepare_version(cfg, vocab, layout)
    paths = manifest.paths
    summary = TokenizeSummary(paths.name, paths.root, paths.data_dir, vocab.fingerprint(),
                              layout.fingerprint() if layout else None, inputs=len(urls), input_kind=kind)
    todo = _todo(urls, manifest, options, summary)
    identities = {url: identity for _, url, identity in todo}
    log.info("%s: %d %s, %d to tokenize, %d already done", paths.name, len(urls), kind, len(todo), summary.skipped)
    manifest.save(options)
    versions.update_index(cfg.out, options)

    if kind == "shards":
        from pipeline.tokenize import shards

        jobs = [shards.ShardJob(url, *_targets(paths, url)) for _, url, _ in todo]
        outcomes = (shards.run_shards(cfg, plan.spec, plan.tensors, vocab, layout, jobs, paths.root, summary.trace)
                    if jobs else iter(()))
    else:
        outcomes = run_jobs(_grid_jobs(cfg, corpus, todo, paths, layout), vocab.to_json(), cfg)
    work_start = last_save = time.perf_counter()
    try:
        for i, outcome in enumerate(outcomes, 1):
            _commit(outcome, identities[versions.canonical_url(outcome.input)], manifest, summary, f"[{i}/{len(todo)}]")
            if time.perf_counter() - last_save >= MANIFEST_SAVE_SECONDS:
                manifest.save(options)
                last_save = time.perf_counter()
    finally:  # inputs committed before an error stay committed
        summary.work_seconds = time.perf_counter() - work_start
        manifest.save(options)
        versions.update_index(cfg.out, options)
    summary.totals = manifest.totals()
    summary.seconds = time.perf_counter() - started
    return summary
