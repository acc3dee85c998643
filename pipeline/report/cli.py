"""`vbpe report --vocab VOCAB.json --grids GRIDS... [--shards SHARDS...] --out DIR` (or --config X.yaml)."""
from __future__ import annotations

import argparse

# flag -> config field, for flags that override a YAML config
_FLAGS = ("vocab", "grids", "shards", "out", "codebook_size", "holdout_fraction", "holdout_salt", "max_holdout_grids",
          "batch_grids", "atlas_tokens", "exemplars", "image_size", "resample", "dead_rate_points", "rare_below")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="atlas, plots and summary of what a vocabulary learned",
                              description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML ReportConfig; flags given here override it")
    p.add_argument("--vocab", help="vocabulary JSON")
    p.add_argument("--grids", nargs="+", help="code-grid Parquet files, directories or globs")
    p.add_argument("--shards", nargs="+", help="WebDataset tar shards with the source images (exemplar crops)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--codebook-size", type=int)
    p.add_argument("--holdout-fraction", type=float, help="share of grids (by key hash) in the held-out sample (default 0.1)")
    p.add_argument("--holdout-salt")
    p.add_argument("--max-holdout-grids", type=int)
    p.add_argument("--batch-grids", type=int)
    p.add_argument("--atlas-tokens", type=int, help="tokens in the atlas (default 48)")
    p.add_argument("--exemplars", type=int, help="crops per token (default 4)")
    p.add_argument("--image-size", type=int, help="quantizer input side R (default: quantize manifest, else 512)")
    p.add_argument("--resample")
    p.add_argument("--dead-rate-points", type=int)
    p.add_argument("--rare-below", type=int)
    p.set_defaults(handler=handle)


def config_from_args(args: argparse.Namespace):
    from schemas.report import ReportConfig

    data = ReportConfig.from_yaml(args.config).model_dump() if args.config else {}
    for name in _FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    return ReportConfig.from_dict(data, source=args.config or "command line")


def handle(args: argparse.Namespace) -> int:
    from pipeline.report.api import run

    summary = run(config_from_args(args))
    d = summary["dead"]
    c = summary["compression"]
    print(f"report: {summary['files']['report.html']}")
    print(f"atlas:  {summary['files']['atlas.png']}")
    print(f"  {summary['sample']['held_out_grids']} held-out grids; tokens per grid {c['cells_per_grid']:.1f} -> "
          f"{c['final_holdout']:.1f}; dead learned tokens {d['learned_unused']}/{d['learned_ids']}; "
          f"exemplars: {summary['atlas']['exemplars'].get('status')}")
    return 0
