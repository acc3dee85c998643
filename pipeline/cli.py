"""`vbpe`: one command, a sub-command per stage.

The stages of the shared contract (pipeline/stage.py) get their sub-command from their config
class (flags derived from its fields, run by pipeline/runner.py). Other commands come from a
`register(subparsers)` in their module, which imports only light modules at import time (heavy
ones inside its handler) so `vbpe learn` does not pay for torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# In data-flow order, after the shared stages (quantize, learn, tokenize).
COMMAND_MODULES = [
    "pipeline.quantize.cli",
    "pipeline.train.cli",
    "pipeline.report.cli",
    "vbpe.export",
    "pipeline.scenes.cli",
    "pipeline.evaluate.cli",
    "pipeline.submit.cli",
    "pipeline.demo.cli",
]


def build_parser() -> argparse.ArgumentParser:
    from pipeline.runner import register_stage_command
    from pipeline.stage import STAGES

    parser = argparse.ArgumentParser(prog="vbpe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES.values():
        if not stage.own_command:
            register_stage_command(sub, stage)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.runner import report_error

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except Exception as err:
        return report_error(err, f"vbpe {args.command}", args.verbose)


if __name__ == "__main__":
    sys.exit(main())
