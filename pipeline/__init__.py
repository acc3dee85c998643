"""Visual BPE pipeline: ingest -> quantize -> learn -> tokenize -> train, plus report."""
