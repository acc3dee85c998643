"""What a quantize run did, for the console and for callers (demo, bench)."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from pipeline.quantize.outputs import Layout


@dataclass
class RunTrace:
    """Timing of the Ray part: when encoded blocks reached the driver, and Ray Data's own stats."""

    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, images in block)
    dataset_stats: str = ""

    def steady_images_per_second(self) -> float:
        """Images after the first block / time from the first to the last block: start-up excluded."""
        if len(self.arrivals) < 2 or self.arrivals[-1][0] <= self.arrivals[0][0]:
            return float("nan")
        return sum(n for _, n in self.arrivals[1:]) / (self.arrivals[-1][0] - self.arrivals[0][0])


@dataclass
class RunSummary:
    out: str
    quantizer: str
    fingerprint: str
    shards: int = 0
    skipped: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    rows_in: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    totals: dict[str, int] = field(default_factory=dict)
    fitted_codebook: bool = False
    seconds: float = 0.0
    encode_seconds: float = 0.0
    trace: RunTrace = field(default_factory=RunTrace)

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        layout = Layout(self.out)
        out = [
            f"quantizer: {self.quantizer}",
            f"shards: {self.shards} ({self.done} done now, {self.skipped} already done, {len(self.failed)} failed)",
            f"this run: rows in {self.rows_in} = written {self.rows_written} + rejected {self.rows_rejected}"
            f" in {self.seconds:.1f} s ({self.rows_written / max(self.encode_seconds, 1e-9):.1f} images/s incl. start-up)",
        ]
        if self.reasons:
            out.append("rejects by reason: " + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()))
        t = self.totals
        if t:
            out.append(f"all runs, these inputs: rows in {t['rows_in']} = written {t['rows_written']} + rejected {t['rows_rejected']}")
        for url, err in self.failed.items():
            out.append(f"FAILED {url}: {err}")
        out.append(f"grids: {layout.grids_dir}  rejects: {layout.rejects_dir}  manifest: {layout.manifest}")
        return out
