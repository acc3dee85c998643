"""The quantize stage's run function under the name every stage shares (`jobs._entry`, `vbpe submit`).

Adds the run metrics every stage writes (`<out>/metrics.json`, see pipeline/metrics.py).
"""
from __future__ import annotations

from pipeline import storage
from pipeline.metrics import StageMetrics
from pipeline.quantize.run import run_quantize
from pipeline.quantize.summary import RunSummary
from schemas.quantize import QuantizeConfig


def run(cfg: QuantizeConfig) -> RunSummary:
    with StageMetrics("quantize", storage.join(cfg.out, "metrics.json")) as metrics:
        summary = run_quantize(cfg)
        metrics.add(rows_in=summary.rows_in, rows_out=summary.rows_written, rows_rejected=summary.rows_rejected)
        metrics.set(shards=summary.shards, shards_done=summary.done, shards_skipped=summary.skipped,
                    shards_failed=len(summary.failed), quantizer=summary.quantizer,
                    encode_seconds=round(summary.encode_seconds, 3),
                    images_per_s=round(summary.rows_written / max(summary.encode_seconds, 1e-9), 2))
    return summary
