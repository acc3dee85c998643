"""`python -m jobs.train --config train.yaml [--stage all|init|prepare|stage1|stage2|stage3]` (e.g. under `ray job submit --working-dir . -- ...`)."""
import sys

from jobs._entry import main

if __name__ == "__main__":
    sys.exit(main("train"))
