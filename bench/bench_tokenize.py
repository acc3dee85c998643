"""Tokenize throughput on synthetic 32 x 32 grids: `python -m bench.bench_tokenize --dir /tmp/tkb`.

Learns a vocabulary with the real learner on `--train` grids (cached in --dir), writes `--grids`
grids in 4 files, then times one tokenize run (a fresh version each time) and prints the figures.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--merges", type=int, default=1024)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--grids", type=int, default=20000)
    p.add_argument("--codebook", type=int, default=8192)
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    from pipeline import codegrids
    from pipeline.learn.api import learn_vocabulary as learn
    from bench.synthetic import synthetic_grids
    from pipeline.tokenize.api import run
    from schemas.layout import IdLayout
    from schemas.learn import LearnConfig
    from schemas.tokenize import TokenizeConfig

    tag = f"V{args.codebook}-t{args.train}-g{args.grids}"
    grids_dir, vocab = os.path.join(args.dir, f"grids-{tag}"), os.path.join(args.dir, f"vocab-{tag}-m{args.merges}.json")
    if not os.path.exists(grids_dir):
        codes = synthetic_grids(args.train + args.grids, 32, 32, args.codebook, seed=0).codes
        bounds = [0, args.train] + [args.train + args.grids * (i + 1) // 4 for i in range(4)]
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            n = hi - lo
            g = codegrids.Grids([f"g{j}" for j in range(lo, hi)], np.full(n, 32, np.int32), np.full(n, 32, np.int32),
                                codes[lo:hi].reshape(-1))
            name = "train/t.parquet" if i == 0 else f"data/part-{i - 1}.parquet"
            codegrids.write_grids(os.path.join(grids_dir, name), g, args.codebook)
    if not os.path.exists(vocab):
        t = time.perf_counter()
        learn(LearnConfig(inputs=[os.path.join(grids_dir, "train")], out=vocab, merges=args.merges, progress=False))
        print(f"learned {args.merges} merges on {args.train} grids in {time.perf_counter() - t:.1f} s")
    layout = IdLayout(codebook_size=args.codebook, num_merges=max(args.merges, 8192))
    t = time.perf_counter()
    s = run(TokenizeConfig(inputs=[os.path.join(grids_dir, "data")], vocab=vocab, layout=layout,
                           out=os.path.join(args.dir, f"out-{time.time_ns()}"), executor=args.executor,
                           workers=args.workers if args.executor == "ray" else 0))
    wall = time.perf_counter() - t
    print(f"{args.executor}: {s.rows_in} grids in {wall:.1f} s = {s.rows_in / wall:.0f} grids/s (wall, incl. setup); "
          f"{s.cells / s.tokens:.2f} cells per token ({s.cells / s.rows_in:.0f} -> {s.tokens / s.rows_in:.1f} tokens per grid)")


if __name__ == "__main__":
    main()
