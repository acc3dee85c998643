"""`python -m jobs.train --config X.yaml [--stage all|init|prepare|stage1|stage2|stage3]`, e.g. under
`ray job submit --working-dir . -- python -m jobs.train --config train.yaml`."""
import sys

from jobs.preflight import check_environment


def main(argv: list[str] | None = None) -> int:
    check_environment("jobs.train")
    from pipeline.runner import job_main

    return job_main("train", argv)


if __name__ == "__main__":
    sys.exit(main())
