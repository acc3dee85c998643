"""`python -m jobs.ablation --config A.yaml`, e.g. under
`ray job submit --working-dir . -- python -m jobs.ablation --config ablation.yaml` (the VQ-only vs visual-BPE ablation)."""
import sys

from jobs.preflight import check_environment


def main(argv: list[str] | None = None) -> int:
    check_environment("jobs.ablation")
    from pipeline.runner import job_main

    return job_main("ablation", argv)


if __name__ == "__main__":
    sys.exit(main())
