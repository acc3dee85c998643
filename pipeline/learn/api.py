"""`run(LearnConfig)`: learn a vocabulary from code grids, end to end.

The algorithm is `pipeline.bpe.learner`'s loop; this stage adds files, rejects, checkpoints,
progress, metrics and the choice of local shards or Ray actors.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from pipeline import execution, storage
from pipeline import metrics as run_metrics
from pipeline.bpe import pair_table
from pipeline.bpe.constants import MAX_ID
from pipeline.bpe.learner import LocalWorkers, merge_loop
from pipeline.bpe.worker import LearnerWorker
from pipeline.bpe.vocab import CorpusStats, Merge, Vocabulary
from pipeline.codegrids import Corpus, open_corpus, write_rejects
from pipeline.learn.checkpoint import Checkpoint, Saved, check_compatible, differences
from pipeline.learn.shard_group import ShardGroup
from schemas.base import InputError
from schemas.learn import LearnConfig

log = logging.getLogger(__name__)


def _identity(path: str, options) -> list[Any]:
    """Size and the store's stamp of a file (ETag on S3, mtime locally): both change when it is rewritten."""
    fs, p = storage.get_fs(path, options)
    info = fs.info(p)
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return [int(info.get("size") or 0), str(stamp)]


def _settings(cfg: LearnConfig, corpus: Corpus) -> dict[str, Any]:
    """What must not change between a checkpoint and its resumption (the merge count may)."""
    return {
        "codebook_size": corpus.codebook_size,
        "sigma": cfg.sigma,
        "min_frequency": cfg.min_frequency,
        "alpha": cfg.alpha,
        "alpha_rel": cfg.effective_alpha_rel,
        "inputs": [[f.path, f.rows, *_identity(f.path, cfg.storage)] for f in corpus.files],
        "holdout": [cfg.holdout_fraction, cfg.holdout_salt] if cfg.holdout_fraction else None,
    }


def _resume_point(cfg: LearnConfig, checkpoint: Checkpoint, settings: dict[str, Any]) -> Saved | None:
    """The checkpoint to continue from: `resume: true` refuses a different run, `auto` starts afresh."""
    if not cfg.resume:
        return None
    saved = checkpoint.load()
    if saved is None:
        log.warning("no checkpoint at %s: starting from the beginning", cfg.checkpoint_path)
        return None
    diffs = differences(saved, settings)
    if diffs and cfg.resume == "auto":
        log.warning("checkpoint %s is of another run (%s): learning afresh", cfg.checkpoint_path, "; ".join(diffs))
        return None
    check_compatible(saved, settings, cfg.checkpoint_path)
    log.info("resuming after %d merges from %s", len(saved.merges), saved.state_dir)
    return saved


def _warn_about_inputs(corpus: Corpus) -> None:
    unstamped = [f.path for f in corpus.files if not f.quantizer_fingerprint]
    if unstamped and corpus.quantizer_fingerprint:
        log.warning("%d of %d input files carry no quantizer fingerprint (e.g. %s): nothing shows they come from "
                    "quantizer %s like the others", len(unstamped), len(corpus.files), unstamped[0],
                    corpus.quantizer_fingerprint)
    elif unstamped:
        log.warning("the input grids carry no quantizer fingerprint: the vocabulary cannot be checked against the "
                    "quantizer that makes the codes it will tokenize")


def _software() -> dict[str, str]:
    from importlib.metadata import version

    import numpy

    from pipeline import __name__ as pkg

    return {"package": pkg, "numpy": numpy.__version__, "numba": version("numba"), "python": sys.version.split()[0]}


def _build_group(cfg: LearnConfig, corpus: Corpus, state_dir: str | None):
    holdout = (cfg.holdout_fraction, cfg.holdout_salt) if cfg.holdout_fraction else None
    placement = execution.plan(cfg)
    if not placement.on_ray:
        group = ShardGroup.read(corpus, 0, corpus.rows, cfg.shard_cells, cfg.storage, state_dir, holdout)
        return LocalGroup(group, cfg.sigma, cfg.min_frequency)
    from pipeline.learn.distributed import RayWorkers

    execution.ensure_ray(placement.address)
    return RayWorkers(corpus, execution.worker_count(placement), cfg.shard_cells, cfg.cpus, cfg.storage, state_dir,
                      holdout, cfg.sigma, cfg.min_frequency, cfg.transport)


class LocalGroup(LocalWorkers):
    """One worker in this process holding every grid and the only partition (no Ray)."""

    def __init__(self, group: ShardGroup, sigma: float, min_frequency: int):
        super().__init__([LearnerWorker(group, 0, 1, sigma, min_frequency)])
        self.group, self.report = group, group.report

    def save_state(self, directory: str) -> None:
        self.group.save_state(directory)


@dataclass
class LearnSummary:
    """What a learn run did (the stage contract's summary); the vocabulary itself is `vocab` (also on disk)."""

    vocab: Vocabulary
    out: str
    rows_in: int
    new_merges: int
    workers: int

    ok = True

    def to_json(self) -> dict[str, Any]:
        return self.vocab.to_json()

    def metrics(self) -> dict[str, Any]:
        c = self.vocab.corpus
        return {"rows_in": self.rows_in, "rows_out": c.grids + c.held_out, "rows_rejected": c.rejected,
                "merges": self.new_merges, "grids": c.grids, "held_out": c.held_out, "cells": c.cells,
                "tokens_after": c.tokens_after, "vocabulary": self.out, "workers": self.workers}

    def lines(self) -> list[str]:
        c = self.vocab.corpus
        return [f"wrote {self.out}: {len(self.vocab.merges)} merges over {c.grids} grids, tokens per grid "
                f"{c.cells / max(c.grids, 1):.1f} -> {c.tokens_after / max(c.grids, 1):.1f}"]


def run(cfg: LearnConfig) -> LearnSummary:
    t_start = time.time()
    corpus = open_corpus(cfg.inputs, cfg.codebook_size, cfg.storage)
    V = corpus.codebook_size
    if V + cfg.merges > MAX_ID:
        raise InputError(f"V + merges = {V + cfg.merges} exceeds the supported {MAX_ID} token ids")
    _warn_about_inputs(corpus)
    settings = _settings(cfg, corpus)
    checkpoint = Checkpoint(cfg.checkpoint_path, cfg.storage)
    saved = _resume_point(cfg, checkpoint, settings)

    log.info("reading %d rows from %d file(s), V=%d, workers=%s", corpus.rows, len(corpus.files), V, cfg.workers or "local")
    first_merges = len(saved.merges) if saved else 0
    vocab, workers = _learn_with_restarts(cfg, corpus, saved, checkpoint, settings, t_start, run_metrics.current())
    return LearnSummary(vocab, cfg.out, corpus.rows, max(0, len(vocab.merges) - first_merges), workers)


def learn_vocabulary(cfg: LearnConfig) -> Vocabulary:
    """The vocabulary `run` learns, for callers that want only it (no metrics file: that is the runner's)."""
    return run(cfg).vocab


def _learn_with_restarts(cfg, corpus, saved, checkpoint, settings, t_start, metrics) -> tuple[Vocabulary, int]:
    """Learn; when a Ray worker is lost, start new workers from the last checkpoint (up to cfg.restarts times).

    Returns the vocabulary and the number of Ray workers (0: in this process)."""
    from pipeline.learn.distributed import WorkerLost

    restarts = 0
    while True:
        # a shorter vocabulary than the checkpoint's is its prefix: no state (and no learning) needed
        truncate = saved is not None and cfg.merges < len(saved.merges)
        group = _build_group(cfg, corpus, saved.state_dir if saved and not truncate else None)
        try:
            return _learn(cfg, corpus, group, saved, checkpoint, settings, t_start, metrics), (
                0 if isinstance(group, LocalGroup) else group.partitions)
        except WorkerLost as err:
            if restarts >= cfg.restarts:
                raise WorkerLost(f"{err}; gave up after {restarts} restart(s): run again with --resume to continue "
                                 f"from the last checkpoint") from None
            restarts += 1
            saved = checkpoint.load() if (cfg.checkpoint_every or saved) else None
            try:
                if saved is not None:
                    check_compatible(saved, settings, cfg.checkpoint_path)
            except InputError:  # an older run's checkpoint, not this one's
                saved = None
            log.warning("%s; restarting the workers (%d of %d) from %s", err, restarts, cfg.restarts,
                        f"the checkpoint after {len(saved.merges)} merges" if saved else "the beginning (no checkpoint)")
        finally:
            close = getattr(group, "close", None)
            if close:
                close()


def _learn(cfg, corpus, group, saved, checkpoint, settings, t_start, metrics) -> Vocabulary:
    V = corpus.codebook_size
    report = group.report
    write_rejects(cfg.rejects_path, report.rejects, "learn", cfg.storage)
    if report.rejects:
        log.warning("%d of %d rows rejected (see %s)", len(report.rejects), report.rows, cfg.rejects_path)
    if report.held_out:
        log.info("%d grids held out (fraction %g, salt %r)", report.held_out, cfg.holdout_fraction, cfg.holdout_salt)
    if report.grids == 0:
        _count_rows(metrics, report)
        raise InputError(f"no valid grids among {report.rows} rows (rejects: {cfg.rejects_path})")
    tallest = max(h for h, _ in report.shapes)
    if not pair_table.fits(V + cfg.merges - 1, tallest):
        _count_rows(metrics, report)
        raise InputError(f"V + merges = {V + cfg.merges} token ids do not fit the pair table's words with grids of "
                         f"{tallest} rows: ask for fewer merges (ids below {2 ** 19} always fit)")
    duplicates = report.duplicate_keys
    metrics.set(duplicate_keys=duplicates)
    if duplicates:
        log.warning("%d grids have a key another grid already has: each copy is learned from (remove duplicates "
                    "from the inputs if they are not meant to weigh more)", duplicates)
    fingerprint = f"{report.fingerprint_sum:016x}"
    if saved is not None and saved.corpus is not None and saved.corpus != fingerprint:
        _count_rows(metrics, report)
        raise InputError(f"cannot resume from {cfg.checkpoint_path}: the grids' contents changed since it was written "
                         f"(fingerprint {saved.corpus} -> {fingerprint}); start afresh without --resume")
    log.info("%d grids, %d cells loaded in %.1fs", report.grids, report.cells, time.time() - t_start)

    merges: list[Merge] = list(saved.merges) if saved else []
    if len(merges) > cfg.merges:
        log.info("the checkpoint has %d merges: keeping its first %d (exactly the %d-merge vocabulary)", len(merges),
                 cfg.merges, cfg.merges)
        merges, alpha, stopped = merges[: cfg.merges], saved.alpha, "requested merges reached"
    else:
        t_count = time.time()
        alpha, candidates = group.start(saved.alpha if saved is not None else cfg.alpha, cfg.effective_alpha_rel)
        log.info("counted every occurrence in %.1fs; alpha = %g", time.time() - t_count, alpha)
        tokens = report.cells - sum(m.merged for m in merges)
        stopped = _run_loop(cfg, group, candidates, V, merges, tokens, report.grids, checkpoint, settings, alpha,
                            fingerprint)
        if cfg.checkpoint_every and merges and (not saved or len(merges) > len(saved.merges)):
            checkpoint.save(merges, alpha, settings, group.save_state, fingerprint)
        _record_resources(metrics, group)

    vocab = Vocabulary(
        codebook_size=V, sigma=cfg.sigma, min_frequency=cfg.min_frequency, alpha=alpha,
        alpha_rel=cfg.effective_alpha_rel, requested_merges=cfg.merges, merges=merges,
        corpus=CorpusStats(report.grids, report.cells, sorted((h, w, n) for (h, w), n in report.shapes.items()),
                           len(report.rejects), report.held_out, report.cells - sum(m.merged for m in merges),
                           fingerprint),
        quantizer_fingerprint=corpus.quantizer_fingerprint, stopped=stopped, software=_software(),
        holdout={"fraction": cfg.holdout_fraction, "salt": cfg.holdout_salt} if cfg.holdout_fraction else None,
    )
    vocab.save(cfg.out, cfg.storage)
    elapsed = time.time() - t_start
    log.info("%d merges (%s); tokens per grid %.1f -> %.1f; %.1fs; wrote %s", len(merges), stopped,
             report.cells / report.grids, vocab.corpus.tokens_after / report.grids, elapsed, cfg.out)
    return vocab


def _count_rows(metrics, report) -> None:
    """Rows read by a run refused after reading them (on success the summary carries the counts)."""
    metrics.add(rows_in=report.rows, rows_out=report.grids + report.held_out, rows_rejected=len(report.rejects))


def _record_resources(metrics, group) -> None:
    """Every worker's memory and profile, and the peak RSS summed over this process and the actors."""
    import os
    import resource

    workers = group.resources()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    others = sum(w["peak_rss_bytes"] for w in workers if w["pid"] != os.getpid())
    metrics.set(workers_resources=workers, driver_step_s=round(group.step_s, 4), steps=group.steps,
                driver_first_step_s=getattr(group, "first_step_s", None),
                peak_rss_all_processes_bytes=own + others, driver_peak_rss_bytes=own)


def _run_loop(cfg, group, candidates, V, merges, tokens, n_grids, checkpoint, settings, alpha, fingerprint) -> str:
    """merge_loop with a progress bar on stderr and periodic checkpoints."""
    from tqdm import tqdm

    bar = tqdm(total=cfg.merges, initial=min(len(merges), cfg.merges), desc="merges", unit="merge",
               file=sys.stderr, disable=not cfg.progress, mininterval=1.0, dynamic_ncols=True)
    state = {"tokens": tokens}
    every = cfg.checkpoint_every  # a checkpoint after every multiple of it (batched workers stop there)

    def on_merge(done: list[Merge]) -> None:
        m = done[-1]
        state["tokens"] -= m.merged
        bar.update(1)
        bar.set_postfix_str(f"F={m.frequency} S={m.consistency:.3f} tok/grid={state['tokens'] / n_grids:.1f}", refresh=False)
        if every and len(done) % every == 0 and len(done) < cfg.merges:
            checkpoint.save(done, alpha, settings, group.save_state, fingerprint)

    try:
        return merge_loop(group, candidates, V, cfg.merges, merges, on_merge,
                          boundary=(lambda n: (n // every + 1) * every) if every else None)
    finally:
        bar.close()
