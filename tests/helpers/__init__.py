"""Builders shared by tests, one module per kind of input (tests import them as `tests.helpers.X`).

corpus.py      small code-grid files and a vocabulary learned on them by the reference learner
grids.py       synthetic code-grid Parquet files (and raw tables with bad rows)
shards.py      WebDataset shards of real photos, good and deliberately broken
models.py      tiny random-initialised quantizer models saved to disk
report.py      photo corpora and vocabularies for the report tests
s3.py          a real S3 API on loopback (moto's server)
ray_cluster.py a `ray start --head` cluster in a subprocess, stopped by its process group
ports.py       free ports on loopback
"""
