"""The training loop each Ray Train worker runs for one stage.

Resume: after a worker failure (Ray Train restarts the worker group) or when the same stage is run
again, the loop restores the newest checkpoint complete on storage (pipeline/train/checkpoints.py):
trainable tensors, optimizer state, step and metrics, and continues from the next step. The sample order, the learning rate and the random seed are pure
functions of the step, so a resumed stage follows the same trajectory as an uninterrupted one.
At the end rank 0 writes the merged HF model (safetensors) and the metrics file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager

import numpy as np

from pipeline.train.checkpoints import CheckpointStore
from pipeline.train.job import StageJob

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.train.batches import Geometry, Sequences
    from pipeline.train.freeze import StagePlan

log = logging.getLogger("vbpe.train")

DTYPES = {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}


def _resolve_precision(precision: str, on_gpu: bool) -> str:
    if precision == "auto":
        return "bf16-mixed" if on_gpu else "fp32"
    return precision


def _optimizer(params: list[tuple[str, "nn.Parameter"]], settings) -> "torch.optim.Optimizer":
    import torch

    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps)


def _load_model(base: str, precision: str, device, gradient_checkpointing: bool):
    """The model to train (fp32 master weights unless pure bf16) and the dtype its checkpoint was saved in."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from pipeline.storage import local_dir

    hf_logging.disable_progress_bar()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with local_dir(base) as d:
        saved_dtype = AutoConfig.from_pretrained(d).dtype or torch.float32
        model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype)
    model.config.use_cache = False
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model.to(device), saved_dtype


def _save_final(model, dtype, base: str, dest: str, info: dict) -> None:
    """Saved in the base model's dtype (as HF checkpoints are), ready for inference (KV cache on)."""
    from transformers import AutoTokenizer

    from pipeline.storage import local_dir, put_dir as publish_dir

    model.config.use_cache = True
    if model.is_activation_checkpointing:
        model.activation_checkpointing_disable()
    with tempfile.TemporaryDirectory(prefix="vbpe-final-") as tmp:
        model.to(dtype).save_pretrained(tmp)
        with local_dir(base) as d:
            AutoTokenizer.from_pretrained(d).save_pretrained(tmp)
            for extra in ("layout.yaml", "vbpe_init.json"):
                if os.path.exists(os.path.join(d, extra)):
                    with open(os.path.join(d, extra)) as src, open(os.path.join(tmp, extra), "w") as dst:
                        dst.write(src.read())
        with open(os.path.join(tmp, "vbpe_stage.json"), "w") as f:
            json.dump(info, f, indent=1)
        publish_dir(tmp, dest)


def _write_metrics(path: str, rows: list[dict]) -> None:
    from pipeline import storage

    storage.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


@dataclass
class Run:
    """What one worker holds for one stage."""

    job: StageJob
    rank: int
    world: int
    device: "torch.device"
    precision: str  # resolved: fp32 | bf16-mixed | fp16-mixed | bf16
    seqs: "Sequences"
    geo: "Geometry"
    model: "nn.Module"  # the model being trained (new rows split off in stages 1 and 2)
    net: "nn.Module"  # what the forward pass calls: `model`, or its DDP wrapper
    stage_plan: "StagePlan"
    params: list[tuple[str, "nn.Parameter"]]  # the trainable tensors, in a fixed order
    optimizer: "torch.optim.Optimizer"
    scaler: "torch.amp.GradScaler"
    autocast: ContextManager


def _setup(job: StageJob) -> tuple[Run, "torch.dtype"]:
    import ray.train
    import ray.train.torch
    import torch

    from pipeline import storage
    from pipeline.train.batches import Geometry, Sequences
    from pipeline.train.freeze import apply_stage

    if job.storage:
        storage.set_default_storage(job.storage)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = _resolve_precision(job.precision, device.type == "cuda")
    if device.type == "cuda" and job.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    settings = job.settings
    model, saved_dtype = _load_model(job.base_model, precision, device, job.gradient_checkpointing)
    stage_plan = apply_stage(model, job.stage, job.n_old, job.unfreeze_fraction)
    params = stage_plan.trainable()
    net = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    run = Run(
        job=job, rank=rank, world=world, device=device, precision=precision,
        seqs=Sequences.read(job.sequences),
        geo=Geometry.of(len(job.plan), settings.batch_size, settings.grad_accum, world, settings.max_steps),
        model=model, net=net, stage_plan=stage_plan, params=params, optimizer=_optimizer(params, settings),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed"),
        autocast=torch.autocast(device.type, dtype=getattr(torch, DTYPES[precision])) if precision in DTYPES else contextlib.nullcontext(),
    )
    return run, saved_dtype


def _geometry(run: Run) -> dict:
    return {"global_batch": run.geo.global_batch, "steps": run.geo.steps, "world_size": run.world, "plan": len(run.job.plan)}


def _barrier(run: Run) -> None:
    if run.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _resume(run: Run) -> dict:
    """The loop's progress: fresh, or restored from the newest checkpoint complete on storage."""
    from pipeline.train import state as ckpt
    from pipeline.storage import local_dir

    stage, fingerprint = run.job.stage, run.job.fingerprint
    progress = {"step": 0, "metrics": [], "fingerprint": fingerprint, "geometry": _geometry(run)}
    latest = CheckpointStore(run.job.checkpoints).latest()
    if latest is None:
        return progress
    with local_dir(latest[1]) as d:
        progress = ckpt.load(d, run.params, run.optimizer)
    if progress["fingerprint"] != fingerprint:
        raise ValueError(f"the checkpoint of {stage} was made with another config ({progress['fingerprint']} != {fingerprint})")
    if progress["geometry"] != _geometry(run):
        raise ValueError(f"cannot resume {stage}: checkpoint batch geometry {progress['geometry']} != now {_geometry(run)} (same num_workers needed)")
    if "scaler" in progress:
        run.scaler.load_state_dict(progress["scaler"])
    log.info("%s: resuming at step %d of %d", stage, progress["step"], run.geo.steps)
    return progress


def _step(run: Run, step: int) -> dict:
    """One optimizer step over this step's global batch; returns its metrics row (same on every rank)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from pipeline.train.batches import global_batch, worker_micro_batches
    from pipeline.train.schedule import lr_at

    settings, device = run.job.settings, run.device
    t0 = time.time()
    torch.manual_seed(run.job.seed * 1_000_003 + step * 1009 + run.rank)
    lr = lr_at(step, run.geo.steps, settings.lr, settings.schedule, settings.warmup_ratio, settings.min_lr_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    rows = global_batch(run.job.plan, step, run.geo)
    n_targets = int(run.seqs.targets[rows].sum())
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, non-pad tokens
    micro = worker_micro_batches(rows, run.seqs, run.geo, run.rank)
    for m, mb in enumerate(micro):
        ids, mask, labels = (torch.from_numpy(a).to(device) for a in run.seqs.collate(mb, run.job.pad_id))
        last = m == len(micro) - 1
        with contextlib.nullcontext() if last or run.world == 1 else run.net.no_sync():
            with run.autocast:
                logits = run.net(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
            run.scaler.scale(loss * run.world / max(n_targets, 1)).backward()
        totals[0] += loss.detach().double()
        totals[1] += mask.sum()
        del logits, loss
    run.scaler.unscale_(run.optimizer)
    trainable = [p for _, p in run.params]
    max_norm = settings.max_grad_norm or float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.world > 1:
        dist.all_reduce(totals)
    dt = time.time() - t0
    run.job.hooks.after_step(run.job.stage, step + 1, run.rank, np.concatenate(micro))
    return {
        "stage": run.job.stage,
        "step": step + 1,
        "loss": float(totals[0]) / max(n_targets, 1),
        "lr": lr,
        "tokens_per_s": float(totals[1]) / dt,
        "tokens": int(totals[1]),
        "target_tokens": n_targets,
        "grad_norm": float(grad_norm),
        "samples": (step + 1) * run.geo.global_batch,
        "step_s": dt,
    }


def _checkpoint(run: Run, progress: dict) -> str:
    """Every rank: write this step's checkpoint (rank 0 holds all of it under DDP), complete on storage on return."""
    from pipeline.train import state as ckpt

    if run.scaler.is_enabled():
        progress["scaler"] = run.scaler.state_dict()
    store = CheckpointStore(run.job.checkpoints)

    def write(directory: str) -> None:
        if run.rank == 0:
            ckpt.save(directory, run.params, run.optimizer, progress)

    path = store.save(progress["step"], run.rank, write, lambda: _barrier(run))
    if run.rank == 0:
        _write_metrics(run.job.steps_path, progress["metrics"])
        store.prune(run.job.keep_checkpoints)
    run.job.hooks.after_checkpoint(run.job.stage, progress["step"], run.rank)
    return path


def heldout_loss(run: Run, path: str, batch_size: int = 8) -> tuple[float | None, int]:
    """Mean loss per target token on the held-out sequences (all ranks take part; rank r scores rows r, r + W, ...).

    Every rank runs the same number of forward passes (the last ones may be empty), which sharded
    models need; the unwrapped module is used, so DDP's per-forward buffer broadcast is not involved.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from pipeline import storage
    from pipeline.train.batches import Sequences

    if not storage.exists(path):
        return None, 0
    seqs = Sequences.read(path)
    if len(seqs) == 0:
        return None, 0
    mine = np.arange(run.rank, len(seqs), run.world)
    n_batches = -(-len(seqs) // (run.world * batch_size))
    totals = torch.zeros(2, device=run.device, dtype=torch.float64)  # loss sum, target tokens
    was_training = run.model.training
    run.model.eval()
    with torch.no_grad():
        for b in range(n_batches):
            rows = mine[b * batch_size : (b + 1) * batch_size]
            dummy = len(rows) == 0
            ids, mask, labels = (torch.from_numpy(a).to(run.device) for a in seqs.collate(rows if not dummy else [0], run.job.pad_id))
            with run.autocast:
                logits = run.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if dummy:
                continue
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
            totals[0] += loss.double()
            totals[1] += (labels[:, 1:] != -100).sum()
    run.model.train(was_training)
    if run.world > 1:
        dist.all_reduce(totals)
    count = int(totals[1])
    return (float(totals[0]) / count if count else None), len(seqs)


def train_loop(job: StageJob) -> dict:
    """Ray Train's per-worker function for one stage; rank 0 returns the stage summary."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run, saved_dtype = _setup(job)
    progress = _resume(run)
    resumed_from = progress["step"]
    settings, stage, steps = job.settings, job.stage, run.geo.steps
    t_start = time.time()
    checkpoint = None
    for step in range(progress["step"], steps):
        row = _step(run, step)
        progress["metrics"].append(row)
        progress["step"] = step + 1
        if run.rank == 0 and ((step + 1) % settings.log_every == 0 or step + 1 == steps):
            log.info(
                "%s step %d/%d loss %.4f lr %.3g tokens/s %.0f grad_norm %.3g",
                stage, step + 1, steps, row["loss"], row["lr"], row["tokens_per_s"], row["grad_norm"],
            )
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == steps:
            checkpoint = _checkpoint(run, progress)

    held, n_held = heldout_loss(run, job.heldout) if job.heldout else (None, 0)
    if run.rank == 0 and held is not None:
        log.info("%s: held-out loss %.4f on %d sequences", stage, held, n_held)
    if run.rank != 0:
        return {}
    info = {
        "stage": stage,
        "steps": steps,
        "resumed_from_step": resumed_from,
        "layers_unfrozen": run.stage_plan.layers_unfrozen,
        "trainable_parameters": int(sum(p.numel() for _, p in run.params)),
        "final_loss": progress["metrics"][-1]["loss"] if progress["metrics"] else None,
        "heldout_loss": held,
        "heldout_sequences": n_held,
        "geometry": _geometry(run),
        "precision": run.precision,
        "seconds_this_attempt": time.time() - t_start,
        "checkpoint": checkpoint or CheckpointStore(job.checkpoints).path(steps),
    }
    _write_metrics(job.steps_path, progress["metrics"])
    _save_final(run.stage_plan.merge(), saved_dtype, job.base_model, job.output_model, info)
    log.info("%s: done (%d steps), model in %s", stage, steps, job.output_model)
    return info
