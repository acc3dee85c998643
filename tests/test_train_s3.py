"""A stage whose base model, run directory and Ray checkpoints all live on S3 (moto server on loopback);
it also runs the authors' defaults for precision (bf16 autocast) and activation checkpointing."""
from __future__ import annotations

import json
import os

import pytest

from pipeline import storage
from pipeline.train import tiny
from pipeline.storage import local_dir, put_dir as publish_dir
from schemas.base import StorageOptions
from tests.helpers.s3 import moto_s3
from schemas.layout import IdLayout
from schemas.train import CATEGORIES, TrainConfig



@pytest.fixture(scope="module")
def s3():
    """Credentials go into the environment before Ray starts so that its workers inherit them; the endpoint
    does not: it reaches every call (driver and workers) only through the config's StorageOptions."""
    with moto_s3("vbpe-train") as endpoint:
        hidden = {k: os.environ.pop(k) for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3") if k in os.environ}
        try:
            yield StorageOptions(endpoint_url=endpoint)
        finally:
            os.environ.update(hidden)


def test_directories_round_trip(s3, tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "a.txt").write_text("a")
    (tmp_path / "src" / "sub" / "b.txt").write_text("b")
    for _ in range(2):  # publishing twice replaces, never nests
        publish_dir(str(tmp_path / "src"), "s3://vbpe-train/dir", s3)
    with local_dir("s3://vbpe-train/dir", s3) as d:
        assert sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs) == ["a.txt", "sub/b.txt"]
    with pytest.raises(FileNotFoundError):
        with local_dir("s3://vbpe-train/nothing", s3):
            pass


@pytest.mark.ray
@pytest.mark.slow
def test_stage_on_s3(s3, ray_local, tmp_path, monkeypatch):
    from pipeline.train.driver import run_init, run_stage

    tok = tiny.build_tokenizer(str(tmp_path / "tok"))
    tiny.build_model(str(tmp_path / "src"), len(tok), layers=2)
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=16, num_merges=8)
    keys = tiny.write_corpus(str(tmp_path / "corpus" / "p.parquet"), layout, 8)
    tiny.write_conversations(str(tmp_path / "conv" / "c.jsonl"), keys, list(CATEGORIES[:2]))
    cfg = TrainConfig.from_dict({
        "model": "s3://vbpe-train/base",
        "output": "s3://vbpe-train/run",
        "init": {"source_model": str(tmp_path / "src"), "tokenizer": str(tmp_path / "tok"), "layout": str(tmp_path / "corpus" / "layout.yaml")},
        "data": {"conversations": [{"path": str(tmp_path / "conv")}], "corpus": [str(tmp_path / "corpus")], "image_key": "stem"},
        "stage1": {"lr": 1e-2, "epochs": 1, "batch_size": 2, "grad_accum": 1, "checkpoint_every": 2},
        "workers": {"max_failures": 0},
        "precision": "bf16-mixed",
        "storage": s3.model_dump(),
    })
    assert "AWS_ENDPOINT_URL" not in os.environ  # the moto endpoint is known only to the config's storage options
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # read when the trainer starts
    run_init(cfg)
    summary = run_stage(cfg, "stage1")
    assert summary["steps"] == 5 and summary["precision"] == "bf16-mixed" and summary["checkpoint"].startswith("s3://vbpe-train/run/ray/stage1-")
    fs, _ = storage.get_fs("s3://vbpe-train", s3)
    files = set(fs.find("vbpe-train/run"))
    assert {"vbpe-train/run/stage1/model/model.safetensors", "vbpe-train/run/stage1/done.json", "vbpe-train/run/data/sequences.parquet"} <= files
    shards = [f for f in files if "/checkpoint-step-" in f and f.endswith(".safetensors")]
    assert shards and any(f.endswith("/COMPLETE.json") for f in files)
    rows = storage.read_text("s3://vbpe-train/run/stage1/metrics.jsonl", s3).splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert run_stage(cfg, "stage1")["skipped"]


def test_sharded_checkpoint_loads_straight_from_s3(s3, tmp_path):
    """A checkpoint in torch.distributed.checkpoint's safetensors format is read from S3 by byte range
    (no local copy) into the same tensors, optimizer state included."""
    import torch

    from pipeline.train import state as ckpt
    from pipeline.train.freeze import apply_stage

    tok = tiny.build_tokenizer(str(tmp_path / "tok"))
    model = tiny.build_model(str(tmp_path / "src"), len(tok), layers=2)
    params = apply_stage(model, "stage2", len(tok) - 4).trainable()
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-2)
    model(input_ids=torch.randint(0, len(tok), (2, 9)), labels=torch.randint(0, len(tok), (2, 9))).loss.backward()
    opt.step()
    ckpt.save(str(tmp_path / "ckpt"), params, opt, {"step": 1}, rank=0)
    fs, _ = storage.get_fs("s3://vbpe-train", s3)
    for name in os.listdir(tmp_path / "ckpt"):
        fs.put_file(str(tmp_path / "ckpt" / name), f"vbpe-train/ckpt/{name}")
    other = tiny.build_model(str(tmp_path / "src2"), len(tok), layers=2, seed=1)
    params2 = apply_stage(other, "stage2", len(tok) - 4).trainable()
    opt2 = torch.optim.AdamW([p for _, p in params2], lr=1e-2)
    assert ckpt.load("s3://vbpe-train/ckpt", params2, opt2, s3) == {"step": 1}
    for (name, a), (_, b) in zip(params, params2):
        assert torch.equal(a, b), name
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[a][key], opt2.state[b][key]), (name, key)
