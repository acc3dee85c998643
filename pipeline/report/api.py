"""`run(ReportConfig) -> summary`: the report as a Python call (the CLI and `make demo` use it).

Writes to `out`: atlas.png, compression.png, merge_scores.png, token_sizes.png, dead_tokens.png,
report.html (everything inlined), summary.json (every figure drawn), metrics.json.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.vocab import Vocabulary
from pipeline.codegrids import open_corpus
from pipeline.metrics import StageMetrics, log_event
from pipeline.report import tokens as T
from pipeline.report.analyze import analyze
from pipeline.report.cards import build_cards, choose_tokens
from pipeline.report.kinds import kind_shares
from pipeline.report.sample import read_holdout
from schemas.base import InputError
from schemas.report import ReportConfig

log = logging.getLogger("vbpe.report")
FORMAT = "vbpe.report.v1"
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DEFAULT_IMAGE_SIZE = 512  # Chameleon's input side, used only when neither the flag nor a manifest says


def _round(values, digits: int = 4) -> list[float]:
    return [round(float(x), digits) for x in values]


def _hist(values: np.ndarray, weights: np.ndarray | None = None) -> dict[int, int]:
    if values.size == 0:
        return {}
    counts = np.bincount(values, weights=weights).astype(np.int64)
    return {int(s): int(n) for s, n in enumerate(counts) if n}


def _grids_fingerprint_matches(stored: str, total: int) -> bool | None:
    if not stored:
        return None
    return stored in (str(total), f"{total:016x}", f"{total:x}")


def dead_rates(vocab: Vocabulary, usage: np.ndarray, points: int, rare_below: int) -> list[dict]:
    """Dead / rare rate of the first m merges for m = M, M/2, M/4, ... (from the one full encoding)."""
    V = vocab.codebook_size
    out = []
    for m in T.checkpoint_sizes(len(vocab.merges), points):
        u = T.alive_after(vocab, usage, m)
        out.append({"merges": m, "unused": int(np.count_nonzero(u[V : V + m] == 0)),
                    "dead_rate": T.dead_share(u, V, V + m), "rare_rate": T.dead_share(u, V, V + m, rare_below)})
    return out


def _local_out(out: str) -> tuple[str, bool]:
    """A local directory to draw into (a temp dir when `out` is remote; files are uploaded after)."""
    if storage.is_remote(out):
        return tempfile.mkdtemp(prefix="vbpe-report-"), True
    os.makedirs(out, exist_ok=True)
    return out, False


def _quantizer_input(cfg: ReportConfig, grid_files: list[str]) -> tuple[int, str, str]:
    """(R, resample, where R came from): the flag, else the quantize manifest beside the grids, else 512."""
    from pipeline.report.images import quantizer_input

    if cfg.image_size:
        return cfg.image_size, cfg.resample, "flag"
    found = quantizer_input(grid_files, cfg.storage)
    return (found[0], found[1], "quantize manifest") if found else (DEFAULT_IMAGE_SIZE, cfg.resample, "default")


def _kinds_line(kinds: dict[str, dict], names: tuple[str, ...]) -> str:
    ids = sum(kinds[n]["ids"] for n in names)
    vocab_share = sum(kinds[n]["share_of_vocabulary"] for n in names)
    token_share = sum(kinds[n]["share_of_tokens"] for n in names)
    return f"{ids} learned ids ({vocab_share:.0%} of the vocabulary), {token_share:.0%} of the sample's tokens"


def _appearance(cfg: ReportConfig, vocab: Vocabulary, cards) -> tuple[dict[int, np.ndarray] | None, str]:
    """Decoded patches of the codes on the cards (from the tokenizer's decoder), and how cells are drawn."""
    if not cfg.tokenizer:
        return None, "one colour per code (pass --tokenizer for decoded appearance)"
    from pipeline.report.appearance import code_patches
    from vbpe.tokenizer import VisualTokenizer

    tok = VisualTokenizer.from_pretrained(cfg.tokenizer, storage=cfg.storage)
    vocab.check_codebook(tok.codebook_size, what=f"tokenizer {cfg.tokenizer}")
    vocab.check_quantizer(tok.quantizer.fingerprint, what=f"codes of tokenizer {cfg.tokenizer}")
    if not tok.has_decoder:
        return None, f"one colour per code ({cfg.tokenizer} has no decoder)"
    codes = {c for card in cards for shape in card.shapes for c in (shape.codes or [])}
    return code_patches(tok, codes), f"decoded by the {tok.quantizer.kind} quantizer's decoder"


def run(cfg: ReportConfig) -> dict[str, Any]:
    with StageMetrics("report", storage.join(cfg.out, "metrics.json"), log, storage_options=cfg.storage) as metrics:
        summary = _run(cfg, metrics)
        metrics.set(held_out_grids=summary["sample"]["held_out_grids"], vocab_merges=summary["vocab"]["merges"],
                    seconds=summary["seconds"])
    summary["metrics"] = metrics.result
    return summary


def _run(cfg: ReportConfig, metrics: StageMetrics) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from pipeline.report import plots
    from pipeline.report.atlas import render_atlas
    from pipeline.report.html import page

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    vocab = Vocabulary.load(cfg.vocab, cfg.storage)
    corpus = open_corpus(cfg.grids, cfg.codebook_size, cfg.storage)
    vocab.check_codebook(corpus.codebook_size)
    vocab.check_quantizer(corpus.quantizer_fingerprint)
    shards = storage.expand(cfg.shards, SHARD_SUFFIXES, cfg.storage) if cfg.shards else []  # fail early on a bad path
    evaluation = [f for p in cfg.evaluation or [] for f in storage.expand([p], (".json",), cfg.storage)]  # in the order given
    V, M = vocab.codebook_size, len(vocab.merges)
    sample = read_holdout(corpus, cfg.holdout_fraction, cfg.holdout_salt, cfg.max_holdout_grids, options=cfg.storage,
                          fingerprint=bool(vocab.corpus.fingerprint))
    grids = sample.grids
    # every row read is accepted or rejected; the held-out sample is a figure of its own
    metrics.add(rows_in=sample.rows_read, rows_out=sample.rows_read - sample.rows_rejected, rows_rejected=sample.rows_rejected)
    if len(grids) == 0:
        raise InputError(
            f"the held-out sample is empty ({sample.rows_read} rows, {sample.rows_rejected} rejected, "
            f"holdout_fraction {cfg.holdout_fraction}): raise --holdout-fraction")
    match = None
    if sample.fingerprint_sum is not None:
        match = _grids_fingerprint_matches(vocab.corpus.fingerprint, sample.fingerprint_sum)
    seconds["read"] = time.perf_counter() - t0

    t = time.perf_counter()
    encoder = BpeEncoder(vocab)
    pool = 2 * cfg.exemplars if shards else 0
    an = analyze(vocab, grids, cfg.batch_grids, pool, encoder)
    sizes = T.token_sizes(vocab)
    holdout_curve = T.tokens_curve(vocab, an.usage, an.cells, an.grids)
    train_curve = vocab.tokens_per_grid() if M and any(m.merged for m in vocab.merges) else None
    if M == 0 and vocab.corpus.grids:
        train_curve = vocab.tokens_per_grid()
    by_size = dead_rates(vocab, an.usage, cfg.dead_rate_points, cfg.rare_below)
    metrics.event("report_analysed", grids=an.grids, cells=an.cells, tokens=int(an.usage.sum()))
    seconds["analyse"] = time.perf_counter() - t

    t = time.perf_counter()
    image_size, resample, size_source = _quantizer_input(cfg, [f.path for f in corpus.files])
    chosen = choose_tokens(vocab, an.usage, cfg.atlas_tokens)
    ids = [i for _, section in chosen for i in section]
    cards, ex_note = build_cards(vocab, an, grids, encoder, ids, sizes, cfg.exemplars, shards, image_size,
                                 resample, cfg.storage)
    by_id = {c.id: c for c in cards}
    sections = [(title, [by_id[i] for i in section]) for title, section in chosen]
    patches, appearance = _appearance(cfg, vocab, cards)
    seconds["cards"] = time.perf_counter() - t

    t = time.perf_counter()
    local, remote = _local_out(cfg.out)
    files = {name: os.path.join(local, name) for name in
             ("atlas.png", "compression.png", "merge_scores.png", "token_sizes.png", "dead_tokens.png")}
    n_ex = cfg.exemplars if shards else 0
    kinds = kind_shares(vocab, an.usage)
    if M:
        sections = [(f"{title}: {_kinds_line(kinds, ('mixed', 'repeat') if i == 0 else ('flat',))}", cs)
                    for i, (title, cs) in enumerate(sections)]
    title = (f"vbpe atlas: {len(cards)} tokens  |  vocabulary {vocab.fingerprint()}, V={V}, {M} merges  |  "
             f"{an.grids} held-out grids  |  cells: {appearance}")
    render_atlas(sections, title, n_ex, files["atlas.png"], patches)
    plots.compression(train_curve, holdout_curve, an.grids, files["compression.png"])
    freq = np.array([m.frequency for m in vocab.merges], np.float64)
    cons = np.array([m.consistency for m in vocab.merges], np.float64)
    plots.merge_scores(freq, cons, files["merge_scores.png"])
    learned_sizes = sizes[V:]
    vocab_hist = _hist(learned_sizes)
    usage_hist = _hist(sizes, an.usage.astype(np.float64))
    plots.token_sizes(vocab_hist, usage_hist, files["token_sizes.png"])
    base_rate = T.dead_share(an.usage, 0, V)
    plots.dead_tokens(by_size if M else [], base_rate, cfg.rare_below, files["dead_tokens.png"])
    seconds["draw"] = time.perf_counter() - t

    final = by_size[-1] if by_size else {"unused": 0, "dead_rate": None, "rare_rate": None}
    summary: dict[str, Any] = {
        "format": FORMAT,
        "vocab": {
            "path": cfg.vocab, "fingerprint": vocab.fingerprint(), "codebook_size": V, "merges": M,
            "requested_merges": vocab.requested_merges, "alpha": vocab.alpha, "alpha_rel": vocab.alpha_rel,
            "sigma": vocab.sigma, "min_frequency": vocab.min_frequency, "stopped": vocab.stopped,
            "quantizer_fingerprint": vocab.quantizer_fingerprint, "training_grids": vocab.corpus.grids,
            "training_cells": vocab.corpus.cells,
        },
        "sample": {
            "grids_files": len(corpus.files), "rows": sample.rows_read, "rows_rejected": sample.rows_rejected,
            "reject_reasons": sample.reject_reasons, "holdout_fraction": cfg.holdout_fraction,
            "holdout_salt": cfg.holdout_salt, "in_split": sample.in_split, "max_holdout_grids": cfg.max_holdout_grids,
            "held_out_grids": an.grids, "cells": an.cells, "grids_match_training_corpus": match,
        },
        "compression": {
            "cells_per_grid": an.cells / an.grids,
            "final_holdout": float(holdout_curve[-1]),
            "final_train": None if train_curve is None else float(train_curve[-1]),
            "holdout_tokens_per_grid": _round(holdout_curve),
            "train_tokens_per_grid": None if train_curve is None else _round(train_curve),
        },
        "merges": {"frequency": [int(x) for x in freq], "consistency": _round(cons, 6)},
        "token_sizes": {
            "learned_ids": vocab_hist, "occurrences": usage_hist,
            "mean_learned": float(learned_sizes.mean()) if M else None,
            "mean_per_occurrence": float((sizes * an.usage).sum() / max(1, an.usage.sum())),
        },
        "dead": {
            "learned_ids": M, "learned_unused": final["unused"], "dead_rate": final["dead_rate"],
            "rare_below": cfg.rare_below, "rare_rate": final["rare_rate"],
            "base_ids": V, "base_unused": int(np.count_nonzero(an.usage[:V] == 0)), "base_dead_rate": base_rate,
            "by_vocabulary_size": by_size if M else [],
        },
        "merge_kinds": kinds,
        "atlas": {
            "tokens": [c.to_json() for c in cards], "exemplars": ex_note, "appearance": appearance,
            "sections": [{"title": t, "ids": [c.id for c in cs]} for t, cs in sections],
            "image_size": image_size, "resample": resample, "image_size_source": size_source,
        },
        "usage_top": [[int(i), int(an.usage[i])] for i in np.lexsort((np.arange(vocab.size), -an.usage))[:100] if an.usage[i]],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    sections = ""
    if cfg.evaluation:
        from pipeline.evaluate.report import html_section

        sections, eval_files = html_section(evaluation, local, cfg.storage)
        files.update(eval_files)
        summary["evaluation"] = list(cfg.evaluation)
    page_path = os.path.join(local, "report.html")
    images = {"Atlas": files["atlas.png"], "Compression": files["compression.png"],
              "Merge scores": files["merge_scores.png"], "Token sizes": files["token_sizes.png"],
              "Dead tokens": files["dead_tokens.png"]}
    with open(page_path, "w", encoding="utf-8") as f:
        f.write(page(summary, images, sections))
    files["report.html"] = page_path
    summary["files"] = {name: storage.join(cfg.out, name) for name in files} | {"summary.json": storage.join(cfg.out, "summary.json")}
    summary_text = json.dumps(summary, indent=1) + "\n"
    if remote:
        for name, path in files.items():
            with open(path, "rb") as src, storage.open_file(storage.join(cfg.out, name), "wb", cfg.storage) as dst:
                dst.write(src.read())
        storage.write_text(storage.join(cfg.out, "summary.json"), summary_text, cfg.storage)
        shutil.rmtree(local, ignore_errors=True)
    else:
        storage.write_text(os.path.join(local, "summary.json"), summary_text)
    log_event("report_written", log, stage="report", out=cfg.out, atlas=summary["files"]["atlas.png"],
              tokens=len(cards), held_out_grids=an.grids)
    return summary
