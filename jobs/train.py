"""`python -m jobs.train --config X.yaml [--stage all|init|prepare|stage1|stage2|stage3]`, e.g. under
`ray job submit --working-dir . -- python -m jobs.train --config train.yaml`."""
from __future__ import annotations

import argparse
import sys

from pipeline.cli import main as vbpe_main
from pipeline.train.cli import STEPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--stage", choices=list(STEPS), default="all")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    return vbpe_main([*(["-v"] if args.verbose else []), "train", args.stage, "--config", args.config])


if __name__ == "__main__":
    sys.exit(main())
