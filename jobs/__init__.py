"""`python -m jobs.<stage> --config X.yaml`: thin Ray job entrypoints (load config, call pipeline)."""
