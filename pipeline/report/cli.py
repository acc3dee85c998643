"""`vbpe report --vocab VOCAB.json --grids GRIDS... [--shards SHARDS...] --out DIR` (or --config X.yaml)."""
from __future__ import annotations

import argparse

from pipeline.configargs import add_config_flag, build_config

# argparse dest -> ReportConfig field: a flag given on the command line overrides the YAML config
FLAGS = {name: name for name in (
    "vocab", "grids", "shards", "tokenizer", "out", "codebook_size", "holdout_fraction", "holdout_salt",
    "max_holdout_grids", "batch_grids", "atlas_tokens", "exemplars", "image_size", "resample", "dead_rate_points",
    "rare_below", "evaluation")}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="atlas, plots and summary of what a vocabulary learned",
                              description=__doc__.splitlines()[0])
    p.add_argument("--vocab", help="vocabulary JSON")
    p.add_argument("--grids", nargs="+", help="code-grid Parquet files, directories, globs or s3:// URLs")
    p.add_argument("--shards", nargs="+", help="WebDataset tar shards with the source images (exemplar crops)")
    p.add_argument("--tokenizer", help="tokenizer directory (vbpe export): draw tokens with their codes' decoded "
                   "appearance (default: one colour per code)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--codebook-size", dest="codebook_size", type=int, help="only for grids without vbpe.codebook_size")
    p.add_argument("--holdout-fraction", dest="holdout_fraction", type=float,
                   help="share of grids (by key hash) in the held-out sample (default 0.1)")
    p.add_argument("--holdout-salt", dest="holdout_salt")
    p.add_argument("--max-holdout-grids", dest="max_holdout_grids", type=int, help="default 10000")
    p.add_argument("--batch-grids", dest="batch_grids", type=int, help="grids encoded per batch (default 2000)")
    p.add_argument("--atlas-tokens", dest="atlas_tokens", type=int, help="tokens in the atlas (default 48)")
    p.add_argument("--exemplars", type=int, help="crops per token (default 4)")
    p.add_argument("--image-size", dest="image_size", type=int,
                   help="quantizer input side R (default: the quantize manifest, else 512)")
    p.add_argument("--resample", help="resampling of the quantizer's preprocessing (default bicubic)")
    p.add_argument("--dead-rate-points", dest="dead_rate_points", type=int,
                   help="vocabulary sizes M, M/2, ... for the dead-token curve (default 12)")
    p.add_argument("--rare-below", dest="rare_below", type=int, help="'rare' = used fewer times than this (default 5)")
    p.add_argument("--evaluation", nargs="+", help="held-out results to add: heldout.json (vbpe train eval), ablation.json")
    add_config_flag(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipeline.report.api import run
    from schemas.report import ReportConfig

    summary = run(build_config(ReportConfig, args, FLAGS))
    d = summary["dead"]
    c = summary["compression"]
    print(f"report: {summary['files']['report.html']}")
    print(f"atlas:  {summary['files']['atlas.png']}")
    dead = f"{d['learned_unused']}/{d['learned_ids']}" if d["learned_ids"] else "n/a (no merges)"
    print(f"  {summary['sample']['held_out_grids']} held-out grids; tokens per grid {c['cells_per_grid']:.1f} -> "
          f"{c['final_holdout']:.1f}; learned tokens never used {dead}; "
          f"exemplars: {summary['atlas']['exemplars'].get('status')}")
    return 0
