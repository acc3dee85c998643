"""Train faults and stale inputs as real Ray Train runs on a tiny Llama (one worker): a stage needs the
previous one, a worker killed right after a checkpoint resumes from it, an edited conversation invalidates
the stages trained on it, prepare on Ray Data equals prepare in process. Apart from test_train_local.py
(the three stages, one Ray Train worker against the local executor) so the two xdist workers share the train runs."""
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


def test_prepare_on_ray_data_equals_prepare_here(fast_ray, inputs, tmp_path):
    """Records tokenized by a pool of Ray Data actors give the same files, in the same order, as in process."""
    import pyarrow.parquet as pq

    out = {}
    for executor in ("local", "ray"):
        cfg = config(inputs, str(tmp_path / executor), prepare={"executor": executor, "workers": 2, "cpus": 0.5, "batch_size": 7})
        run_init(cfg)
        stats = api.run(cfg, "prepare").results["prepare"]
        assert stats["executor"] == executor
        files = {name: pq.read_table(tmp_path / executor / "data" / name)
                 for name in ("sequences.parquet", "heldout.parquet", "sequences.rejects.parquet")}
        out[executor] = ({k: v for k, v in stats.items() if k != "executor"}, files)
    assert out["ray"][0] == out["local"][0] and out["local"][0]["records"] == 66
    for name, table in out["local"][1].items():
        assert out["ray"][1][name].equals(table), name
