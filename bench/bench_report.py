"""Report render time: synthetic 32 x 32 grids -> `vbpe learn` -> `vbpe report` (each a fresh process).

    python -m bench.bench_report --grids 2000 --merges 1000 --out /tmp/bench-report

Prints one JSON line: learn seconds, report seconds (wall of the whole `vbpe report` process, and
the stage's own metrics), sample size, peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _vbpe(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-out/report")
    p.add_argument("--grids", type=int, default=2000)
    p.add_argument("--merges", type=int, default=1000)
    p.add_argument("--codebook-size", type=int, default=8192)
    p.add_argument("--holdout-fraction", type=float, nargs="+", default=[0.1, 1.0])
    args = p.parse_args()

    import numpy as np

    from pipeline.codegrids import Grids, write_grids
    from bench.synthetic import synthetic_grids

    os.makedirs(args.out, exist_ok=True)
    grids_path = os.path.join(args.out, "grids.parquet")
    vocab_path = os.path.join(args.out, f"vocab-{args.merges}.json")
    if not os.path.exists(grids_path):
        codes = synthetic_grids(args.grids, 32, 32, codebook_size=args.codebook_size, seed=0).codes
        n = codes.shape[0]
        side = np.full(n, 32, np.int32)
        write_grids(grids_path, Grids([f"g{i:07d}" for i in range(n)], side, side, codes.reshape(-1)), args.codebook_size)
    learn_s = None
    if not os.path.exists(vocab_path):
        learn_s = _vbpe("learn", grids_path, "--out", vocab_path, "--merges", str(args.merges), "--no-progress",
                        "--checkpoint-every", "0")
    for fraction in args.holdout_fraction:
        out = os.path.join(args.out, f"report-{fraction}")
        wall = _vbpe("report", "--vocab", vocab_path, "--grids", grids_path, "--out", out,
                     "--holdout-fraction", str(fraction))
        m = json.load(open(os.path.join(out, "metrics.json")))
        print(json.dumps({"grids": args.grids, "merges": args.merges, "learn_s": None if learn_s is None else round(learn_s, 2),
                          "holdout_fraction": fraction, "held_out_grids": m["held_out_grids"],
                          "report_process_s": round(wall, 2), "report_stage_s": round(m["wall_s"], 2),
                          "stage_seconds": m["seconds"], "peak_rss_mb": m["peak_rss_bytes"] >> 20,
                          "atlas": os.path.join(out, "atlas.png")}))


if __name__ == "__main__":
    main()
