"""The three stages on a tiny Llama, trained by the local executor (`workers: {executor: local}`: the
same loop in this process as the only rank): freezing per parameter, falling loss, held-out loss,
metrics, skip on re-run, resume after an interruption, and one-line refusals of what one rank cannot
do. Then what needs Ray Train (one worker): it trains on the same rows, step by step, as the local
executor and gives the same losses, and a Ray Train run that crashes with retries off resumes, run
again, to the same weights. Faults and stale inputs: test_train_faults.py. Two workers, DDP vs FSDP:
test_train_fsdp.py."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.train import api
from pipeline.train.driver import run_stage
from pipeline.train.evaluate import mean_loss
from pipeline.train.job import Hooks
from pipeline.train.schedule import lr_at
from schemas.base import ConfigError
from schemas.train import STAGES
from tests.helpers.train_hooks import CrashOnce, RecordBatches
from tests.helpers.train_world import check_freezing, config, fast_ray, inputs, run_all, stage_models, weights  # noqa: F401

LOCAL = {"executor": "local"}
STAGE1 = {"checkpoint_every": 3}


class InterruptOnce(Hooks):
    """Raise (as Ctrl-C or a dying driver would stop the local run) right after the checkpoint of `step`."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def after_checkpoint(self, stage, step, rank) -> None:
        if step == self.step and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise KeyboardInterrupt(f"test: interrupted after the checkpoint of step {step}")


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory):
    """`vbpe train all` on the local executor: the init, stage 1, 2 and 3 summaries, and the rows each step trained on."""
    root = tmp_path_factory.mktemp("local")
    (root / "batches").mkdir()
    cfg = config(inputs, str(root / "run"), workers=LOCAL, stage1=STAGE1)
    return cfg, run_all(cfg, hooks=RecordBatches(str(root / "batches"))), root / "batches"


@pytest.fixture(scope="module")
def ray_run(fast_ray, inputs, tmp_path_factory):
    """Stage 1 of the same config as a Ray Train run of one worker (the reference of the Ray tests here)."""
    root = tmp_path_factory.mktemp("ray")
    (root / "batches").mkdir()
    cfg = config(inputs, str(root / "run"), workers={"executor": "ray"}, stage1=STAGE1)
    api.run(cfg, "init")
    return cfg, run_stage(cfg, "stage1", hooks=RecordBatches(str(root / "batches"))), root / "batches"


def test_local_stage_trains_checkpoints_scores_and_exports(local_run, inputs):
    cfg, (_, summary, *_), _ = local_run
    _, layout = inputs
    assert summary["executor"] == "local" and summary["steps"] == 8 and summary["resumed_from_step"] == 0
    rows = _rows(summary["metrics"])
    assert [r["step"] for r in rows] == list(range(1, 9)) and all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert summary["final_loss"] == rows[-1]["loss"]
    ckpts = sorted(os.listdir(os.path.dirname(summary["checkpoint"])))
    assert ckpts == ["checkpoint-step-00000006", "checkpoint-step-00000008"]  # every 3 steps and the last; keep 2
    model = os.path.join(cfg.output, "stage1", "model")
    heldout = os.path.join(cfg.output, "data", "heldout.parquet")
    assert summary["heldout_sequences"] == 16
    assert summary["heldout_loss"] == pytest.approx(mean_loss(model, heldout, layout.pad_id), rel=1e-4)
    metrics = json.loads(open(os.path.join(cfg.output, "stage1", "metrics.json")).read())
    assert metrics["rows_in"] == summary["samples_consumed"] == 32
    assert run_stage(cfg, "stage1")["skipped"] is True


def test_three_stages_freeze_train_score_record_and_skip(local_run, inputs):
    cfg, summaries, _ = local_run
    _, layout = inputs
    init, *stages = summaries
    assert [s["executor"] for s in stages] == ["local"] * 3
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
        rows = _rows(s["metrics"])
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
    changed = config(inputs, cfg.output, workers=LOCAL, stage1={**STAGE1, "lr": 5e-3})
    with pytest.raises(ConfigError, match="already completed"):
        run_stage(changed, "stage1")


@pytest.mark.ray
@pytest.mark.slow
def test_local_and_one_ray_worker_train_on_the_same_rows_with_the_same_losses(local_run, ray_run):
    cfg, (_, local, *_), local_batches = local_run
    ray_cfg, ray, ray_batches = ray_run
    assert ray["executor"] == "ray" and ray["steps"] == local["steps"]
    assert _rows(local_batches / "stage1-0.jsonl") == _rows(ray_batches / "stage1-0.jsonl")
    got, want = _rows(local["metrics"]), _rows(ray["metrics"])
    for a, b in zip(got, want):
        assert (a["step"], a["tokens"], a["target_tokens"], a["samples"]) == (b["step"], b["tokens"], b["target_tokens"], b["samples"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7) and a["lr"] == b["lr"]
    assert local["heldout_loss"] == pytest.approx(ray["heldout_loss"], rel=1e-6)
    a, b = weights(os.path.join(cfg.output, "stage1", "model")), weights(os.path.join(ray_cfg.output, "stage1", "model"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_ray_stage_resumes_and_matches(ray_run, inputs, tmp_path):
    """A Ray Train worker that crashes with retries off fails the run; running the stage again resumes from
    its last checkpoint and ends exactly where the uninterrupted Ray Train run ended."""
    ref_cfg, _, _ = ray_run
    cfg = config(inputs, str(tmp_path / "run"), workers={"executor": "ray"}, stage1={"checkpoint_every": 1})
    crash = CrashOnce(step=4, marker=str(tmp_path / "crashed"))
    with pytest.raises(Exception):
        run_stage(cfg, "stage1", hooks=crash)
    assert os.path.exists(crash.marker) and not os.path.exists(os.path.join(cfg.output, "stage1", "done.json"))
    summary = run_stage(cfg, "stage1", hooks=crash)
    assert summary["executor"] == "ray" and 0 < summary["resumed_from_step"] <= 4 and summary["steps"] == 8
    rows = _rows(summary["metrics"])
    assert [r["step"] for r in rows] == list(range(1, 9))
    ref = weights(os.path.join(ref_cfg.output, "stage1", "model"))
    got = weights(os.path.join(cfg.output, "stage1", "model"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_interrupted_local_stage_resumes_from_its_checkpoint_and_ends_where_the_uninterrupted_one_did(local_run, inputs, tmp_path):
    ref_cfg, (_, ref, *_), _ = local_run
    cfg = config(inputs, str(tmp_path / "run"), workers=LOCAL, stage1={"checkpoint_every": 2})
    stop = InterruptOnce(step=4, marker=str(tmp_path / "stopped"))
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, "stage1", hooks=stop)
    assert not os.path.exists(os.path.join(cfg.output, "stage1", "done.json"))

    with pytest.raises(ConfigError, match="cannot resume stage1 .* world size 1 .* now 2"):  # before any worker starts
        run_stage(cfg.model_copy(update={"workers": cfg.workers.model_copy(update={"executor": "ray", "workers": 2})}), "stage1")

    summary = run_stage(cfg, "stage1", hooks=stop)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8
    rows = _rows(summary["metrics"])
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(ref["metrics"])]
    want = weights(os.path.join(ref_cfg.output, "stage1", "model"))
    got = weights(os.path.join(cfg.output, "stage1", "model"))
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("workers, stage, message", [
    ({"executor": "local", "workers": 2}, {}, "executor: local trains in this process as one rank; workers: 2"),
    ({"executor": "local"}, {"strategy": "fsdp"}, "executor: local is one rank, and strategy: fsdp shards over several (stage2)"),
])
def test_local_refuses_what_one_rank_cannot_do(inputs, tmp_path, workers, stage, message):
    cfg = config(inputs, str(tmp_path / "run"), tied=True, workers=workers, stage2=stage)
    with pytest.raises(ConfigError) as err:
        api.run(cfg, "all")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not os.path.exists(cfg.output) and not os.path.exists(cfg.model)  # refused before init and prepare


def test_workers_block_has_the_shared_execution_fields_and_still_reads_the_old_names(inputs, tmp_path):
    from schemas.base import ExecutionOptions
    from schemas.train import TrainConfig, WorkersConfig

    assert issubclass(WorkersConfig, ExecutionOptions)
    import yaml

    from pipeline.configargs import load_config

    data = config(inputs, str(tmp_path / "a")).model_dump(mode="json")
    data["workers"] = {"num_workers": 2, "cpus_per_worker": 0.5, "data_cpus": 0.1}  # a config written before the rename
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    old = load_config(TrainConfig, str(tmp_path / "old.yaml"))
    new = TrainConfig.from_dict({**data, "workers": {"workers": 2, "cpus": 0.5, "data_cpus": 0.1}})
    assert old == new and (new.workers.workers, new.workers.cpus, new.workers.executor) == (2, 0.5, "auto")
    assert TrainConfig.from_yaml_text(old.to_yaml(), "t.yaml") == old  # written with the new names, read back
    with pytest.raises(ConfigError, match="num_workers is the old name of workers: give one of them"):
        WorkersConfig.from_dict({"num_workers": 2, "workers": 2})
    defaults = WorkersConfig()  # an old config without `workers` still trains on one Ray Train worker
    assert (defaults.executor, defaults.workers, defaults.cpus, defaults.world_size) == ("auto", 1, 1.0, 1)


@pytest.mark.parametrize("workers, env, want", [
    ({}, None, "ray"),  # the default: one Ray Train worker, as before
    ({"workers": 2}, None, "ray"),
    ({"workers": 0}, None, "local"),  # no Ray Train workers: this process trains
    ({"executor": "local"}, "127.0.0.1:6379", "local"),
    ({"workers": 0}, "127.0.0.1:6379", "workers: 0 means training in this process, but the executor is Ray (a cluster is named)"),
    ({"workers": 0, "ray_address": "127.0.0.1:6379"}, None, "workers: 0 means training in this process, but the executor is Ray"),
    ({"executor": "ray", "workers": 0}, None, "workers: 0 means training in this process, but the executor is Ray (executor: ray)"),
])
def test_executor_follows_the_shared_rule(inputs, tmp_path, monkeypatch, workers, env, want):
    from pipeline.train.executors import executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    cfg = config(inputs, str(tmp_path / "run"), workers=workers)
    if want in ("ray", "local"):
        assert executor(cfg) == want
        assert cfg.workers.world_size == max(1, cfg.workers.workers)
    else:
        with pytest.raises(ConfigError) as err:
            executor(cfg)
        assert str(err.value).startswith(want) and "\n" not in str(err.value)
