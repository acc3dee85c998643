"""`vbpe report --vocab VOCAB.json --grids GRIDS... [--shards SHARDS...] --out DIR` (or --config X.yaml)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.configargs import add_config_arguments
    from schemas.report import ReportConfig

    p = subparsers.add_parser("report", help="atlas, plots and summary of what a vocabulary learned",
                              description=__doc__.splitlines()[0])
    add_config_arguments(p, ReportConfig)  # one flag per config field; flags override --config
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pipeline.configargs import config_from_args
    from pipeline.report.api import run

    summary = run(config_from_args(args))
    d = summary["dead"]
    c = summary["compression"]
    print(f"report: {summary['files']['report.html']}")
    print(f"atlas:  {summary['files']['atlas.png']}")
    dead = f"{d['learned_unused']}/{d['learned_ids']}" if d["learned_ids"] else "n/a (no merges)"
    print(f"  {summary['sample']['held_out_grids']} held-out grids; tokens per grid {c['cells_per_grid']:.1f} -> "
          f"{c['final_holdout']:.1f}; learned tokens never used {dead}; "
          f"exemplars: {summary['atlas']['exemplars'].get('status')}")
    return 0
