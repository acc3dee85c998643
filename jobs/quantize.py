"""`python -m jobs.quantize --config quantize.yaml` (e.g. under `ray job submit --working-dir . -- ...`)."""
import sys

from jobs._entry import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("quantize", argv)


if __name__ == "__main__":
    sys.exit(main())
