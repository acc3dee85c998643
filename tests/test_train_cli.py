"""`vbpe train init|prepare` and `python -m jobs.train` from a YAML config (no Ray needed for these steps)."""
from __future__ import annotations

import json

import yaml

from jobs.train import main as job_main
from pipeline.cli import main as vbpe
from pipeline.train import tiny
from schemas.layout import IdLayout
from schemas.train import CATEGORIES


def test_init_and_prepare_from_yaml(tmp_path, capsys):
    tok = tiny.build_tokenizer(str(tmp_path / "tok"))
    tiny.build_model(str(tmp_path / "src"), len(tok), layers=2)
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=16, num_merges=8)
    keys = tiny.write_corpus(str(tmp_path / "corpus" / "p.parquet"), layout, 4)
    tiny.write_conversations(str(tmp_path / "conv" / "c.jsonl"), keys, list(CATEGORIES))
    config = {
        "model": str(tmp_path / "base"),
        "output": str(tmp_path / "run"),
        "init": {"source_model": str(tmp_path / "src"), "tokenizer": str(tmp_path / "tok"), "layout": str(tmp_path / "corpus" / "layout.yaml"), "rule": "he"},
        "data": {"conversations": [{"path": str(tmp_path / "conv")}], "corpus": [str(tmp_path / "corpus")], "image_key": "stem"},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))

    assert vbpe(["train", "init", "--config", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rule"] == "he" and out["total_size"] == layout.total_size
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())  # the same runner as jobs.train
    assert metrics["stage"] == "train" and metrics["status"] == "ok"
    assert vbpe(["train", "init", "--config", str(path)]) == 0 and json.loads(capsys.readouterr().out)["skipped"]
    assert job_main(["--config", str(path), "--stage", "prepare"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["sequences"] == 16 and stats["records"] == 16 and (tmp_path / "run" / "data" / "sequences.parquet").exists()

    path.write_text(yaml.safe_dump({**config, "stage2": {"unfreeze_fraction": 2}}))
    assert vbpe(["train", "stage2", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vbpe train: error: invalid config") and "stage2.unfreeze_fraction" in err and "Traceback" not in err

    path.write_text(yaml.safe_dump({**config, "workers": {"executor": "local"}, "stage3": {"strategy": "fsdp"}}))
    assert vbpe(["train", "all", "--config", str(path)]) == 2  # refused before anything runs
    err = capsys.readouterr().err
    assert err.startswith("vbpe train: error: executor: local is one rank, and strategy: fsdp shards over several (stage3)")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run" / "stage1").exists()

    path.write_text(yaml.safe_dump({**config, "workers": {"workers": 0}, "stage1": {"max_steps": 2, "checkpoint_every": 1}}))
    assert vbpe(["train", "stage1", "--config", str(path)]) == 0  # workers: 0 trains here, without Ray
    out = json.loads(capsys.readouterr().out)
    assert out["executor"] == "local" and out["steps"] == 2 and out["geometry"]["world_size"] == 1
    assert (tmp_path / "run" / "stage1" / "model" / "model.safetensors").exists()


def test_plan_reads_the_model_config_only(tmp_path, capsys):
    """`vbpe train plan` needs config.json and the layout, no weights, and names what fits."""
    tok = tiny.build_tokenizer(str(tmp_path / "tok"))
    tiny.build_model(str(tmp_path / "src"), len(tok), layers=2)
    (tmp_path / "src" / "model.safetensors").unlink()  # no weights anywhere
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=16, num_merges=8)
    (tmp_path / "layout.yaml").write_text(layout.to_yaml())
    config = {
        "model": str(tmp_path / "base"), "output": str(tmp_path / "run"),
        "init": {"source_model": str(tmp_path / "src"), "layout": str(tmp_path / "layout.yaml")},
        "data": {"conversations": [{"path": "c.jsonl"}], "corpus": ["t"], "max_length": 128},
        "stage3": {"strategy": "fsdp"}, "workers": {"num_workers": 2},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    assert vbpe(["train", "plan", "--config", str(path), "--gpu-memory", "1"]) == 0
    text = capsys.readouterr().out
    assert "stage3  fsdp+offload" in text and f"vocabulary {len(tok)} -> {layout.total_size}" in text
    assert vbpe(["train", "plan", "--config", str(path), "--json", "--gpus", "4"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {(r["stage"], r["strategy"]) for r in rows} == {(s, k) for s in ("stage1", "stage2", "stage3") for k in ("ddp", "fsdp", "fsdp+offload")}
    assert all(r["gpus"] == 4 and r["fits"] and r["min_gpus"] == 1 for r in rows)
    fsdp = {r["stage"]: r for r in rows if r["strategy"] == "fsdp"}
    assert fsdp["stage1"]["trainable"] < fsdp["stage2"]["trainable"] < fsdp["stage3"]["trainable"]
