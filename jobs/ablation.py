"""`python -m jobs.ablation --config A.yaml`, e.g. under
`ray job submit --working-dir . -- python -m jobs.ablation --config ablation.yaml` (the VQ-only vs visual-BPE ablation)."""
from __future__ import annotations

import argparse
import sys

from jobs.preflight import check_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="ablation config YAML: a path, s3:// URL or env:VARIABLE")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    check_environment("jobs.ablation")
    from pipeline.cli import main as vbpe_main

    return vbpe_main([*(["-v"] if args.verbose else []), "eval", "ablation", "--config", args.config])


if __name__ == "__main__":
    sys.exit(main())
