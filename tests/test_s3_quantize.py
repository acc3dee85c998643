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
    entries = manifest["inputs"]
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


def test_tokenize_image_shards_from_s3_to_s3(ray_s3, tmp_path, capsys):
    """`vbpe tokenize` on s3:// shards: one Ray Data pass, corpus written to S3, keyed by shard URL, incremental."""
    import numpy as np

    from pipeline.ingest.reader import Decoded, iter_shard
    from pipeline.quantize.fit import ensure_codebook
    from pipeline.quantize.kmeans import KMeansEncoder, load_codebook
    from schemas.quantize import IngestOptions, KMeansQuantizerConfig
    from tests.helpers.corpus import learn_vocab

    opts = StorageOptions(endpoint_url=ray_s3)
    for i in range(2):
        write_shard(f"s3://{BUCKET}/tok/shards/s-{i:03d}.tar", good_samples(f"k{i}_", 4, seed=20 + i), opts)
    q = KMeansQuantizerConfig(codebook=f"s3://{BUCKET}/tok/cb.safetensors", image_size=32, patch_size=8, codebook_size=16,
                              fit_patches=2000)
    assert ensure_codebook(q, [f"s3://{BUCKET}/tok/shards/s-000.tar"], IngestOptions(), opts)
    cb = load_codebook(q.codebook, opts)
    images = [d.pixels for i in range(2) for d in iter_shard(f"s3://{BUCKET}/tok/shards/s-{i:03d}.tar", cb.spec().image,
                                                             IngestOptions(), opts) if isinstance(d, Decoded)]
    codes = KMeansEncoder(cb.spec(), {"centroids": cb.centroids}).encode(np.stack(images * 3))  # 24 grids of 4 x 4
    vocab = learn_vocab(codes, num_merges=3, codebook_size=16, quantizer_fingerprint=cb.fingerprint)
    storage.write_text(f"s3://{BUCKET}/tok/vocab.json", json.dumps(vocab.to_json()), opts)
    (tmp_path / "q.yaml").write_text(json.dumps(q.model_dump()))
    (tmp_path / "res.yaml").write_text(json.dumps({"quantize": {"cpus_per_actor": 0.5, "cpus_per_reader": 0.5},
                                                   "cpus_per_task": 0.5, "storage": {"endpoint_url": ray_s3}}))
    args = ["tokenize", f"s3://{BUCKET}/tok/shards/", "--vocab", f"s3://{BUCKET}/tok/vocab.json", "--out",
            f"s3://{BUCKET}/tok/out", "--quantizer", str(tmp_path / "q.yaml"), "--config", str(tmp_path / "res.yaml"),
            "--batch-size", "4", "--json"]
    assert vbpe(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["done"], report["rows_written"], report["rows_rejected"]) == (2, 8, 0)
    assert report["root"].startswith(f"s3://{BUCKET}/tok/out/")
    manifest = json.loads(storage.read_text(f"{report['root']}/manifest.json", opts))
    assert set(manifest["inputs"]) == {f"s3://{BUCKET}/tok/shards/s-{i:03d}.tar" for i in range(2)}
    fs, _ = storage.get_fs(report["root"], opts)
    table = pq.read_table(report["data"].split("://", 1)[1], filesystem=fs)
    assert table.num_rows == 8 and set(table.column("source").to_pylist()) == set(manifest["inputs"])

    write_shard(f"s3://{BUCKET}/tok/shards/s-002.tar", good_samples("k2_", 3, seed=22), opts)
    assert vbpe(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["done"], again["skipped"], again["rows_written"]) == (1, 2, 3)
