"""Benchmarks (`make bench`): speed and memory targets, as ratios measured in the same run."""
