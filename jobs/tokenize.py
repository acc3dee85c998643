"""`python -m jobs.tokenize --config tokenize.yaml` (e.g. under `ray job submit --working-dir . -- ...`)."""
import sys

from jobs._entry import main

if __name__ == "__main__":
    sys.exit(main("tokenize"))
