"""The three stages as real Ray Train runs on a tiny Llama: freezing per parameter, falling loss,
metrics, skip on re-run, resume after an interruption and automatic retry after a worker crash."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.train import tiny
from pipeline.train.evaluate import mean_loss
from pipeline.train.schedule import lr_at
from pipeline.train import api
from pipeline.train.driver import run_init, run_stage
from schemas.base import ConfigError
from schemas.layout import IdLayout
from schemas.train import CATEGORIES, STAGES, TrainConfig
from tests.helpers.train_hooks import CrashOnce, shippable

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def fast_ray(ray_local):
    """Ray Train's controller polls workers every 2 s by default; on a 2-core test box that dominates each fit."""
    key = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    old = os.environ.get(key)
    os.environ[key] = "0.2"
    shippable()
    yield ray_local
    if old is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = old


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tok = tiny.build_tokenizer(str(root / "tok"))
    for tied in (False, True):
        tiny.build_model(str(root / f"src-{tied}"), len(tok), tied=tied)
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=32, num_merges=16)
    keys = tiny.write_corpus(str(root / "corpus" / "part-0.parquet"), layout, 16)
    tiny.write_conversations(str(root / "conv" / "good.jsonl"), keys, list(CATEGORIES))
    bad = [
        {"id": "bad-key", "image": "nowhere.jpg", "category": "foundation", "conversations": tiny.conversation(keys[0], "foundation")},
        {"id": "bad-cat", "image": f"{keys[0]}.jpg", "category": "poetry", "conversations": tiny.conversation(keys[0], "foundation")},
    ]
    (root / "conv" / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    return root, layout


def config(inputs, out: str, tied: bool = False, num_workers: int = 1, **extra) -> TrainConfig:
    root, _ = inputs
    stage = {"epochs": 2, "batch_size": 2, "grad_accum": 2}
    data = {
        "model": str(root / f"base-{tied}"),
        "output": out,
        "init": {"source_model": str(root / f"src-{tied}"), "tokenizer": str(root / "tok"), "layout": str(root / "corpus" / "layout.yaml")},
        "data": {"conversations": [{"path": str(root / "conv")}], "corpus": [str(root / "corpus")], "image_key": "stem", "max_length": 48,
                 "heldout_fraction": 0.2},
        "stage1": {**stage, "lr": 1e-2},
        "stage2": {**stage, "lr": 3e-3},
        "stage3": {**stage, "lr": 3e-3},
        "workers": {"num_workers": num_workers, "max_failures": 0},
        "gradient_checkpointing": False,
    }
    for key, value in extra.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return TrainConfig.from_dict(data)


def weights(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).state_dict().items()}


def check_freezing(before: dict, after: dict, stage: str, n_old: int, layers: int) -> None:
    """Parameter by parameter: what the stage may change did change, everything else is bit-identical."""
    assert before.keys() == after.keys()
    rows = ("model.embed_tokens.weight", "lm_head.weight")
    for name, old in before.items():
        new = after[name]
        if stage == "stage3":
            assert not torch.equal(new, old), f"{stage}: {name} did not train"
        elif name in rows:
            assert torch.equal(new[:n_old], old[:n_old]), f"{stage}: old rows of {name} changed"
            assert not torch.equal(new[n_old:], old[n_old:]), f"{stage}: new rows of {name} did not train"
        elif stage == "stage2" and any(name.startswith(f"model.layers.{i}.") for i in range(layers)):
            assert not torch.equal(new, old), f"{stage}: {name} did not train"
        else:
            assert torch.equal(new, old), f"{stage}: frozen {name} changed"


def run_all(cfg: TrainConfig) -> list[dict]:
    """init, stage1, stage2, stage3 summaries of `vbpe train all`."""
    summary = api.run(cfg, "all")
    return [summary.results["init"]] + [summary.results[s] for s in STAGES]


def stage_models(cfg: TrainConfig) -> list[str]:
    return [cfg.model] + [os.path.join(cfg.output, s, "model") for s in STAGES]


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


def test_worker_crash_is_retried_automatically(fast_ray, inputs, tmp_path):
    cfg = config(inputs, str(tmp_path / "run"), stage1={"checkpoint_every": 1}, workers={"max_failures": 1})
    crash = CrashOnce(step=3, marker=str(tmp_path / "crashed"))
    summary = run_stage(cfg, "stage1", hooks=crash)
    assert os.path.exists(crash.marker) and summary["resumed_from_step"] > 0 and summary["steps"] == 8


def test_stage_needs_previous_stage(fast_ray, inputs, tmp_path):
    from schemas.base import InputError

    cfg = config(inputs, str(tmp_path / "run"))
    run_init(cfg)
    with pytest.raises(InputError, match="stage1 has not completed"):
        run_stage(cfg, "stage2")


@pytest.mark.slow
def test_three_stages_two_workers_tied_checkpointed(fast_ray, inputs, tmp_path):
    _, layout = inputs
    short = {"max_steps": 4}
    cfg = config(inputs, str(tmp_path / "run2"), tied=True, num_workers=2, gradient_checkpointing=True, stage1=short, stage2=short, stage3=short)
    _, *stages = run_all(cfg)
    assert [s["geometry"]["world_size"] for s in stages] == [2, 2, 2]
    assert [s["geometry"]["global_batch"] for s in stages] == [8, 8, 8] and [s["steps"] for s in stages] == [4, 4, 4]
    sd = [weights(m) for m in stage_models(cfg)]
    for i, stage in enumerate(STAGES):
        check_freezing(sd[i], sd[i + 1], stage, layout.text_vocab_size, layers=1)
        assert torch.equal(sd[i + 1]["lm_head.weight"], sd[i + 1]["model.embed_tokens.weight"])
    seqs = os.path.join(cfg.output, "data", "sequences.parquet")
    assert mean_loss(stage_models(cfg)[-1], seqs, layout.pad_id) < mean_loss(cfg.model, seqs, layout.pad_id)
    heldout = os.path.join(cfg.output, "data", "heldout.parquet")  # scored by two ranks, as one process scores it
    assert stages[-1]["heldout_loss"] == pytest.approx(mean_loss(stage_models(cfg)[-1], heldout, layout.pad_id), rel=1e-4)


def test_worker_killed_right_after_a_checkpoint_resumes_from_it(fast_ray, inputs, tmp_path):
    """The newest checkpoint complete on storage is the resume point, whether or not Ray Train
    registered it before the worker died (#10 item 18)."""
    cfg = config(inputs, str(tmp_path / "run"), stage1={"checkpoint_every": 2, "max_steps": 6}, workers={"max_failures": 1})
    run_init(cfg)
    crash = CrashOnce(step=4, marker=str(tmp_path / "crashed"), when="checkpoint")
    summary = run_stage(cfg, "stage1", hooks=crash)
    assert os.path.exists(crash.marker) and summary["resumed_from_step"] == 4 and summary["steps"] == 6


def test_edited_conversation_invalidates_the_stages_trained_on_it(fast_ray, inputs, tmp_path):
    """Same size, same modification time, other content: the prepared data is stale, and so is the
    completed stage; the run says so instead of skipping it, and nothing is overwritten (#10 item 14)."""
    import shutil

    from schemas.base import InputError

    root, _ = inputs
    conv = tmp_path / "conv"
    shutil.copytree(root / "conv", conv)
    cfg = config(inputs, str(tmp_path / "run"), data={"conversations": [{"path": str(conv)}]}, stage1={"max_steps": 2})
    run_init(cfg)
    first = run_stage(cfg, "stage1")
    path = conv / "good.jsonl"
    text, stat = path.read_text(), os.stat(path)
    path.write_text(text.replace("a red cat", "a red dog", 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.read_text() != text and os.path.getsize(path) == stat.st_size
    stats = (tmp_path / "run" / "data" / "stats.json").read_text()
    with pytest.raises(InputError, match="inputs changed .* stage1 already completed"):
        run_stage(cfg, "stage1")
    with pytest.raises(InputError, match="stage1 already completed"):
        api.run(cfg, "prepare")
    assert (tmp_path / "run" / "data" / "stats.json").read_text() == stats  # the data stage1 used is kept
    path.write_text(text)
    assert run_stage(cfg, "stage1")["skipped"] and first["fingerprint"]
