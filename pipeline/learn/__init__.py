"""The learn stage: code-grid files -> vocabulary file (config, CLI, checkpoints, Ray actors).

The algorithm itself lives in pipeline.bpe.
"""
