"""What the demo does after quantizing: learn a vocabulary, tokenize the grids, write the report.

A quarter of the grids (by key hash) is held out of learning, so the report's "held-out" figures
(compression, dead tokens) are measured on grids the vocabulary never saw.
"""
from __future__ import annotations

import time
from typing import Any

from pipeline import storage

HOLDOUT = 0.25


def run_downstream(grids_dir: str, out_dir: str, shards: list[str] | None = None, merges: int = 1000,
                   stage=lambda n, total, text: None) -> dict[str, Any]:
    from pipeline.learn.api import learn_vocabulary as learn
    from pipeline.report.api import run as report
    from pipeline.tokenize.api import run as tokenize
    from schemas.layout import IdLayout
    from schemas.learn import LearnConfig
    from schemas.report import ReportConfig
    from schemas.tokenize import TokenizeConfig

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    vocab_path = storage.join(out_dir, "vocab", "vocab.json")
    stage(4, 6, f"learning {merges} merges (P = F + alpha * S), {HOLDOUT:.0%} of the grids held out")
    vocab = learn(LearnConfig(inputs=[grids_dir], out=vocab_path, merges=merges, holdout_fraction=HOLDOUT,
                              checkpoint_every=0))
    seconds["learn"] = time.perf_counter() - t

    t = time.perf_counter()
    layout = IdLayout(codebook_size=vocab.codebook_size, num_merges=len(vocab.merges))
    stage(5, 6, f"tokenizing every grid into LLM ids (Llama-3 layout: {layout.total_size} ids)")
    tok = tokenize(TokenizeConfig(inputs=[grids_dir], vocab=vocab_path, out=storage.join(out_dir, "tokens"),
                                  layout=layout))
    seconds["tokenize"] = time.perf_counter() - t

    t = time.perf_counter()
    stage(6, 6, "writing the report (atlas with crops from the photos, plots, summary)")
    rep = report(ReportConfig(vocab=vocab_path, grids=[grids_dir], shards=list(shards or []),
                              out=storage.join(out_dir, "report"), holdout_fraction=HOLDOUT))
    seconds["report"] = time.perf_counter() - t

    c = vocab.corpus
    return {
        "vocab": vocab_path,
        "merges": len(vocab.merges),
        "alpha": vocab.alpha,
        "grids_learned": c.grids,
        "grids_held_out": c.held_out,
        "tokens_per_image_before": round(c.cells / c.grids, 1),
        "tokens_per_image_after": round(c.tokens_after / c.grids, 1),
        "tokens": {"data": tok.data, "rows_written": tok.rows_written, "rows_rejected": tok.rows_rejected,
                   "cells_per_token": round(tok.cells / tok.tokens, 3) if tok.tokens else None},
        "report": rep.get("files", {}).get("report.html"),
        "report_summary": rep,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
