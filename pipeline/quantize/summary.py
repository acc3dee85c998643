"""What a quantize run did: for the console, the job's JSON, the metrics file and callers (demo, bench)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.execution import StreamTrace
from pipeline.incremental import Tally
from pipeline.quantize.outputs import OutputDirs


@dataclass
class QuantizeSummary(Tally):
    """Counts per shard (the inputs) from `Tally`, plus the quantizer and timings."""

    out: str
    quantizer: str
    fingerprint: str
    fitted_codebook: bool = False
    seconds: float = 0.0
    encode_seconds: float = 0.0
    trace: StreamTrace = field(default_factory=StreamTrace)

    @property
    def shards(self) -> int:
        return self.inputs

    @property
    def images_per_second(self) -> float:
        return self.rows_written / max(self.encode_seconds, 1e-9)

    def to_json(self) -> dict[str, Any]:
        dirs = OutputDirs(self.out)
        return {
            "ok": self.ok, "out": self.out, "quantizer": self.quantizer, "fingerprint": self.fingerprint,
            "shards": self.shards, "done": self.done, "skipped": self.skipped, "failed": dict(self.failed),
            "not_attempted": self.not_attempted, "rows_in": self.rows_in, "rows_written": self.rows_written,
            "rows_rejected": self.rows_rejected, "reject_reasons": dict(self.reasons.most_common()),
            "totals": self.totals, "fitted_codebook": self.fitted_codebook, "seconds": round(self.seconds, 3),
            "encode_seconds": round(self.encode_seconds, 3), "grids": dirs.grids_dir, "rejects": dirs.rejects_dir,
            "manifest": dirs.manifest,
        }

    def metrics(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": self.rows_written, "rows_rejected": self.rows_rejected,
                "reject_reasons": dict(self.reasons.most_common()), "shards": self.shards, "shards_done": self.done,
                "shards_skipped": self.skipped, "shards_failed": len(self.failed),
                "shards_not_attempted": self.not_attempted, "quantizer": self.quantizer,
                "encode_seconds": round(self.encode_seconds, 3), "images_per_s": round(self.images_per_second, 2)}

    def lines(self) -> list[str]:
        dirs = OutputDirs(self.out)
        out = [f"quantizer: {self.quantizer}",
               *self.count_lines("shards", f" in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s incl. start-up)")]
        if self.reasons:
            out.append("rejects by reason: " + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()))
        t = self.totals
        if t:
            out.append(f"all runs, these inputs: rows in {t['rows_in']} = written {t['rows_written']} + rejected {t['rows_rejected']}")
        out.extend(self.failure_lines())
        out.append(f"grids: {dirs.grids_dir}  rejects: {dirs.rejects_dir}  manifest: {dirs.manifest}")
        return out
