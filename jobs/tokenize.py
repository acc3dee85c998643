"""`python -m jobs.tokenize --config tokenize.yaml` (e.g. under `ray job submit --working-dir . -- ...`)."""
import sys

from jobs.preflight import check_environment


def main(argv: list[str] | None = None) -> int:
    check_environment("jobs.tokenize")
    from pipeline.runner import job_main

    return job_main("tokenize", argv)


if __name__ == "__main__":
    sys.exit(main())
