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

HELDOUT = {"format": "vbpe.heldout.v1", "heldout_sequences": 6, "heldout_images": 3,
           "models": {"base": {"answers": 6, "answer_accuracy": 0.5, "answer_loss": 2.5, "by_type": {}},
                      "stage3": {"answers": 6, "answer_accuracy": 2 / 3, "answer_loss": 1.25, "by_type": {}}}}


def test_report_on_s3(s3, tmp_path, monkeypatch):
    """The S3 endpoint is known only to the config's storage options (not the environment): every read and
    write of the report, the evaluation file included, goes through them."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
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
    storage.write_text(f"s3://{BUCKET}/eval/heldout.json", json.dumps(HELDOUT), opts)
    out = f"s3://{BUCKET}/report"
    summary = run(ReportConfig(vocab=f"s3://{BUCKET}/vocab.json", grids=[f"s3://{BUCKET}/codes/grids"], shards=shards,
                               out=out, holdout_fraction=0.5, atlas_tokens=6, exemplars=2, storage=opts,
                               evaluation=[f"s3://{BUCKET}/eval"]))
    for name in ("atlas.png", "compression.png", "merge_scores.png", "token_sizes.png", "dead_tokens.png",
                 "report.html", "summary.json", "metrics.json", "evaluation_0_heldout.png"):
        assert storage.exists(f"{out}/{name}", opts), name
    assert summary["atlas"]["image_size_source"] == "quantize manifest"
    ex = [e for t in summary["atlas"]["tokens"] for e in t["exemplars"]]
    assert ex and all(e["status"] == "ok" for e in ex)
    assert all(e["source"] in shards for e in ex)
    assert json.loads(storage.read_text(f"{out}/metrics.json", opts))["status"] == "ok"
    page = storage.read_text(f"{out}/report.html", opts)
    assert "Held-out evaluation" in page and "6 held-out sequences of 3 images" in page and "<td>stage3</td>" in page
