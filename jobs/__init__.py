"""Thin Ray job entrypoints: `python -m jobs.<stage> --config FILE.yaml`. All logic lives in `pipeline/`."""
