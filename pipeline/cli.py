"""`vbpe`: one command, a sub-command per stage.

Each stage module exposes `register(subparsers)`; it must import only light modules at import
time (heavy ones inside its handler) so `vbpe learn` does not pay for torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from schemas.base import ConfigError, InputError

# In data-flow order. A stage that is missing (not yet built) is simply not offered.
STAGE_MODULES = [
    "pipeline.quantize.cli",
    "pipeline.learn.cli",
    "pipeline.tokenize.cli",
    "pipeline.train.cli",
    "pipeline.report.cli",
    "vbpe.export",
    "pipeline.scenes.cli",
    "pipeline.evaluate.cli",
    "pipeline.submit.cli",
    "pipeline.demo.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vbpe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, InputError, FileNotFoundError) as err:
        # Expected user errors: one clear line, no traceback.
        if args.verbose:
            raise
        print(f"vbpe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
