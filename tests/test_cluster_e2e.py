"""What docs/cluster.md tells a user to do, on a real `ray start --head` cluster in a subprocess.

The cluster is started the way the docs say (the venv activated: its bin/ first on PATH, nothing
else of this test process's environment, token authentication on), the stages are submitted with
`vbpe submit` from a separate process, and the scheduled re-tokenization finds a new shard and a
corrupt grid file. A job run by a Python that lacks vbpe's dependencies (what the cluster's PATH gave
when the venv was not activated) is refused in one line instead of a traceback.
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.ingest.writer import write_shard
from tests.helpers.ray_cluster import LocalRayCluster
from tests.helpers.shards import bad_samples, good_samples

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
# The user's PATH without the venv (as before activating it): here, pyenv's `python` comes first.
SYSTEM_PATH = os.pathsep.join(p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                              if p and not p.startswith(os.path.dirname(VENV_BIN)))
TOKEN = secrets.token_hex(16)


def user_env(activated: bool) -> dict[str, str]:
    """A user's shell: HOME, a plain PATH (the venv first only when activated) and token auth."""
    env = {"HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": (VENV_BIN + os.pathsep if activated else "") + SYSTEM_PATH,
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
    if activated:
        env["VIRTUAL_ENV"] = os.path.dirname(VENV_BIN)
    return env


def start_cluster(activated: bool) -> LocalRayCluster:
    tmp = tempfile.mkdtemp(prefix="re", dir="/tmp")  # short: Ray's socket paths are length-limited
    cluster = LocalRayCluster(tmp, num_cpus=2, env=user_env(activated), inherit_env=False)
    cluster.wait_ready()
    return cluster


def stop_cluster(cluster: LocalRayCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def vbpe_submit(cluster: LocalRayCluster, *args: str) -> subprocess.CompletedProcess:
    """`vbpe submit ...` as a user types it in the checkout, with the venv activated."""
    cmd = [os.path.join(VENV_BIN, "vbpe"), "submit", *args, "--address", cluster.address]
    return subprocess.run(cmd, cwd=REPO, env=user_env(activated=True), capture_output=True, text=True, timeout=600)


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    shards = root / "shards"
    bad = bad_samples(max_pixels=1_000_000)
    write_shard(str(shards / "s-000.tar"), good_samples("a", 6, seed=1))
    write_shard(str(shards / "s-001.tar"), good_samples("b", 5, seed=2) + [(k, m) for k, (m, _) in bad.items()])
    quantizer = {"kind": "kmeans", "codebook": str(root / "kmeans.safetensors"), "image_size": 32, "patch_size": 8,
                 "codebook_size": 16, "fit_patches": 2000, "fit_iterations": 5}
    cfg = {
        "quantize": write_yaml(root / "quantize.yaml", {
            "inputs": [str(shards)], "out": str(root / "codes"), "quantizer": quantizer, "fit_kmeans": True,
            "ingest": {"max_pixels": 1_000_000}, "batch_size": 8, "cpus": 0.5, "cpus_per_reader": 0.5}),
        "learn": write_yaml(root / "learn.yaml", {
            "inputs": [str(root / "codes" / "grids")], "out": str(root / "vocab" / "vocab.json"), "merges": 8,
            "progress": False, "workers": 2, "cpus": 0.5, "min_frequency": 2}),  # two actors over the mesh
        "tokenize": write_yaml(root / "tokenize.yaml", {
            "inputs": [str(root / "codes" / "grids")], "vocab": str(root / "vocab" / "vocab.json"),
            "out": str(root / "tokens"), "layout": {"text_vocab_size": 32, "codebook_size": 16, "num_merges": 8},
            "executor": "local"}),
    }
    return {"root": root, "shards": shards, "bad": bad, "cfg": cfg}


def _version_root(root) -> str:
    (version,) = glob.glob(str(root / "tokens" / "v1-*"))
    return version


def test_the_documented_local_recipe_end_to_end(workspace):
    root, cfg = workspace["root"], workspace["cfg"]
    cluster = start_cluster(activated=True)
    try:
        q = vbpe_submit(cluster, "quantize", "--config", cfg["quantize"])
        assert q.returncode == 0, q.stderr + q.stdout
        manifest = json.load(open(root / "codes" / "manifest.json"))
        totals = manifest["totals"]
        assert totals["inputs_done"] == 2 and totals["rows_rejected"] == len(workspace["bad"])
        assert totals["rows_in"] == totals["rows_written"] + totals["rows_rejected"] == 11 + len(workspace["bad"])
        metrics = json.load(open(root / "codes" / "metrics.json"))
        assert metrics["status"] == "ok" and metrics["rows_accounted"]

        learn = vbpe_submit(cluster, "learn", "--config", cfg["learn"])
        assert learn.returncode == 0, learn.stderr + learn.stdout
        vocab = json.load(open(root / "vocab" / "vocab.json"))
        assert len(vocab["merges"]) == 8 and vocab["corpus"]["grids"] == 11
        learned = json.load(open(root / "vocab" / "vocab.metrics.json"))
        assert len(learned["workers_resources"]) == 2 and all(w["mesh_sent_bytes"] > 0 for w in learned["workers_resources"])

        first = vbpe_submit(cluster, "tokenize", "--config", cfg["tokenize"], "--schedule-date", "2026-03-01")
        assert first.returncode == 0, first.stderr + first.stdout
        version = _version_root(root)
        entries = json.load(open(os.path.join(version, "manifest.json")))["inputs"]
        assert len(entries) == 2 and all(e["status"] == "done" for e in entries.values())
        before = {u: (e["recorded"], os.stat(os.path.join(version, e["output"])).st_mtime_ns) for u, e in entries.items()}

        # New data arrives: one more shard (quantized like the others) and a grid file that is not Parquet.
        write_shard(str(workspace["shards"] / "s-002.tar"), good_samples("c", 4, seed=3))
        again = vbpe_submit(cluster, "quantize", "--config", cfg["quantize"])
        assert again.returncode == 0, again.stderr + again.stdout
        assert "1 done now, 2 already done" in again.stdout
        corrupt = root / "codes" / "grids" / "zz-corrupt.parquet"
        corrupt.write_bytes(b"not parquet" * 100)

        nightly = vbpe_submit(cluster, "tokenize", "--config", cfg["tokenize"], "--schedule-date", "2026-03-02")
        assert nightly.returncode == 3, nightly.stderr + nightly.stdout  # some inputs failed
        assert "FAILED" in nightly.stderr and "not a readable Parquet file" in nightly.stdout
        m = json.load(open(os.path.join(version, "manifest.json")))
        entries = m["inputs"]
        assert entries[str(corrupt)]["status"] == "failed"
        new = [u for u in entries if u not in before and u != str(corrupt)]
        assert len(new) == 1 and entries[new[0]]["status"] == "done" and entries[new[0]]["rows_written"] == 4
        for url, (recorded, mtime) in before.items():  # only the new inputs were processed
            assert entries[url]["recorded"] == recorded
            assert os.stat(os.path.join(version, entries[url]["output"])).st_mtime_ns == mtime
        t = m["totals"]
        assert t["inputs_done"] == 3 and t["inputs_failed"] == 1
        assert t["rows_in"] == t["rows_written"] + t["rows_rejected"] == 15
        assert pq.read_table(os.path.join(version, "data")).num_rows == 15

        retry = vbpe_submit(cluster, "tokenize", "--config", cfg["tokenize"], "--schedule-date", "2026-03-02")
        assert retry.returncode == 3 and "already ran: FAILED" in retry.stderr  # a slot never runs twice

        # The job's `python` is the first on the cluster's PATH: here, one without vbpe's dependencies.
        bare = next(p for p in (shutil.which("python", path=SYSTEM_PATH), "/usr/bin/python3") if p)
        refused = vbpe_submit(cluster, "quantize", "--config", cfg["quantize"], "--python", bare)
        assert refused.returncode == 2, refused.stderr + refused.stdout
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("vbpe submit: error:") and "cannot import" in last and "docs/cluster.md" in last
        assert "Traceback" not in refused.stdout + refused.stderr
    finally:
        stop_cluster(cluster)
