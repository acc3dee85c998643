"""Builders shared by tests: tiny random-initialised models saved to disk, WebDataset shards (good and bad)."""
