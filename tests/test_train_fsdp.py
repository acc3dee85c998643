"""Two workers over gloo on CPU, tiny tied Llama, activation checkpointing: the three stages under FSDP
(`fully_shard`) give the losses of the same global batches trained in one process (the local executor),
and stage 2 under DDP, started from FSDP's stage-1 model, gives FSDP's; FSDP keeps the freezing exact,
every rank sees every sequence exactly as the schedule says (streamed through Ray Data), and a killed
worker and then a killed driver (each right after a sharded checkpoint) resume to the same final weights.
A worker's memory not growing with the data is a target, measured by bench_train's `memory` part; the
streaming that keeps it flat is checked in test_train_data."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.train import curriculum
from pipeline.train.driver import run_stage
from pipeline.train.evaluate import mean_loss
from schemas.train import STAGES
from tests.helpers.train_hooks import RecordBatches
from tests.helpers.train_world import check_freezing, config, fast_ray, inputs, run_all, stage_models, weights  # noqa: F401

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STEPS = 10


def stages(strategy: str, grad_accum: int = 2) -> dict:
    stage = {"samples": 8 * STEPS, "epochs": 1, "strategy": strategy, "checkpoint_every": 4,  # 10 global batches of 8
             "weight_decay": 0.1, "grad_accum": grad_accum}  # weight decay must never reach a frozen row
    return {"stage1": stage, "stage2": stage, "stage3": stage}


def two_workers(inputs, out: str, strategy: str, **extra):
    return config(inputs, out, tied=True, num_workers=2, gradient_checkpointing=True,
                  workers={"cpus_per_worker": 0.75, "max_failures": 1}, **stages(strategy), **extra)


def one_process(inputs, out: str):
    """The same global batches of 8 in this process: 4 micro-batches of 2 where each of 2 ranks has 2."""
    return config(inputs, out, tied=True, gradient_checkpointing=True, workers={"executor": "local"}, **stages("ddp", 4))


def _batches(root):
    (root / "batches").mkdir()
    return RecordBatches(str(root / "batches")), root / "batches"


@pytest.fixture(scope="module")
def runs(fast_ray, inputs, tmp_path_factory):
    """fsdp: the three stages on two Ray Train workers. local: the three stages in one process, the reference.
    ddp: stage 2 on two Ray Train workers, from a copy of the fsdp run (its data and stage-1 model), so it starts
    from the weights FSDP's stage 2 started from. Each: config, summaries, the rows each rank trained on."""
    out = {}
    root = tmp_path_factory.mktemp("fsdp")
    hooks, batches = _batches(root)
    cfg = two_workers(inputs, str(root / "run"), "fsdp")
    out["fsdp"] = (cfg, run_all(cfg, hooks=hooks), batches)

    root = tmp_path_factory.mktemp("local")
    hooks, batches = _batches(root)
    local = one_process(inputs, str(root / "run"))
    out["local"] = (local, run_all(local, hooks=hooks), batches)

    root = tmp_path_factory.mktemp("ddp")
    hooks, batches = _batches(root)
    shutil.copytree(cfg.output, root / "run", ignore=shutil.ignore_patterns("stage2", "stage3", "ray"))
    ddp = two_workers(inputs, str(root / "run"), "ddp")
    out["ddp"] = (ddp, {"stage2": run_stage(ddp, "stage2", hooks=hooks)}, batches)
    return out


def steps_of(summary: dict) -> list[dict]:
    return [json.loads(line) for line in open(summary["metrics"])]


def losses(summary: dict) -> list[float]:
    return [r["loss"] for r in steps_of(summary)]


def test_fsdp_trains_as_one_process_and_as_ddp(runs):
    (_, fsdp, _), (_, one, _), (_, ddp, _) = runs["fsdp"], runs["local"], runs["ddp"]
    for a, b in zip(one[1:], fsdp[1:]):
        assert a["executor"] == "local" and b["executor"] == "ray" and b["strategy"] == "fsdp"
        assert a["steps"] == b["steps"] == STEPS and a["geometry"]["global_batch"] == b["geometry"]["global_batch"] == 8
        la, lb = losses(a), losses(b)
        assert np.allclose(la, lb, rtol=2e-4, atol=0), (a["stage"], la, lb)
        assert lb[-1] < lb[0]
        assert b["heldout_loss"] == pytest.approx(a["heldout_loss"], rel=2e-4)
    a, b = ddp["stage2"], fsdp[2]
    assert a["strategy"] == "ddp" and a["geometry"]["world_size"] == 2 and a["steps"] == b["steps"] == STEPS
    la, lb = losses(a), losses(b)
    assert np.allclose(la, lb, rtol=2e-4, atol=0), (la, lb)
    assert la[-1] < la[0]
    assert b["heldout_loss"] == pytest.approx(a["heldout_loss"], rel=2e-4)


def test_fsdp_keeps_freezing_exact(runs, inputs):
    cfg, summaries, _ = runs["fsdp"]
    _, layout = inputs
    sd = [weights(m) for m in stage_models(cfg)]
    for i, stage in enumerate(STAGES):
        check_freezing(sd[i], sd[i + 1], stage, layout.text_vocab_size, layers=1)
        assert torch.equal(sd[i + 1]["lm_head.weight"], sd[i + 1]["model.embed_tokens.weight"])  # still tied
    assert [s["layers_unfrozen"] for s in summaries[1:]] == [0, 1, 0]
    for model_dir in stage_models(cfg)[1:]:  # exported as safetensors (weights() loads with use_safetensors=True)
        assert not [f for f in os.listdir(model_dir) if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    seqs = os.path.join(cfg.output, "data", "sequences.parquet")
    assert mean_loss(stage_models(cfg)[-1], seqs, layout.pad_id) < mean_loss(cfg.model, seqs, layout.pad_id)
    heldout = os.path.join(cfg.output, "data", "heldout.parquet")  # scored by two ranks, as one process scores it
    assert summaries[-1]["heldout_loss"] == pytest.approx(mean_loss(stage_models(cfg)[-1], heldout, layout.pad_id), rel=1e-4)


def _ranks(batches, stage: str, world: int) -> list[list[dict]]:
    return [[json.loads(line) for line in open(batches / f"{stage}-{r}.jsonl")] for r in range(world)]


def test_every_sequence_is_seen_as_scheduled(runs):
    """The rows each rank trained on, step by step, are exactly the plan's global batches (streamed data); the
    one-process reference trained on the same global batches, and DDP's ranks on the same rows as FSDP's."""
    cfg, summaries, batches = runs["fsdp"]
    categories = pq.read_table(os.path.join(cfg.output, "data", "sequences.parquet")).column("category").to_numpy(zero_copy_only=False)
    for i, (stage, s) in enumerate(zip(STAGES, summaries[1:])):
        scfg = cfg.stage(stage)
        plan = curriculum.plan(categories, scfg.mixture.weights(), cfg.seed, i + 1, scfg.epochs, scfg.samples,
                               shift_to=cfg.shift_target(stage), block=cfg.shuffle_block).rows
        g = s["geometry"]["global_batch"]
        ranks = _ranks(batches, stage, 2)
        assert [[row["step"] for row in rank] for rank in ranks] == [list(range(1, STEPS + 1))] * 2
        for step in range(STEPS):
            want = plan[np.arange(step * g, (step + 1) * g) % len(plan)]
            got = ranks[0][step]["rows"] + ranks[1][step]["rows"]
            assert len(ranks[0][step]["rows"]) == len(ranks[1][step]["rows"]) == g // 2
            assert sorted(got) == sorted(want.tolist()), (stage, step)
        (one,) = _ranks(runs["local"][2], stage, 1)
        assert [sorted(row["rows"]) for row in one] == [sorted(a["rows"] + b["rows"]) for a, b in zip(*ranks)], stage
    assert _ranks(runs["ddp"][2], "stage2", 2) == _ranks(batches, "stage2", 2)


def test_killed_worker_resumes_a_sharded_stage_to_the_same_weights(runs, tmp_path):
    """Stage 3 under FSDP (everything trained, optimizer state sharded), its first attempt in a driver process of
    its own: a worker killed right after the checkpoint of step 4 is restarted by Ray Train, then the driver is
    SIGKILLed right after the checkpoint of step 8. Run again, the stage resumes at step 8, every step is trained
    once on the uninterrupted run's rows, and the stage ends bit for bit where the uninterrupted one did."""
    import signal

    from tests.helpers.killed_driver import run_killed, wait_until_gone

    cfg, summaries, batches = runs["fsdp"]
    copy, seen = tmp_path / "run", tmp_path / "batches"
    shutil.copytree(cfg.output, copy, ignore=shutil.ignore_patterns("stage3", "ray"))
    seen.mkdir()
    again = cfg.model_copy(update={"output": str(copy)})
    marker = str(tmp_path / "crashed")
    first = run_killed(again, "stage3", tmp_path, kill_after=8, crash_step=4, crash_rank=1, marker=marker, batches=str(seen))
    assert first.returncode == -signal.SIGKILL, first.log
    assert os.path.exists(marker)
    wait_until_gone(first.job_id)
    summary = run_stage(again, "stage3", hooks=RecordBatches(str(seen)))
    assert summary["resumed_from_step"] == 8
    assert summary["fingerprint"] == summaries[3]["fingerprint"]
    for rank in range(2):  # steps 1-4, 5-8 (after the worker restart), 9-10 (after the driver's)
        got, want = ([json.loads(line) for line in open(d / f"stage3-{rank}.jsonl")] for d in (seen, batches))
        assert got == want
    ref, got = weights(os.path.join(cfg.output, "stage3", "model")), weights(copy / "stage3" / "model")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    shards = [f for f in os.listdir(os.path.join(summary["checkpoint"])) if f.endswith(".safetensors")]
    assert len(shards) == 2  # one file per rank, nothing gathered
