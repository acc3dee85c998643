"""The storage layer: whole files or nothing (local and S3), names, per-call S3 options, bounded retries."""
from __future__ import annotations

import logging
import os
import time

import pytest

from pipeline import storage
from schemas.base import StorageOptions
from tests.helpers.ports import free_port
from tests.helpers.s3 import moto_s3

BUCKET = "vbpe-storage"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


def test_a_failed_local_write_leaves_nothing(tmp_path):
    target = tmp_path / "d" / "x.parquet"
    with pytest.raises(RuntimeError):
        with storage.atomic_write(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("writer died")
    assert not target.exists() and os.listdir(tmp_path / "d") == []
    with storage.open_file(str(target), "wb") as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path / "d") == ["x.parquet"]
    with pytest.raises(ValueError, match="read, or write whole files"):
        storage.open_file(str(target), "ab")


def test_a_failed_upload_is_discarded(s3):
    opts = StorageOptions(endpoint_url=s3)
    url = f"s3://{BUCKET}/out/x.bin"
    with pytest.raises(RuntimeError):
        with storage.atomic_write(url, opts) as f:
            f.write(b"x" * (6 << 20))  # more than one multipart part has gone up already
            raise RuntimeError("writer died")
    assert not storage.exists(url, opts)
    storage.write_bytes(url, b"whole", opts)
    assert storage.read_bytes(url, opts) == b"whole"


def test_names_and_keys():
    a, b = storage.output_name("s3://b/x/part-1.tar"), storage.output_name("s3://b/y/part-1.tar")
    assert a.startswith("part-1-") and a.endswith(".parquet") and a != b
    assert storage.output_name("/d/.hidden.parquet", ".json").startswith("hidden-")
    assert storage.canonical_url("rel/x.tar") == os.path.abspath("rel/x.tar")
    assert storage.canonical_url("s3://b/x.tar") == "s3://b/x.tar"


def test_s3_options_reach_every_call_without_the_environment(s3, tmp_path, monkeypatch):
    """The endpoint only in the config (no AWS_ENDPOINT_URL): learn and tokenize must pass it on every call."""
    from pipeline.runner import execute
    from pipeline.stage import get_stage
    from schemas.learn import LearnConfig
    from schemas.tokenize import TokenizeConfig
    from tests.helpers.corpus import grids, write_grid_file

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    opts = StorageOptions(endpoint_url=s3)
    write_grid_file(str(tmp_path / "g" / "a.parquet"), grids(40, seed=3), "a")
    learned = execute(get_stage("learn"), LearnConfig(inputs=[str(tmp_path / "g")], out=f"s3://{BUCKET}/v/vocab.json",
                                                      merges=6, progress=False, storage=opts))
    assert len(learned.vocab.merges) == 6
    assert storage.exists(f"s3://{BUCKET}/v/vocab.metrics.json", opts)
    s = execute(get_stage("tokenize"), TokenizeConfig(inputs=[str(tmp_path / "g")], vocab=f"s3://{BUCKET}/v/vocab.json",
                                                      out=f"s3://{BUCKET}/tokens", executor="local", storage=opts))
    assert s.ok and s.rows_written == 40
    assert storage.exists(f"s3://{BUCKET}/tokens/metrics.json", opts)


def test_an_unreachable_store_is_retried_a_bounded_number_of_times_with_a_log_line(caplog):
    caplog.set_level(logging.WARNING, logger="vbpe.storage")
    opts = StorageOptions(endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout=1, read_timeout=1,
                          max_attempts=3)
    t0 = time.monotonic()
    with pytest.raises(Exception) as err:
        storage.exists("s3://nowhere/x", opts)
    assert storage.unavailable_cause(err.value) is not None
    assert time.monotonic() - t0 < 30
    lines = [r.getMessage() for r in caplog.records]
    assert any("attempt 1 of 3, retrying" in line for line in lines)
    assert any("attempt 3 of 3, no retries left" in line for line in lines)
