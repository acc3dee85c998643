"""The train tests' world: a tiny tokenizer, Llamas (tied and untied), a corpus with its layout and
LLaVA-style records of the four categories (plus two bad ones), and the config that trains on them.
Fixtures here are imported by the train test modules."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.train import api, tiny
from schemas.layout import IdLayout
from schemas.train import CATEGORIES, STAGES, TrainConfig
from tests.helpers.train_hooks import shippable


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
        "workers": {"workers": num_workers, "max_failures": 0},
        "gradient_checkpointing": False,
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.from_dict(data)


def weights(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True).state_dict().items()}


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


def run_all(cfg: TrainConfig, hooks=None) -> list[dict]:
    """init, stage1, stage2, stage3 summaries of `vbpe train all`."""
    summary = api.run(cfg, "all", hooks=hooks)
    return [summary.results["init"]] + [summary.results[s] for s in STAGES]


def stage_models(cfg: TrainConfig) -> list[str]:
    return [cfg.model] + [os.path.join(cfg.output, s, "model") for s in STAGES]


