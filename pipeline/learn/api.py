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
from pipeline.bpe.constants import MAX_ID
from pipeline.bpe.learner import merge_loop, start_stats
from pipeline.bpe.vocab import CorpusStats, Merge, Vocabulary
from pipeline.codegrids import Corpus, open_corpus, write_rejects
from pipeline.learn.checkpoint import Checkpoint, Saved, check_compatible
from pipeline.learn.shard_group import ShardGroup
from schemas.base import InputError
from schemas.learn import LearnConfig

log = logging.getLogger(__name__)


def _settings(cfg: LearnConfig, corpus: Corpus) -> dict[str, Any]:
    """What must not change between a checkpoint and its resumption (the merge count may)."""
    return {
        "codebook_size": corpus.codebook_size,
        "sigma": cfg.sigma,
        "min_frequency": cfg.min_frequency,
        "alpha": cfg.alpha,
        "alpha_rel": cfg.effective_alpha_rel,
        "inputs": [[f.path, f.rows] for f in corpus.files],
        "holdout": [cfg.holdout_fraction, cfg.holdout_salt] if cfg.holdout_fraction else None,
    }


def _software() -> dict[str, str]:
    import numba
    import numpy

    from pipeline import __name__ as pkg

    return {"package": pkg, "numpy": numpy.__version__, "numba": numba.__version__, "python": sys.version.split()[0]}


def _build_group(cfg: LearnConfig, corpus: Corpus, state_dir: str | None):
    holdout = (cfg.holdout_fraction, cfg.holdout_salt) if cfg.holdout_fraction else None
    placement = execution.plan(cfg)
    if not placement.on_ray:
        return ShardGroup.read(corpus, 0, corpus.rows, cfg.shard_cells, cfg.storage, state_dir, holdout)
    from pipeline.learn.distributed import RayShards

    execution.ensure_ray(placement.address)
    return RayShards(corpus, execution.worker_count(placement), cfg.shard_cells, cfg.cpus, cfg.storage, state_dir,
                     placement.address, holdout)


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
    settings = _settings(cfg, corpus)
    checkpoint = Checkpoint(cfg.checkpoint_path, cfg.storage)
    saved: Saved | None = None
    if cfg.resume:
        saved = checkpoint.load()
        if saved is None:
            log.warning("no checkpoint at %s: starting from the beginning", cfg.checkpoint_path)
        else:
            check_compatible(saved, settings, cfg.checkpoint_path)
            log.info("resuming after %d merges from %s", len(saved.merges), saved.state_dir)

    log.info("reading %d rows from %d file(s), V=%d, workers=%s", corpus.rows, len(corpus.files), V, cfg.workers or "local")
    group = _build_group(cfg, corpus, saved.state_dir if saved else None)
    try:
        vocab = _learn(cfg, corpus, group, saved, checkpoint, settings, t_start)
    finally:
        close = getattr(group, "close", None)
        if close:
            close()
    return LearnSummary(vocab, cfg.out, corpus.rows, len(vocab.merges) - (len(saved.merges) if saved else 0),
                        cfg.workers)


def learn_vocabulary(cfg: LearnConfig) -> Vocabulary:
    """The vocabulary `run` learns, for callers that want only it (no metrics file: that is the runner's)."""
    return run(cfg).vocab


def _learn(cfg, corpus, group, saved, checkpoint, settings, t_start) -> Vocabulary:
    V = corpus.codebook_size
    report = group.report
    write_rejects(cfg.rejects_path, report.rejects, "learn", cfg.storage)
    if report.rejects:
        log.warning("%d of %d rows rejected (see %s)", len(report.rejects), report.rows, cfg.rejects_path)
    if report.held_out:
        log.info("%d grids held out (fraction %g, salt %r)", report.held_out, cfg.holdout_fraction, cfg.holdout_salt)
    if report.grids == 0:
        raise InputError(f"no valid grids among {report.rows} rows (rejects: {cfg.rejects_path})")
    log.info("%d grids, %d cells loaded in %.1fs", report.grids, report.cells, time.time() - t_start)

    t_count = time.time()
    alpha = saved.alpha if saved is not None else cfg.alpha
    stats = start_stats(group, cfg.sigma, cfg.min_frequency, alpha, cfg.effective_alpha_rel)
    alpha = stats.alpha
    log.info("counted %d live (pair, offset) entries in %.1fs; alpha = %g", stats.live_entries, time.time() - t_count, alpha)

    merges: list[Merge] = list(saved.merges) if saved else []
    tokens = report.cells - sum(m.merged for m in merges)
    stopped = _run_loop(cfg, group, stats, V, merges, tokens, report.grids, checkpoint, settings, alpha)
    if cfg.checkpoint_every and merges and (not saved or len(merges) > len(saved.merges)):
        checkpoint.save(merges, alpha, settings, group.save_state)

    vocab = Vocabulary(
        codebook_size=V, sigma=cfg.sigma, min_frequency=cfg.min_frequency, alpha=alpha,
        alpha_rel=cfg.effective_alpha_rel, requested_merges=cfg.merges, merges=merges,
        corpus=CorpusStats(report.grids, report.cells, sorted((h, w, n) for (h, w), n in report.shapes.items()),
                           len(report.rejects), report.held_out, report.cells - sum(m.merged for m in merges),
                           f"{report.fingerprint_sum:016x}"),
        quantizer_fingerprint=corpus.quantizer_fingerprint, stopped=stopped, software=_software(),
        holdout={"fraction": cfg.holdout_fraction, "salt": cfg.holdout_salt} if cfg.holdout_fraction else None,
    )
    vocab.save(cfg.out, cfg.storage)
    elapsed = time.time() - t_start
    log.info("%d merges (%s); tokens per grid %.1f -> %.1f; %.1fs; wrote %s", len(merges), stopped,
             report.cells / report.grids, vocab.corpus.tokens_after / report.grids, elapsed, cfg.out)
    return vocab


def _run_loop(cfg, group, stats, V, merges, tokens, n_grids, checkpoint, settings, alpha) -> str:
    """merge_loop with a progress bar on stderr and periodic checkpoints."""
    from tqdm import tqdm

    bar = tqdm(total=cfg.merges, initial=min(len(merges), cfg.merges), desc="merges", unit="merge",
               file=sys.stderr, disable=not cfg.progress, mininterval=1.0, dynamic_ncols=True)
    state = {"tokens": tokens}

    def on_merge(done: list[Merge]) -> None:
        m = done[-1]
        state["tokens"] -= m.merged
        bar.update(1)
        bar.set_postfix_str(f"F={m.frequency} S={m.consistency:.3f} tok/grid={state['tokens'] / n_grids:.1f}", refresh=False)
        if cfg.checkpoint_every and len(done) % cfg.checkpoint_every == 0 and len(done) < cfg.merges:
            checkpoint.save(done, alpha, settings, group.save_state)

    try:
        return merge_loop(group, stats, V, cfg.merges, merges, on_merge)
    finally:
        bar.close()
