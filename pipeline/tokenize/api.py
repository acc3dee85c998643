"""The tokenize stage: code grids (or image shards) + vocabulary + id layout -> a versioned token corpus.

Order of work: everything that can refuse the run does so first (vocabulary, layout vs vocabulary,
codebook and quantizer of every grid file, or of the quantizer that will encode the image shards,
the version's manifest); then only inputs not yet done in this version are processed (grid files
as tasks, image shards in one Ray Data pass), each committed (files, then its manifest entry) as
soon as it is back. An input that cannot be read, tokenized or written is recorded as failed and
the others go on (exit 3); once the store is unreachable the remaining inputs are left for the
next run instead of each waiting out its timeouts.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import codegrids, execution, storage
from pipeline.bpe.vocab import Vocabulary
from pipeline.execution import Outcome, StreamTrace
from pipeline.incremental import InputRun, Tally
from pipeline.manifest import Manifest
from pipeline.tokenize import versions
from pipeline.tokenize.layout import check_layout, resolve_layout
from pipeline.tokenize.worker import FileJob, FileResult, tokenize_file
from schemas.base import InputError
from schemas.layout import IdLayout
from schemas.tokenize import TokenizeConfig

log = logging.getLogger(__name__)

SHARDS_ONLY_ON_RAY = "image shards are quantized in a Ray Data pass (executor: local only applies to code-grid input)"


@dataclass
class TokenizeSummary(Tally):
    """Counts per input from `Tally`, plus the version and what tokenizing found."""

    version: str
    root: str
    data: str
    vocab_fingerprint: str
    layout_fingerprint: str | None
    tokens: int = 0
    cells: int = 0
    duplicate_keys: int = 0  # rows written in this run whose key another written row of this run also has
    without_quantizer: int = 0  # grid files that do not say which quantizer made them
    seconds: float = 0.0
    work_seconds: float = 0.0
    input_kind: str = "grids"
    trace: StreamTrace = field(default_factory=StreamTrace)  # shard input: when token blocks reached the driver

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "version": self.version, "root": self.root, "data": self.data,
            "vocab_fingerprint": self.vocab_fingerprint, "layout_fingerprint": self.layout_fingerprint,
            "input_kind": self.input_kind, "inputs": self.inputs, "skipped": self.skipped, "done": self.done,
            "failed": dict(self.failed), "not_attempted": self.not_attempted, "rows_in": self.rows_in,
            "rows_written": self.rows_written, "rows_rejected": self.rows_rejected, "tokens": self.tokens,
            "cells": self.cells, "duplicate_keys": self.duplicate_keys, "inputs_without_quantizer": self.without_quantizer,
            "reject_reasons": dict(self.reasons.most_common()), "totals": self.totals, "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_in / max(self.work_seconds, 1e-9), 1),
        }

    def metrics(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_written, "rows_rejected": self.rows_rejected,
                "reject_reasons": dict(self.reasons.most_common()), "version": self.version, "inputs": self.inputs,
                "inputs_done": self.done, "inputs_skipped": self.skipped, "inputs_failed": len(self.failed),
                "inputs_not_attempted": self.not_attempted, "tokens": self.tokens, "cells": self.cells,
                "duplicate_keys": self.duplicate_keys}

    def lines(self) -> list[str]:
        ratio = f", {self.cells / self.tokens:.2f} cells per token" if self.tokens else ""
        out = [
            f"version {self.version} (vocabulary {self.vocab_fingerprint}, layout {self.layout_fingerprint or 'none'})",
            *self.count_lines("inputs", f"{ratio}; {self.rows_in / max(self.work_seconds, 1e-9):.0f} rows/s"),
        ]
        if self.reasons:
            out.append("rejects: " + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()))
        if self.duplicate_keys:
            out.append(f"WARNING: {self.duplicate_keys} rows written in this run repeat another row's key")
        t = self.totals
        if t:
            out.append(f"version total: {t['inputs_done']} inputs, rows in {t['rows_in']} = written {t['rows_written']}"
                       f" + rejected {t['rows_rejected']}")
        out.extend(self.failure_lines())
        out.append(f"data: {self.data}")
        return out


@dataclass
class _Plan:
    """What the checks established, before any file is written."""

    vocab: Vocabulary
    layout: IdLayout | None
    kind: str
    urls: list[str]  # canonical URLs of every input, in order
    files: dict[str, codegrids.GridFile] = field(default_factory=dict)  # grid input, by URL
    unreadable: dict[str, str] = field(default_factory=dict)  # grid files that are not Parquet at all
    without_quantizer: int = 0
    spec: Any = None
    tensors: Any = None


def _input_kind(cfg: TokenizeConfig) -> tuple[str, list[str]]:
    sfx = storage.SHARD_SUFFIXES
    if cfg.input_kind == "grids":
        return "grids", codegrids.grid_paths(cfg.inputs, cfg.storage, fresh=True)
    urls = [u for u in storage.expand(cfg.inputs, (".parquet", *sfx), cfg.storage, fresh=True)
            if not u.endswith(codegrids.REJECTS_SUFFIX)]
    shards = [u for u in urls if u.endswith(sfx)]
    if cfg.input_kind == "shards":
        if len(shards) != len(urls):
            raise InputError(f"input_kind: shards, but {len(urls) - len(shards)} inputs are not tar shards, e.g. "
                             f"{next(u for u in urls if not u.endswith(sfx))}")
        return "shards", shards
    if shards and len(shards) != len(urls):
        raise InputError("inputs mix image shards and code-grid Parquet; tokenize them in separate runs")
    return ("shards", shards) if shards else ("grids", urls)


def _check_grid_files(paths: list[str], vocab: Vocabulary, plan: _Plan, cfg: TokenizeConfig) -> None:
    """Refuse, before any work, every input whose codebook or quantizer is not the vocabulary's.

    A file that is not Parquet at all only fails itself (recorded, the run goes on).
    """
    for path in paths:
        url = storage.canonical_url(path)
        try:
            gf = codegrids.inspect_file(path, cfg.storage)
        except codegrids.UnreadableFile as err:
            plan.unreadable[url] = str(err)
            continue
        if gf.codebook_size is not None:
            vocab.check_codebook(gf.codebook_size, what=gf.path)
        vocab.check_quantizer(gf.quantizer_fingerprint, what=gf.path)
        plan.files[url] = gf
    undeclared = [gf.path for gf in plan.files.values() if gf.codebook_size is None]
    if undeclared:
        log.warning("%d inputs do not declare their codebook size (e.g. %s); codes are checked against V = %d",
                    len(undeclared), undeclared[0], vocab.codebook_size)
    unstamped = [gf.path for gf in plan.files.values() if not gf.quantizer_fingerprint]
    plan.without_quantizer = len(unstamped)
    if unstamped and vocab.quantizer_fingerprint:
        log.warning("%d inputs do not say which quantizer made them (e.g. %s): they are tokenized as codes of the "
                    "vocabulary's quantizer %s, which nothing here can check", len(unstamped), unstamped[0],
                    vocab.quantizer_fingerprint)


def _check(cfg: TokenizeConfig) -> tuple[_Plan, execution.Placement]:
    vocab = Vocabulary.load(cfg.vocab, cfg.storage)
    layout = resolve_layout(cfg.layout, cfg.storage)
    if layout is not None:
        check_layout(layout, vocab, cfg.vocab)
    kind, paths = _input_kind(cfg)
    if kind == "shards":  # refuse a quantizer whose codes are not the vocabulary's before any work
        from pipeline.tokenize import image_shards

        placement = execution.plan(cfg, ray_only=SHARDS_ONLY_ON_RAY)
        spec, tensors = image_shards.prepare_quantizer(cfg, vocab)
        return _Plan(vocab, layout, kind, sorted({storage.canonical_url(u) for u in paths}), spec=spec,
                     tensors=tensors), placement
    if cfg.quantize is not None:
        log.info("inputs are code grids: the `quantize` section is not used")
    if not paths:
        raise InputError(f"no code-grid files in {cfg.inputs}")
    plan = _Plan(vocab, layout, kind, sorted({storage.canonical_url(p) for p in paths}))
    _check_grid_files(paths, vocab, plan, cfg)
    return plan, execution.plan(cfg)


def _vocab_meta(vocab: Vocabulary, path: str) -> dict[str, Any]:
    return {"fingerprint": vocab.fingerprint(), "codebook_size": vocab.codebook_size, "merges": len(vocab.merges),
            "quantizer_fingerprint": vocab.quantizer_fingerprint, "source": path}


def _prepare_version(cfg: TokenizeConfig, vocab: Vocabulary, layout: IdLayout | None) -> tuple[versions.VersionPaths, Manifest]:
    options = cfg.storage
    paths = versions.VersionPaths(cfg.out, versions.version_name(vocab.fingerprint(), layout))
    manifest = versions.open_manifest(paths, _vocab_meta(vocab, cfg.vocab), layout, options)
    storage.makedirs(paths.data_dir, options)
    storage.makedirs(paths.rejects_dir, options)
    if not storage.exists(paths.vocab, options):
        storage.write_text(paths.vocab, storage.read_text(cfg.vocab, options), options)
    if layout is not None and not storage.exists(paths.layout, options):
        storage.write_text(paths.layout, layout.to_yaml(), options)
    return paths, manifest


def _commit(work: InputRun, paths: versions.VersionPaths, url: str, outcome: Outcome) -> np.ndarray | None:
    """Record one input's outcome (the worker wrote its files); the key hashes of its rows when it is done."""
    if outcome.error is not None:
        work.fail(url, outcome.error, outcome.unavailable)
        return None
    r: FileResult = outcome.result
    _, _, out_rel, rejects_rel = paths.targets(url)
    if not work.commit(url, r.rows_in, r.rows_written, r.rows_rejected, r.reasons, output=out_rel,
                       rejects=rejects_rel if r.rejects_written else None, tokens=r.tokens, cells=r.cells,
                       seconds=round(r.seconds, 3)):
        return None
    work.tally.tokens += r.tokens
    work.tally.cells += r.cells
    return r.key_hashes


def _duplicates(hashes: list[np.ndarray]) -> int:
    if not hashes:
        return 0
    h = np.concatenate(hashes)
    return int(len(h) - len(np.unique(h)))


def run(cfg: TokenizeConfig) -> TokenizeSummary:
    """Tokenize. A run refused by its checks writes nothing."""
    started = time.perf_counter()
    plan, placement = _check(cfg)
    options = cfg.storage
    vocab, layout = plan.vocab, plan.layout
    paths, manifest = _prepare_version(cfg, vocab, layout)
    summary = TokenizeSummary(paths.name, paths.root, paths.data_dir, vocab.fingerprint(),
                              layout.fingerprint() if layout else None, input_kind=plan.kind,
                              without_quantizer=plan.without_quantizer)
    work = InputRun(manifest, plan.urls, summary, options, (paths.data_dir, paths.rejects_dir))
    log.info("%s: %d %s, %d to tokenize, %d already done", paths.name, len(plan.urls), plan.kind, len(work.todo),
             summary.skipped)
    versions.update_index(cfg.out, options)
    hashes: list[np.ndarray] = []
    work_start = time.perf_counter()
    try:
        for url in [u for u in work.todo if u in plan.unreadable]:
            work.fail(url, plan.unreadable[url])
        todo = [u for u in work.todo if u not in plan.unreadable]
        for url, outcome in _outcomes(cfg, plan, placement, paths, todo, summary.trace):
            h = _commit(work, paths, url, outcome)
            if h is not None:
                hashes.append(h)
            if work.stopped:
                break
    finally:  # inputs committed before an error stay committed (each has its entry file)
        summary.work_seconds = time.perf_counter() - work_start
        summary.duplicate_keys = _duplicates(hashes)
        if summary.duplicate_keys:
            log.warning("%d rows written in this run repeat the key of another row of this run", summary.duplicate_keys)
        work.finish(then=lambda: versions.update_index(cfg.out, options))
    summary.seconds = time.perf_counter() - started
    return summary


def _outcomes(cfg: TokenizeConfig, plan: _Plan, placement: execution.Placement, paths: versions.VersionPaths,
              todo: list[str], trace: StreamTrace):
    """(input URL, outcome) pairs in the order they finish."""
    if not todo:
        return
    if plan.kind == "shards":
        from pipeline.tokenize import image_shards

        jobs = [image_shards.ShardJob(url, *paths.targets(url)[:2]) for url in todo]
        for outcome in image_shards.run_shards(cfg, plan.spec, plan.tensors, plan.vocab, plan.layout, jobs, paths.root,
                                               trace):
            yield outcome.item.url, outcome
        return
    layout = plan.layout.model_dump(mode="json") if plan.layout else None
    jobs = []
    for url in todo:
        output, rejects, _, _ = paths.targets(url)
        jobs.append(FileJob(grid_file=vars(plan.files[url]).copy(), output=output, rejects=rejects, layout=layout,
                            storage=cfg.storage.model_dump(mode="json")))
    by_path = {j.grid_file["path"]: url for j, url in zip(jobs, todo)}
    for outcome in execution.run_items(tokenize_file, jobs, placement, shared=plan.vocab.to_json()):
        yield by_path[outcome.item.grid_file["path"]], outcome
