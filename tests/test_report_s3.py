"""The report with everything on S3 (vocabulary, grids, shards, output), through a real S3 API on loopback."""
from __future__ import annotations

import json
import os

import pytest

from pipeline import storage
from pipeline.codegrids import write_grids
from pipeline.report.api import run
from tests.helpers.report import learn_vocab, photo_corpus
from schemas.base import StorageOptions
from tests.helpers.s3 import moto_s3
from schemas.report import ReportConfig

BUCKET = "vbpe-report"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint

def test_report_on_s3(s3, tmp_path):
    opts = StorageOptions(endpoint_url=s3)
    local_shards, grids, V = photo_corpus(str(tmp_path), n_samples=40, n_shards=2)
    shards = []
    for path in local_shards:
        url = f"s3://{BUCKET}/shards/{os.path.basename(path)}"
        with open(path, "rb") as src, storage.open_file(url, "wb", opts) as dst:
            dst.write(src.read())
        shards.append(url)
    grids.sources = [shards[int(src.endswith("shard-001.tar"))] for src in grids.sources]  # as quantize records them
    write_grids(f"s3://{BUCKET}/codes/grids/part-0.parquet", grids, V, options=opts)
    vocab = learn_vocab(grids.codes, grids.heights, grids.widths, V, 30)
    storage.write_text(f"s3://{BUCKET}/vocab.json", json.dumps(vocab.to_json()), opts)
    storage.write_text(f"s3://{BUCKET}/codes/manifest.json",
                       json.dumps({"format": "vbpe.quantize.manifest.v1", "quantizer": {"image_size": 128}}), opts)
    out = f"s3://{BUCKET}/report"
    summary = run(ReportConfig(vocab=f"s3://{BUCKET}/vocab.json", grids=[f"s3://{BUCKET}/codes/grids"], shards=shards,
                               out=out, holdout_fraction=0.5, atlas_tokens=6, exemplars=2, storage=opts))
    for name in ("atlas.png", "compression.png", "merge_scores.png", "token_sizes.png", "dead_tokens.png",
                 "report.html", "summary.json", "metrics.json"):
        assert storage.exists(f"{out}/{name}", opts), name
    assert summary["atlas"]["image_size_source"] == "quantize manifest"
    ex = [e for t in summary["atlas"]["tokens"] for e in t["exemplars"]]
    assert ex and all(e["status"] == "ok" for e in ex)
    assert all(e["source"] in shards for e in ex)
    assert json.loads(storage.read_text(f"{out}/metrics.json", opts))["status"] == "ok"
