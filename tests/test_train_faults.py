"""Train faults and stale inputs as real Ray Train runs on a tiny Llama (one worker): a stage needs the
previous one, a worker killed right after a checkpoint resumes from it, an edited conversation invalidates
the stages trained on it, and `python -m jobs.train --stage prepare` joins a named cluster and prepares
there on Ray Data as in process. Apart from test_train_local.py (the three stages, one Ray Train worker
against the local executor) so the two xdist workers share the train runs."""
from __future__ import annotations

import os

import pytest

from pipeline.train import api
from pipeline.train.driver import run_init, run_stage
from tests.helpers.train_hooks import CrashOnce
from tests.helpers.train_world import config, fast_ray, inputs  # noqa: F401

pytestmark = pytest.mark.ray


def test_stage_needs_previous_stage(fast_ray, inputs, tmp_path):
    from schemas.base import InputError

    cfg = config(inputs, str(tmp_path / "run"))
    run_init(cfg)
    with pytest.raises(InputError, match="stage1 has not completed"):
        run_stage(cfg, "stage2")


def test_prepare_joins_the_named_cluster_and_ray_data_equals_prepare_here(fast_ray, inputs, tmp_path):
    """`prepare.ray_address` names a cluster, so `auto` prepares on Ray (as every stage decides), and
    `python -m jobs.train --stage prepare` joins that cluster (its driver is a job there), not a private one;
    records tokenized there by a pool of Ray Data actors give the same files, in the same order, as in process.
    (Before the module's Ray Train fit: a finished fit's resource reservation delays the next job's Ray Data.)"""
    import json
    import re
    import subprocess
    import sys

    import pyarrow.parquet as pq
    import ray
    from ray._private import state

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = ("sequences.parquet", "heldout.parquet", "sequences.rejects.parquet")
    joined = config(inputs, str(tmp_path / "ray"), prepare={"ray_address": ray.get_runtime_context().gcs_address, "cpus": 0.5,
                                                             "batch_size": 7})
    run_init(joined)
    (tmp_path / "train.yaml").write_text(joined.to_yaml())
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.train", "--config", str(tmp_path / "train.yaml"), "--stage", "prepare"],
                            cwd=repo, env={**env, "PYTHONPATH": repo}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert proc.pid in [j["DriverPid"] for j in state.jobs()]
    stats = json.loads((tmp_path / "ray" / "data" / "stats.json").read_text())
    actors = re.search(r"tokenizing records on (\d+) Ray Data actors", err)
    assert stats["executor"] == "ray" and actors and int(actors[1]) >= 2, err[-3000:]  # several: their order must not matter

    here = config(inputs, str(tmp_path / "local"), prepare={"executor": "local", "batch_size": 7})
    run_init(here)
    want = api.run(here, "prepare").results["prepare"]
    assert want["executor"] == "local" and want["records"] == 66 == want["sequences"] + want["heldout"] + want["rejected"]
    assert {k: v for k, v in stats.items() if k != "executor"} == {k: v for k, v in want.items() if k != "executor"}
    for name in names:
        assert pq.read_table(tmp_path / "ray" / "data" / name).equals(pq.read_table(tmp_path / "local" / "data" / name)), name


@pytest.fixture(scope="module")
def killed_run(fast_ray, inputs, tmp_path_factory):
    """Stage 1 with a worker killed right after the checkpoint of step 4 (restarted by Ray Train), trained on a
    copy of the conversations: the completed stage that the edited-conversation test then invalidates."""
    import shutil

    root, _ = inputs
    tmp = tmp_path_factory.mktemp("killed")
    conv = tmp / "conv"
    shutil.copytree(root / "conv", conv)
    cfg = config(inputs, str(tmp / "run"), data={"conversations": [{"path": str(conv)}]},
                 stage1={"checkpoint_every": 2, "max_steps": 6}, workers={"max_failures": 1})
    run_init(cfg)
    crash = CrashOnce(step=4, marker=str(tmp / "crashed"), when="checkpoint")
    return cfg, conv, crash, run_stage(cfg, "stage1", hooks=crash)


def test_worker_killed_right_after_a_checkpoint_resumes_from_it(killed_run):
    """The newest checkpoint complete on storage is the resume point, whether or not Ray Train
    registered it before the worker died (#10 item 18)."""
    _, _, crash, summary = killed_run
    assert os.path.exists(crash.marker) and summary["resumed_from_step"] == 4 and summary["steps"] == 6


def test_edited_conversation_invalidates_the_stages_trained_on_it(killed_run):
    """Same size, same modification time, other content: the prepared data is stale, and so is the
    completed stage; the run says so instead of skipping it, and nothing is overwritten (#10 item 14)."""
    from schemas.base import InputError

    cfg, conv, _, first = killed_run
    path = conv / "good.jsonl"
    text, stat = path.read_text(), os.stat(path)
    try:
        path.write_text(text.replace("a red cat", "a red dog", 1))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.read_text() != text and os.path.getsize(path) == stat.st_size
        stats_path = os.path.join(cfg.output, "data", "stats.json")
        stats = open(stats_path).read()
        with pytest.raises(InputError, match="inputs changed .* stage1 already completed"):
            run_stage(cfg, "stage1")
        with pytest.raises(InputError, match="stage1 already completed"):
            api.run(cfg, "prepare")
        assert open(stats_path).read() == stats  # the data stage1 used is kept
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run_stage(cfg, "stage1")["skipped"] and first["fingerprint"]
