"""The three stages as real Ray Train runs on a tiny Llama (one worker): freezing per parameter, falling
loss, held-out loss, metrics, skip on re-run, resume after an interruption. Faults and stale inputs:
test_train_faults.py. Two workers, DDP vs FSDP: test_train_fsdp.py."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.train.driver import run_stage
from pipeline.train.evaluate import mean_loss
from pipeline.train.schedule import lr_at
from schemas.base import ConfigError
from schemas.train import STAGES
from tests.helpers.train_hooks import CrashOnce
from tests.helpers.train_world import check_freezing, config, fast_ray, inputs, run_all, stage_models, weights  # noqa: F401

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def one_worker_run(fast_ray, inputs, tmp_path_factory):
    cfg = config(inputs, str(tmp_path_factory.mktemp("run1")), stage1={"checkpoint_every": 3})
    return cfg, run_all(cfg)


def test_three_stages_one_worker(one_worker_run, inputs):
    cfg, summaries = one_worker_run
    _, layout = inputs
    init, *stages = summaries
    assert init["new_rows"] == layout.total_size - layout.text_vocab_size
    stats = json.loads(open(os.path.join(cfg.output, "data", "stats.json")).read())
    assert stats["records"] == 66 and stats["sequences"] == 48 and stats["heldout"] == 16
    assert stats["reject_reasons"] == {"unknown category": 1, "unknown image key": 1}

    models = stage_models(cfg)
    sd = [weights(m) for m in models]
    for i, stage in enumerate(STAGES):
        check_freezing(sd[i], sd[i + 1], stage, layout.text_vocab_size, layers=1)
    assert [s["layers_unfrozen"] for s in stages] == [0, 1, 0]
    assert stages[0]["samples_per_category"] == {"foundation": 24, "perception": 6}  # 80/20 of 15 per epoch, 2 epochs
    assert stages[1]["samples_per_category"] == {"foundation": 24, "instruction": 6, "perception": 18, "reasoning": 12}
    assert [s["steps"] for s in stages] == [8, 15, 15]
    assert stages[0]["consumed_per_category"] == {"foundation": 26, "perception": 6}  # 8 steps x 4, the last batch wraps

    seqs = os.path.join(cfg.output, "data", "sequences.parquet")
    losses = [mean_loss(m, seqs, layout.pad_id) for m in models]
    assert losses[0] > losses[1] > losses[2] > losses[3], losses
    assert losses[3] < 0.5 * losses[0], losses
    heldout = os.path.join(cfg.output, "data", "heldout.parquet")
    for model, s in zip(models[1:], stages):  # each stage scored the held-out set at its end, as the saved model does
        assert s["heldout_sequences"] == 16 and s["heldout_loss"] == pytest.approx(mean_loss(model, heldout, layout.pad_id), rel=1e-4)

    for stage, s in zip(STAGES, stages):
        rows = [json.loads(line) for line in open(s["metrics"])]
        assert [r["step"] for r in rows] == list(range(1, s["steps"] + 1))
        assert all(r["tokens_per_s"] > 0 and r["loss"] > 0 and r["target_tokens"] > 0 for r in rows)
        peak = cfg.stage(stage).lr
        assert [r["lr"] for r in rows] == [lr_at(i, s["steps"], peak, "cosine", 0.03) for i in range(s["steps"])]
        assert s["geometry"]["global_batch"] == 4 and s["resumed_from_step"] == 0 and s["checkpoint"]

    again = run_all(cfg)  # everything complete: nothing trains again
    assert all(s.get("skipped") for s in again)
    for stage in STAGES:  # each stage recorded its run metrics beside its outputs
        m = json.loads(open(os.path.join(cfg.output, stage, "metrics.json")).read())
        assert m["stage"] == f"train.{stage}" and m["status"] == "ok" and m["rows_in"] == m["rows_out"] > 0
    prep = json.loads(open(os.path.join(cfg.output, "data", "metrics.json")).read())
    assert prep["rows_in"] == 66 and prep["rows_out"] == 64 and prep["rows_rejected"] == 2 and prep["rows_accounted"]
    changed = config(inputs, cfg.output, stage1={"checkpoint_every": 3, "lr": 5e-3})
    with pytest.raises(ConfigError, match="already completed"):
        run_stage(changed, "stage1")


def test_interrupted_stage_resumes_and_matches(one_worker_run, inputs, tmp_path):
    """A crash with retries off fails the run; running the stage again resumes from its last checkpoint
    and ends exactly where the uninterrupted run ended."""
    ref_cfg, _ = one_worker_run
    cfg = config(inputs, str(tmp_path / "run"), stage1={"checkpoint_every": 1})
    crash = CrashOnce(step=4, marker=str(tmp_path / "crashed"))
    with pytest.raises(Exception):
        run_stage(cfg, "stage1", hooks=crash)
    assert os.path.exists(crash.marker) and not os.path.exists(os.path.join(cfg.output, "stage1", "done.json"))
    summary = run_stage(cfg, "stage1", hooks=crash)
    assert 0 < summary["resumed_from_step"] <= 4 and summary["steps"] == 8
    rows = [json.loads(line) for line in open(summary["metrics"])]
    assert [r["step"] for r in rows] == list(range(1, 9))
    ref = weights(os.path.join(ref_cfg.output, "stage1", "model"))
    got = weights(os.path.join(cfg.output, "stage1", "model"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)
