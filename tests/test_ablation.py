"""A miniature of `vbpe eval ablation`, end to end on a real local Ray: scenes -> k-means -> grids -> two
vocabularies -> tokens -> tiny LLM -> three train stages per arm -> held-out scores -> ablation.json.
Then `vbpe train eval` on one arm's run, as a user would after training. The arms train with the local
executor (each arm's task is its one rank): Ray Train's start-up would cost more than the tiny fits, and
the local and Ray executors give the same losses (tests/test_train_local.py); the CPU preset keeps Ray Train."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.codegrids import key_hash
from schemas.base import ConfigError

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MINI = {
    "scenes": {"images": 60, "shards": 2, "conversations": {"perception": 1, "reasoning": 1}},
    "kmeans": {"codebook_size": 16, "fit_images": 30, "fit_patches": 3000, "fit_iterations": 4},
    "merges": [12],
    "budgets": ["steps"],
    "llm": {"tiny": {"hidden_size": 16, "layers": 2, "heads": 2, "kv_heads": 1, "warmup_steps": 10, "warmup_batch": 8}},
    "heldout_fraction": 0.25,
    "stage1": {"max_steps": 2, "batch_size": 4, "lr": 1e-3},
    "stage2": {"max_steps": 2, "batch_size": 4, "lr": 1e-3},
    "stage3": {"max_steps": 2, "batch_size": 4, "lr": 1e-3},
    "eval_batch_size": 32,
    "workers": {"executor": "local"},
}


@pytest.fixture(scope="module")
def ablation(ray_local, tmp_path_factory):
    """Run through the stage runner, as `vbpe eval ablation` and `python -m jobs.ablation` run it."""
    from pipeline.runner import execute
    from pipeline.stage import get_stage
    from schemas.evaluate import AblationConfig

    out = tmp_path_factory.mktemp("ablation")
    cfg = AblationConfig.from_dict({**MINI, "out": str(out)})
    summary = execute(get_stage("ablation"), cfg)
    return cfg, summary.result


def test_the_runner_records_the_ablations_metrics_and_a_json_safe_summary(ablation):
    from pipeline.evaluate.api import AblationSummary
    from pipeline.metrics import metrics_path

    cfg, result = ablation
    m = json.loads(open(metrics_path(cfg.out)).read())
    assert m["stage"] == "ablation" and m["status"] == "ok" and m["rows_in"] == m["rows_out"] == 60 and m["arms"] == 2
    summary = AblationSummary(result).to_json()
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert [a["name"] for a in summary["arms"]] == ["vq", "bpe12"] and summary["ablation"].endswith("ablation.json")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_ablation_json_has_both_arms_with_finite_heldout_figures(ablation):
    cfg, result = ablation
    saved = json.loads(open(os.path.join(cfg.out, "ablation.json")).read())
    assert saved["arms"] == result["arms"]
    arms = {a["name"]: a for a in saved["arms"]}
    assert list(arms) == ["vq", "bpe12"]
    assert arms["vq"]["merges"] == 0 and arms["bpe12"]["merges"] == 12
    for a in arms.values():
        for key in ("tokens_per_image", "train_tokens", "seconds"):
            assert _finite(a[key]) and a[key] > 0, (a["name"], key)
        h = a["heldout"]
        assert _finite(h["answer_loss"]) and 0 <= h["answer_accuracy"] <= 1
        assert set(h["by_type"]) == {"FD", "PD", "RD", "ID"}
        for t in h["by_type"].values():
            assert _finite(t["answer_loss"]) and _finite(t["answer_accuracy"])
        assert set(a["by_model"]) == {"base", "stage1", "stage2", "stage3"}
    assert all(a["stages"][s]["executor"] == "local" for a in arms.values() for s in ("stage1", "stage2", "stage3"))
    assert saved["seed"] == 0 and saved["heldout_keys"] > 0 and saved["train_keys"] > 0
    assert saved["heldout_keys"] + saved["train_keys"] == 60
    # same budget in steps; BPE sequences are shorter, so fewer tokens
    assert arms["vq"]["steps"] == arms["bpe12"]["steps"] == 6
    assert saved["checks"]["equal_steps"] is True
    assert arms["bpe12"]["tokens_per_image"] < arms["vq"]["tokens_per_image"] == 81  # the preset's 36 px: 9 x 9 codes
    assert arms["bpe12"]["train_tokens"] < arms["vq"]["train_tokens"]
    assert 0 <= saved["baselines"]["majority_answer"]["answer_accuracy"] <= 1
    for name in ("ablation.png", "ablation.md"):
        assert os.path.getsize(os.path.join(cfg.out, name)) > 0
    md = open(os.path.join(cfg.out, "ablation.md")).read()
    assert "| VQ only (0 merges) | 81.0 |" in md and "visual BPE, 12 merges" in md and "McNemar p" in md
    (comparison,) = saved["comparisons"]
    assert (comparison["first"], comparison["second"]) == ("vq", "bpe12")
    assert comparison["questions"] == arms["vq"]["heldout"]["answers"] == arms["bpe12"]["heldout"]["answers"]
    assert 0 <= comparison["mcnemar_p"] <= 1 and set(comparison["by_type"]) == {"FD", "PD", "RD", "ID"}
    answers = pq.read_table(os.path.join(arms["bpe12"]["run"], "eval", "stage3.answers.parquet")).to_pydict()
    assert len(answers["correct"]) == arms["bpe12"]["heldout"]["answers"]
    assert sum(answers["correct"]) == round(arms["bpe12"]["heldout"]["answer_accuracy"] * len(answers["correct"]))


def test_heldout_images_never_train_nor_build_the_vocabulary(ablation):
    cfg, result = ablation
    keys = {}
    for arm in result["arms"]:
        data = os.path.join(arm["run"], "data")
        held = set(pq.read_table(os.path.join(data, "heldout.parquet")).column("image").to_pylist())
        train = set(pq.read_table(os.path.join(data, "sequences.parquet")).column("image").to_pylist())
        assert held and train and not held & train
        keys[arm["name"]] = (held, train)
        vocab = json.loads(open(arm["vocab"]).read())
        assert vocab["corpus"]["held_out"] == len(held)  # the learner left out exactly these images
    assert keys["vq"] == keys["bpe12"]
    held = sorted(keys["vq"][0])
    assert (key_hash(held, cfg.heldout_salt) < cfg.heldout_fraction).all()
    assert result["checks"]["heldout_images_excluded_from_vocabulary"] is True


def _vbpe(*args):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env)


def test_train_eval_on_an_arm_reuses_scores_and_refuses_bad_input(ablation, tmp_path):
    cfg, result = ablation
    arm = result["arms"][1]
    train_yaml = os.path.join(arm["run"], "train.yaml")
    before = json.loads(open(os.path.join(arm["run"], "eval", "heldout.json")).read())
    r = _vbpe("train", "eval", "--config", train_yaml, "--stage", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stage3" in r.stdout and "up to date" in r.stderr
    after = json.loads(open(os.path.join(arm["run"], "eval", "heldout.json")).read())
    assert after["models"]["stage3"] == before["models"]["stage3"]

    r = _vbpe("train", "eval", "--config", train_yaml, "--stage", "7")
    assert r.returncode == 2 and "--stage must be one of" in r.stderr and "Traceback" not in r.stderr

    no_heldout = yaml.safe_load(open(train_yaml))
    no_heldout["data"]["heldout_fraction"] = 0.0
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(no_heldout))
    r = _vbpe("train", "eval", "--config", str(path))
    assert r.returncode == 2 and "no held-out set" in r.stderr


def test_rerun_resumes_with_the_same_figures(ablation, ray_local):
    from pipeline.evaluate.ablation import run_ablation

    from pipeline.train.paths import RunPaths

    cfg, first = ablation
    outputs = [RunPaths(a["run"]).done(s) for a in first["arms"] for s in ("stage1", "stage2", "stage3")]
    outputs += [os.path.join(a["run"], "eval", "stage3.answers.parquet") for a in first["arms"]]
    outputs += [os.path.join(cfg.out, "timings.json")] + [a["vocab"] for a in first["arms"]]
    before = {p: os.stat(p).st_mtime_ns for p in outputs}
    again = run_ablation(cfg)
    strip = lambda arms: [{k: v for k, v in a.items() if k != "resumed"} for a in arms]  # noqa: E731
    assert strip(again["arms"]) == strip(first["arms"])  # figures and the seconds each part took when it ran
    assert all(a["resumed"] for a in again["arms"]) and not any(a["resumed"] for a in first["arms"])
    assert again["seconds"]["total"] == first["seconds"]["total"]
    assert {p: os.stat(p).st_mtime_ns for p in outputs} == before  # nothing trained, scored or learned again

    changed = cfg.model_copy(update={"sigma": 2.0})
    with pytest.raises(ConfigError, match="other settings \\(sigma\\)"):
        run_ablation(changed)


def test_cli_refuses_a_bad_config(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("merges: [0]\n")
    r = _vbpe("eval", "ablation", "--config", str(path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "merges > 0" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_section_given_in_part_changes_only_those_preset_fields(tmp_path):
    from pipeline.cli import build_parser
    from pipeline.configargs import config_from_args
    from schemas.evaluate import AblationConfig

    preset = AblationConfig()
    path = tmp_path / "a.yaml"
    path.write_text("stage2: {epochs: 4}\n")
    args = build_parser().parse_args(["eval", "ablation", "--config", str(path), "--images", "40", "--stage1-lr", "0.01"])
    cfg = config_from_args(args)
    assert (cfg.scenes.images, cfg.scenes.image_size) == (40, preset.scenes.image_size)
    assert (cfg.stage1.lr, cfg.stage1.epochs, cfg.stage1.batch_size) == (0.01, preset.stage1.epochs, preset.stage1.batch_size)
    assert (cfg.stage2.epochs, cfg.stage2.lr) == (4, preset.stage2.lr)
    assert cfg.stage3 == preset.stage3 and cfg.workers == preset.workers


def test_report_shows_the_heldout_table_and_plot(ablation, tmp_path):
    cfg, result = ablation
    arm = result["arms"][1]
    heldout = os.path.join(arm["run"], "eval", "heldout.json")
    out = tmp_path / "report"
    r = _vbpe("report", "--vocab", arm["vocab"], "--grids", os.path.join(cfg.out, "codes"), "--out", str(out),
              "--holdout-fraction", "0.5", "--evaluation", heldout, os.path.join(cfg.out, "ablation.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    page = (out / "report.html").read_text()
    assert "Held-out evaluation" in page and "visual BPE, 12 merges" in page and "<td>stage3</td>" in page
    assert (out / "evaluation_0_heldout.png").stat().st_size > 0 and (out / "evaluation_1_ablation.png").stat().st_size > 0
    r = _vbpe("report", "--vocab", arm["vocab"], "--grids", os.path.join(cfg.out, "codes"), "--out", str(out),
              "--evaluation", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "missing.json" in r.stderr


def test_arms_at_once_leave_room_for_the_readers_of_every_running_arm():
    from pipeline.evaluate.ablation import arms_at_once
    from schemas.evaluate import AblationConfig

    preset = AblationConfig()
    assert preset.workers.executor == "auto" and preset.workers.workers == 1  # the CPU preset trains on Ray Train
    assert arms_at_once(preset, {"CPU": 2.0}) == 2  # 0.75 + 0.25 each
    local = AblationConfig.from_dict({"workers": {"executor": "local", "cpus": 1.0}})
    assert arms_at_once(local, {"CPU": 2.0}) == 2  # an arm training here is its one rank, with no readers
    # a whole core per worker: a second arm's workers would take the CPU the first arm's reader needs
    assert arms_at_once(AblationConfig.from_dict({"workers": {"cpus_per_worker": 1.0}}), {"CPU": 2.0}) == 1
    gpu = AblationConfig.from_dict({"workers": {"use_gpu": True, "num_workers": 4, "cpus_per_worker": 4}})
    assert arms_at_once(gpu, {"CPU": 64.0, "GPU": 8.0}) == 2 and arms_at_once(gpu, {"CPU": 64.0}) == 1
