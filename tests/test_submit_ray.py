"""`vbpe submit` against a real local Ray cluster (`ray start --head` on loopback, dashboard on)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from tests.helpers.corpus import V, grids, learn_vocab, write_grid_file
from tests.helpers.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.ray
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths are length-limited
    c = LocalRayCluster(tmp, num_cpus=2, env={"PYTHONPATH": ""})
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("submit")
    codes = grids(70, seed=4)
    learn_vocab(codes[:40]).save(str(root / "vocab.json"))
    write_grid_file(str(root / "g" / "a.parquet"), codes[40:55], "a")
    write_grid_file(str(root / "g" / "b.parquet"), codes[55:70], "b")
    (root / "broken").mkdir()
    pq.write_table(pa.table({"key": ["k"], "height": [1], "width": [1], "codes": ["x"]}), root / "broken" / "x.parquet")
    return root


def _config(root, name: str, inputs: str, out: str, executor: str = "ray") -> str:
    """executor: ray fans files out as tasks on the cluster; local keeps the job to its driver (faster to start)."""
    path = root / f"{name}.yaml"
    path.write_text(f"inputs: [{inputs}]\nvocab: {root}/vocab.json\nout: {out}\nexecutor: {executor}\n"
                    f"layout: {{text_vocab_size: 8, codebook_size: {V}, num_merges: 12}}\n")
    return str(path)


def _submit(monkeypatch, cluster, *args: str) -> int:
    monkeypatch.chdir(REPO)  # the working directory that gets uploaded
    return cli.main(["submit", "tokenize", "--address", cluster.address, *args])


def _jobs(cluster) -> list:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.address).list_jobs()


def test_submit_waits_streams_logs_and_the_job_wrote_the_rows(cluster, corpus, monkeypatch, capfd):
    cfg = _config(corpus, "adhoc", f"{corpus}/g", f"{corpus}/out-adhoc")
    assert _submit(monkeypatch, cluster, "--config", cfg) == 0
    out = capfd.readouterr().out
    assert "rows in 30 = written 30 + rejected 0" in out  # the job's own log lines, streamed
    assert "Ray: 2 items" in out  # the files went out as Ray tasks
    manifest = json.load(open(next((corpus / "out-adhoc").glob("v1-*/manifest.json"))))
    assert manifest["totals"]["rows_written"] == 30 and manifest["totals"]["inputs_done"] == 2
    assert pq.read_table(next((corpus / "out-adhoc").glob("v1-*/data"))).num_rows == 30


def test_scheduled_run_never_runs_twice(cluster, corpus, monkeypatch, capfd):
    cfg = _config(corpus, "nightly", f"{corpus}/g", f"{corpus}/out-nightly", "local")
    before = len(_jobs(cluster))
    assert _submit(monkeypatch, cluster, "--config", cfg, "--schedule-date", "2026-01-02") == 0
    first = capfd.readouterr().out.strip().splitlines()[-1]
    assert first.startswith("vbpe-tokenize-") and first.endswith("-20260102")
    assert _submit(monkeypatch, cluster, "--config", cfg, "--schedule-date", "2026-01-02") == 0
    captured = capfd.readouterr()
    assert captured.out.strip() == first and "already ran: SUCCEEDED" in captured.err
    assert len(_jobs(cluster)) == before + 1


def test_failed_job_status_is_returned_and_retried_only_when_asked(cluster, corpus, monkeypatch, capfd):
    cfg = _config(corpus, "broken", f"{corpus}/broken", f"{corpus}/out-broken", "local")
    assert _submit(monkeypatch, cluster, "--config", cfg, "--schedule-date", "2026-01-03", "--no-wait") == 0
    sid = capfd.readouterr().out.strip().splitlines()[-1]
    from pipeline.submit.submit import follow
    from ray.job_submission import JobSubmissionClient

    info = follow(JobSubmissionClient(cluster.address), sid, out=open(os.devnull, "w"), timeout=300)
    assert str(info.status) == "FAILED" and info.driver_exit_code == 3  # jobs.tokenize: some inputs failed
    assert _submit(monkeypatch, cluster, "--config", cfg, "--schedule-date", "2026-01-03") == 3
    assert "already ran: FAILED" in capfd.readouterr().err
    assert _submit(monkeypatch, cluster, "--config", cfg, "--schedule-date", "2026-01-03", "--retry-failed") == 3
    assert capfd.readouterr().out.strip().splitlines()[-1] == f"{sid}-a2"
