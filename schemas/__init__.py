"""Contracts between stages: pydantic configs (YAML) and Arrow schemas of every Parquet file."""
