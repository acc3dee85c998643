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

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import codegrids, execution, storage
from pipeline.bpe.vocab import Vocabulary
from pipeline.execution import Outcome, StreamTrace
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
    not_attempted: int = 0  # left for the next run after the store became unreachable
    rows_in: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    tokens: int = 0
    cells: int = 0
    duplicate_keys: int = 0  # rows written in this run whose key another written row of this run also has
    without_quantizer: int = 0  # grid files that do not say which quantizer made them
    reasons: collections.Counter = field(default_factory=collections.Counter)
    totals: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    work_seconds: float = 0.0
    input_kind: str = "grids"
    trace: StreamTrace = field(default_factory=StreamTrace)  # shard input: when token blocks reached the driver

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_attempted

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
            f"inputs: {self.inputs} ({self.done} done now, {self.skipped} already done, {len(self.failed)} failed"
            + (f", {self.not_attempted} left for the next run" if self.not_attempted else "") + ")",
            f"this run: rows in {self.rows_in} = written {self.rows_written} + rejected {self.rows_rejected}"
            f"{ratio}; {self.rows_in / max(self.work_seconds, 1e-9):.0f} rows/s",
        ]
        if self.reasons:
            out.append("rejects: " + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()))
        if self.duplicate_keys:
            out.append(f"WARNING: {self.duplicate_keys} rows written in this run repeat another row's key")
        t = self.totals
        if t:
            out.append(f"version total: {t['inputs_done']} inputs, rows in {t['rows_in']} = written {t['rows_written']}"
                       f" + rejected {t['rows_rejected']}")
        out.extend(f"FAILED {url}: {err}" for url, err in self.failed.items())
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
    for d in (paths.data_dir, paths.rejects_dir, manifest.entries_dir):
        storage.remove_stale_temps(d)
    return paths, manifest


class _Committer:
    """Records each outcome in the manifest the moment it is known, and in the summary."""

    def __init__(self, manifest: Manifest, paths: versions.VersionPaths, summary: TokenizeSummary,
                 identities: dict[str, dict], total: int):
        self.manifest, self.paths, self.summary, self.identities, self.total = manifest, paths, summary, identities, total
        self.count = 0
        self.hashes: list[np.ndarray] = []
        self.stopped = False

    def fail(self, url: str, error: str, unavailable: bool = False) -> None:
        self.summary.failed[url] = error
        log.warning("[%d/%d] FAILED %s: %s", self.count, self.total, url, error)
        if unavailable:
            self.stopped = True
            return
        try:
            self.manifest.commit(url, "failed", identity=self.identities.get(url), error=error)
        except Exception as err:
            log.warning("could not record the failure of %s: %s", url, execution.error_text(err))
            self.stopped = storage.unavailable_cause(err) is not None

    def add(self, url: str, outcome: Outcome) -> None:
        self.count += 1
        if outcome.error is not None:
            self.fail(url, outcome.error, outcome.unavailable)
            return
        r: FileResult = outcome.result
        _, _, out_rel, rejects_rel = self.paths.targets(url)
        try:
            self.manifest.commit(
                url, "done", identity=self.identities.get(url), output=out_rel,
                rejects=rejects_rel if r.rejects_written else None, rows_in=r.rows_in, rows_written=r.rows_written,
                rows_rejected=r.rows_rejected, tokens=r.tokens, cells=r.cells, seconds=round(r.seconds, 3))
        except Exception as err:
            self.fail(url, f"its manifest entry could not be written: {execution.error_text(err)}",
                      storage.unavailable_cause(err) is not None)
            return
        s = self.summary
        s.done += 1
        s.rows_in += r.rows_in
        s.rows_written += r.rows_written
        s.rows_rejected += r.rows_rejected
        s.tokens += r.tokens
        s.cells += r.cells
        s.reasons.update(r.reasons)
        self.hashes.append(r.key_hashes)
        log.info("[%d/%d] %s: %d written, %d rejected, %.0f rows/s", self.count, self.total, url, r.rows_written,
                 r.rows_rejected, r.rows_in / max(r.seconds, 1e-9))

    def duplicates(self) -> int:
        if not self.hashes:
            return 0
        h = np.concatenate(self.hashes)
        return int(len(h) - len(np.unique(h)))


def run(cfg: TokenizeConfig) -> TokenizeSummary:
    """Tokenize. A run refused by its checks writes nothing."""
    started = time.perf_counter()
    plan, placement = _check(cfg)
    options = cfg.storage
    vocab, layout = plan.vocab, plan.layout
    paths, manifest = _prepare_version(cfg, vocab, layout)
    summary = TokenizeSummary(paths.name, paths.root, paths.data_dir, vocab.fingerprint(),
                              layout.fingerprint() if layout else None, inputs=len(plan.urls), input_kind=plan.kind,
                              without_quantizer=plan.without_quantizer)
    identities = {u: storage.identity(u, options) for u in plan.urls}
    todo = [u for u in plan.urls if not manifest.is_done(u, identities[u])]
    summary.skipped = len(plan.urls) - len(todo)
    log.info("%s: %d %s, %d to tokenize, %d already done", paths.name, len(plan.urls), plan.kind, len(todo), summary.skipped)
    manifest.save()
    versions.update_index(cfg.out, options)
    committer = _Committer(manifest, paths, summary, identities, len(todo))
    work_start = time.perf_counter()
    try:
        for url in [u for u in todo if u in plan.unreadable]:
            committer.count += 1
            committer.fail(url, plan.unreadable[url])
        todo = [u for u in todo if u not in plan.unreadable]
        for url, outcome in _outcomes(cfg, plan, placement, paths, todo, summary.trace):
            committer.add(url, outcome)
            if committer.stopped:
                summary.not_attempted = len(todo) - committer.count + len(plan.unreadable)
                log.warning("storage unreachable: stopping; %d inputs left for the next run", summary.not_attempted)
                break
    finally:  # inputs committed before an error stay committed (each has its entry file)
        summary.work_seconds = time.perf_counter() - work_start
        summary.duplicate_keys = committer.duplicates()
        if summary.duplicate_keys:
            log.warning("%d rows written in this run repeat the key of another row of this run", summary.duplicate_keys)
        _save_quietly(manifest, cfg)
    summary.totals = manifest.totals()
    summary.seconds = time.perf_counter() - started
    return summary


def _save_quietly(manifest: Manifest, cfg: TokenizeConfig) -> None:
    """The summary files are rebuilt from the entry files on the next run: an unreachable store must not mask the outcome."""
    try:
        manifest.save()
        versions.update_index(cfg.out, cfg.storage)
    except Exception as err:
        if storage.unavailable_cause(err) is None:
            raise
        log.warning("could not rewrite %s (%s); the entries committed so far are in %s", manifest.path,
                    execution.error_text(err), manifest.entries_dir)


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
