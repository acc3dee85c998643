"""What the demo does after quantizing: learn, tokenize, export the tokenizer, write the report.

The vocabulary is learned on the training photos' grids only; the report measures it on the grids of
the held-out photos, which it never saw. Every figure returned describes what is on disk (version
totals, not only this run's work), so a re-run that resumes reports the same corpus.
"""
from __future__ import annotations

import time
from typing import Any

from pipeline import storage

STAGES = 7


def run_downstream(grids_dir: str, out_dir: str, quantizer, train_shards: list[str], heldout_shards: list[str],
                   merges: int = 1000, stage=lambda n, total, text: None) -> dict[str, Any]:
    from pipeline.learn.api import learn_vocabulary as learn
    from pipeline.report.api import run as report
    from pipeline.tokenize.api import run as tokenize
    from schemas.export import ExportConfig
    from schemas.layout import IdLayout
    from schemas.learn import LearnConfig
    from schemas.report import ReportConfig
    from schemas.tokenize import TokenizeConfig
    from vbpe.export import export

    seconds: dict[str, float] = {}
    train_grids = _grid_files(grids_dir, train_shards)
    heldout_grids = _grid_files(grids_dir, heldout_shards)

    t = time.perf_counter()
    vocab_path = storage.join(out_dir, "vocab", "vocab.json")
    stage(4, STAGES, f"learning {merges} merges (P = F + alpha * S) on the training photos' grids")
    vocab = learn(LearnConfig(inputs=train_grids, out=vocab_path, merges=merges, checkpoint_every=0))
    seconds["learn"] = time.perf_counter() - t

    t = time.perf_counter()
    layout = IdLayout(codebook_size=vocab.codebook_size, num_merges=len(vocab.merges))
    stage(5, STAGES, f"tokenizing every grid into LLM ids (Llama-3 layout: {layout.total_size} ids)")
    tok = tokenize(TokenizeConfig(inputs=[grids_dir], vocab=vocab_path, out=storage.join(out_dir, "tokens"),
                                  layout=layout))
    seconds["tokenize"] = time.perf_counter() - t

    t = time.perf_counter()
    tokenizer_dir = storage.join(out_dir, "tokenizer")
    stage(6, STAGES, "exporting the tokenizer (vocabulary + quantizer + layout) for vbpe.VisualTokenizer")
    export(ExportConfig(vocab=vocab_path, quantizer=quantizer, layout=layout, out=tokenizer_dir))
    seconds["export"] = time.perf_counter() - t

    t = time.perf_counter()
    stage(7, STAGES, "writing the report on the held-out photos (atlas, plots, summary)")
    rep = report(ReportConfig(vocab=vocab_path, grids=heldout_grids, shards=list(heldout_shards),
                              tokenizer=tokenizer_dir, out=storage.join(out_dir, "report"), holdout_fraction=1.0))
    seconds["report"] = time.perf_counter() - t

    c, totals = vocab.corpus, tok.totals
    return {
        "vocab": vocab_path,
        "merges": len(vocab.merges),
        "alpha": vocab.alpha,
        "grids_learned": c.grids,
        "grids_held_out": rep["sample"]["held_out_grids"],
        "tokens_per_image_before": round(c.cells / c.grids, 1),
        "tokens_per_image_after": round(c.tokens_after / c.grids, 1),
        "tokens_per_image_held_out": round(rep["compression"]["final_holdout"], 1),
        "tokens": {"data": tok.data, "rows_written": totals["rows_written"], "rows_rejected": totals["rows_rejected"],
                   "cells_per_token": round(totals["cells"] / totals["tokens"], 3) if totals["tokens"] else None},
        "tokenizer": tokenizer_dir,
        "report": rep.get("files", {}).get("report.html"),
        "report_summary": rep,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def _grid_files(grids_dir: str, shards: list[str]) -> list[str]:
    """The grid files quantize wrote for these shards (named after the shard)."""
    import os

    names = [os.path.basename(s).rsplit(".tar", 1)[0] for s in shards]
    return [storage.join(grids_dir, f"{n}-*.parquet") for n in names]
