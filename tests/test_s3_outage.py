"""The object store goes away: unreachable from the start, or hung (SIGSTOPped) in the middle of a run.

Every stage must end in bounded time with one line and exit 3 (a log line for every retry), keep
what it committed before the outage, and finish the rest when re-run after it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers.corpus import V, grids, learn_vocab, write_grid_file
from tests.helpers.ports import free_port
from tests.helpers.s3 import MotoProcess
from tests.helpers.shards import good_samples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_FAIL = {"connect_timeout": 1.0, "read_timeout": 1.0, "max_attempts": 2}
N_FILES = 12
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_AUTH_MODE": "disabled", **CREDS, **extra}
    env.pop("RAY_ADDRESS", None)
    env.pop("AWS_ENDPOINT_URL", None)
    return env


def _vbpe(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outage")
    codes = grids(40 + N_FILES * 20, seed=11)
    learn_vocab(codes[:40]).save(str(root / "vocab.json"))
    for i in range(N_FILES):
        write_grid_file(str(root / "g" / f"p-{i:03d}.parquet"), codes[40 + 20 * i: 60 + 20 * i], f"p{i}")
    from pipeline.ingest.writer import write_shard

    for i in range(2):
        write_shard(str(root / "shards" / f"s-{i}.tar"), good_samples(f"s{i}_", 3, seed=i))
    return root


def _assert_one_line_exit_3(p: subprocess.CompletedProcess, prog: str) -> None:
    assert p.returncode == 3, p.stderr[-3000:]
    err = p.stderr.strip().splitlines()
    assert err[-1].startswith(f"{prog}: error: storage unreachable:"), err[-1]
    assert "a re-run resumes" in err[-1] and "Traceback" not in p.stderr
    assert any("attempt 1 of 2, retrying" in line for line in err), "no log line while retrying"


def test_an_unreachable_store_ends_every_stage_with_one_line(local_inputs, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    storage = {"endpoint_url": dead, **FAST_FAIL}
    learn = tmp_path / "learn.yaml"
    learn.write_text(yaml.safe_dump({"inputs": [str(local_inputs / "g")], "out": "s3://b/vocab.json", "merges": 4,
                                     "progress": False, "storage": storage}))
    t0 = time.monotonic()
    _assert_one_line_exit_3(_vbpe(["learn", "--config", str(learn)], _env()), "vbpe learn")
    tok = tmp_path / "tok.yaml"
    tok.write_text(yaml.safe_dump({"inputs": [str(local_inputs / "g")], "vocab": str(local_inputs / "vocab.json"),
                                   "out": "s3://b/tokens", "executor": "local", "storage": storage}))
    _assert_one_line_exit_3(_vbpe(["tokenize", "--config", str(tok)], _env()), "vbpe tokenize")
    q = tmp_path / "q.yaml"
    q.write_text(yaml.safe_dump({"inputs": [str(local_inputs / "shards")], "out": "s3://b/codes", "fit_kmeans": True,
                                 "quantizer": {"kind": "kmeans", "codebook": str(tmp_path / "cb.safetensors"),
                                               "image_size": 32, "patch_size": 8, "codebook_size": 8,
                                               "fit_patches": 200},
                                 "storage": storage}))
    p = subprocess.run([sys.executable, "-m", "jobs.quantize", "--config", str(q)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=240)
    _assert_one_line_exit_3(p, "jobs.quantize")
    assert time.monotonic() - t0 < 180


def _committed(server: MotoProcess, prefix: str) -> list[str]:
    return [k for k in server.keys(prefix) if "/manifest.d/" in k]


def test_tokenize_through_a_hung_store_exits_3_and_resumes(local_inputs, tmp_path):
    server = MotoProcess("vbpe-outage")
    try:
        cfg = tmp_path / "tok.yaml"
        cfg.write_text(yaml.safe_dump({"inputs": [str(local_inputs / "g")], "vocab": str(local_inputs / "vocab.json"),
                                       "out": "s3://vbpe-outage/tokens", "executor": "local",
                                       "layout": {"text_vocab_size": 8, "codebook_size": V, "num_merges": 12},
                                       "storage": {"endpoint_url": server.endpoint, **FAST_FAIL}}))
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "tokenize", "--config", str(cfg)], cwd=REPO,
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        before: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and len(before) < 2:
            before = _committed(server, "tokens/")
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the store could be hung"
        server.pause()
        hung_at = time.monotonic()
        out, err = proc.communicate(timeout=300)
        waited = time.monotonic() - hung_at
        assert proc.returncode == 3, err[-3000:]
        assert waited < 120, f"a hung store held the run for {waited:.0f} s"
        assert "retrying" in err and "left for the next run" in err and "Traceback" not in err
        server.resume()
        committed = _committed(server, "tokens/")
        assert len(committed) >= len(before) >= 2 and len(committed) < N_FILES
        again = _vbpe(["tokenize", "--config", str(cfg), "--json"], _env())
        assert again.returncode == 0, again.stderr[-3000:]
        import json

        summary = json.loads(again.stdout)
        assert summary["skipped"] == len(committed) and summary["done"] == N_FILES - len(committed)
        assert summary["totals"]["rows_written"] == N_FILES * 20 and summary["totals"]["inputs_done"] == N_FILES
    finally:
        server.stop()


@pytest.mark.ray
def test_quantize_when_the_store_goes_down_mid_run_exits_3_and_resumes(ray_local, tmp_path, monkeypatch, capsys, caplog):
    """In process (the store is a moto server thread): it stops once a shard committed, then comes back."""
    import threading

    import boto3
    from moto.server import ThreadedMotoServer

    from pipeline.ingest.writer import write_shard
    from pipeline.runner import job_main

    for i in range(8):
        write_shard(str(tmp_path / "shards" / f"m-{i:03d}.tar"), good_samples(f"m{i}_", 3, seed=i, caption=False))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="vbpe-down")
    cfg = tmp_path / "q.yaml"
    cfg.write_text(yaml.safe_dump({
        "inputs": [str(tmp_path / "shards")], "out": "s3://vbpe-down/codes", "fit_kmeans": True, "batch_size": 1,
        "cpus": 0.5, "cpus_per_reader": 0.5,
        "quantizer": {"kind": "kmeans", "codebook": str(tmp_path / "cb.safetensors"), "image_size": 32,
                      "patch_size": 8, "codebook_size": 8, "fit_patches": 500},
        "storage": {"endpoint_url": endpoint, **FAST_FAIL}}))

    def entries() -> list[str]:
        listed = s3.list_objects_v2(Bucket="vbpe-down", Prefix="codes/manifest.d/")
        return [o["Key"] for o in listed.get("Contents", [])]

    def take_the_store_down() -> None:
        while not entries():
            time.sleep(0.02)
        server.stop()

    watcher = threading.Thread(target=take_the_store_down, daemon=True)
    watcher.start()
    try:
        code = job_main("quantize", ["--config", str(cfg)])
        watcher.join(timeout=60)
        err = capsys.readouterr().err
        assert code == 3, err[-3000:]
        assert "attempt 1 of 2, retrying" in caplog.text and "left for the next run" in err
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)  # moto keeps its state
        server.start()
        committed = entries()
        assert 1 <= len(committed) < 8
        assert job_main("quantize", ["--config", str(cfg)]) == 0
        import json

        summary = json.loads(capsys.readouterr().out)
        assert summary["skipped"] == len(committed) and summary["done"] == 8 - len(committed)
        assert summary["totals"]["rows_written"] == 8 * 3
    finally:
        server.stop()
    assert signal
