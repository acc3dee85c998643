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
    assert vbpe(["train", "init", "--config", str(path)]) == 0 and json.loads(capsys.readouterr().out)["skipped"]
    assert job_main(["--config", str(path), "--stage", "prepare"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["sequences"] == 16 and stats["records"] == 16 and (tmp_path / "run" / "data" / "sequences.parquet").exists()

    path.write_text(yaml.safe_dump({**config, "stage2": {"unfreeze_fraction": 2}}))
    assert vbpe(["train", "stage2", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vbpe train: error: invalid config") and "stage2.unfreeze_fraction" in err and "Traceback" not in err
