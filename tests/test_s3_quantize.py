"""Shards read from S3 and grids written back to S3, through a real S3 API server on loopback."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.cli import main as vbpe
from pipeline.ingest.writer import tar_bytes, write_shard
from schemas.base import StorageOptions
from tests.helpers.s3 import moto_s3
from tests.helpers.shards import good_samples

pytestmark = pytest.mark.ray
BUCKET = "vbpe-test"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def ray_s3(s3, ray_local):
    """The S3 server first, so the Ray workers start with its AWS_* variables."""
    return s3


def test_quantize_from_s3_to_s3(ray_s3, tmp_path, capsys):
    opts = StorageOptions(endpoint_url=ray_s3)
    for i in range(2):
        write_shard(f"s3://{BUCKET}/shards/s-{i:03d}.tar", good_samples(f"s{i}_", 5, seed=i), opts)
    full = tar_bytes(good_samples("t_", 6, seed=9))
    with storage.open_file(f"s3://{BUCKET}/shards/t-000.tar", "wb", opts) as f:
        f.write(full[: len(full) // 2])
    q = {"kind": "kmeans", "codebook": f"s3://{BUCKET}/models/cb.safetensors", "image_size": 32, "patch_size": 8,
         "codebook_size": 16, "fit_patches": 2000}
    (tmp_path / "q.yaml").write_text(json.dumps(q))
    args = ["quantize", f"s3://{BUCKET}/shards/s-{{000..001}}.tar", f"s3://{BUCKET}/shards/t-*.tar",
            "--quantizer", str(tmp_path / "q.yaml"), "--out", f"s3://{BUCKET}/out", "--endpoint-url", ray_s3,
            "--fit-kmeans", "--cpus-per-actor", "0.5", "--cpus-per-reader", "0.5", "--batch-size", "4"]
    assert vbpe(args) == 0
    text = capsys.readouterr().out
    assert "3 done now" in text
    assert storage.exists(f"s3://{BUCKET}/models/cb.safetensors", opts)
    manifest = json.loads(storage.read_text(f"s3://{BUCKET}/out/manifest.json", opts))
    entries = manifest["shards"]
    assert set(entries) == {f"s3://{BUCKET}/shards/s-000.tar", f"s3://{BUCKET}/shards/s-001.tar", f"s3://{BUCKET}/shards/t-000.tar"}
    fs, _ = storage.get_fs(f"s3://{BUCKET}/out", opts)
    total = 0
    for url, e in entries.items():
        assert e["status"] == "done" and e["rows_in"] == e["rows_written"] + e["rows_rejected"]
        t = pq.read_table(f"{BUCKET}/out/{e['output']}", filesystem=fs)
        assert t.num_rows == e["rows_written"] and set(t.column("source").to_pylist()) <= {url}
        total += t.num_rows
    assert entries[f"s3://{BUCKET}/shards/t-000.tar"]["rows_rejected"] == 1
    rej = pq.read_table(f"{BUCKET}/out/{entries[f's3://{BUCKET}/shards/t-000.tar']['rejects']}", filesystem=fs)
    assert rej.column("reason")[0].as_py().startswith("truncated or corrupt tar")
    assert total == 10 + entries[f"s3://{BUCKET}/shards/t-000.tar"]["rows_written"]

    assert vbpe(args) == 0
    assert "0 done now, 3 already done" in capsys.readouterr().out
