"""`python -m jobs.learn --config learn.yaml` (e.g. under `ray job submit --working-dir . -- ...`)."""
import sys

from jobs.preflight import check_environment


def main(argv: list[str] | None = None) -> int:
    check_environment("jobs.learn")
    from pipeline.runner import job_main

    return job_main("learn", argv)


if __name__ == "__main__":
    sys.exit(main())
