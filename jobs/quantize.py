"""`ray job submit --working-dir . -- python -m jobs.quantize --config quantize.yaml`"""
from __future__ import annotations

import argparse
import logging
import sys

from schemas.base import ConfigError, InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs.quantize", description=__doc__)
    parser.add_argument("--config", required=True, help="QuantizeConfig YAML (local or s3://)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.quantize.run import run_quantize
    from schemas.quantize import QuantizeConfig

    try:
        summary = run_quantize(QuantizeConfig.from_yaml(args.config))
    except (ConfigError, InputError, FileNotFoundError) as err:
        print(f"jobs.quantize: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0 if summary.ok else 3  # some shards failed; a re-run retries them


if __name__ == "__main__":
    sys.exit(main())
