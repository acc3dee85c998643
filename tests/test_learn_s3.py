"""`vbpe learn` with everything on S3 (grids in; vocabulary, rejects, checkpoint out) via a real S3 API on loopback."""
from __future__ import annotations

import json

import pytest

from pipeline import storage
from pipeline.codegrids import open_corpus, read_rows, write_grids
from pipeline.learn.api import learn_vocabulary as run
from schemas.base import StorageOptions
from schemas.learn import LearnConfig
from tests.helpers.s3 import moto_s3
from tests.helpers.grids import write_synthetic

BUCKET = "vbpe-learn"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        yield StorageOptions(endpoint_url=endpoint)


def test_learn_from_and_to_s3_with_resume(s3, tmp_path):
    local = write_synthetic(tmp_path, 60, parts=2, side=12, codebook_size=100)
    for i, path in enumerate(local):
        corpus = open_corpus([path])
        write_grids(f"s3://{BUCKET}/grids/part-{i}.parquet", read_rows(corpus, 0, corpus.rows), 100, "q", s3)
    base = dict(inputs=[f"s3://{BUCKET}/grids/"], out=f"s3://{BUCKET}/vocab/v.json", progress=False,
                checkpoint_every=10, storage=s3)
    first = run(LearnConfig(merges=20, **base))
    resumed = run(LearnConfig(merges=40, resume=True, **base))
    straight = run(LearnConfig(inputs=local, out=str(tmp_path / "local.json"), merges=40, progress=False,
                               checkpoint_every=0))
    assert first.merges == straight.merges[:20] and resumed.merges == straight.merges
    saved = json.loads(storage.read_text(f"s3://{BUCKET}/vocab/v.json", s3))
    # the same merges as a local run; the fingerprint also covers the quantizer ("q" here)
    assert saved["fingerprint"] == resumed.fingerprint() and saved["quantizer_fingerprint"] == "q"
    assert storage.exists(f"s3://{BUCKET}/vocab/v.rejects.parquet", s3)
    assert storage.exists(f"s3://{BUCKET}/vocab/v.checkpoint/checkpoint.json", s3)
