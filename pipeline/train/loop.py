"""The training loop of one stage, run by every Ray Train worker or, under the local executor, by this
process as the only rank (world.py is the one place the two differ: rank, world size, device, batches).

The worker loads the stage's base model, splits off what the stage trains (freeze.py), spreads it
over the workers (parallel.py: DDP or FSDP), and trains on the sequences Ray Data streams to it
(stream.py; the local executor reads the same rows in the same order itself). Resume: after a worker failure (Ray Train restarts the worker group) or when the same
stage is run again, the loop restores the newest checkpoint complete on storage (checkpoints.py):
trainable tensors, optimizer state, step and metrics, and continues from the next step. The data
order, the learning rate and the random seed are functions of the step, so a resumed stage ends
exactly where an uninterrupted one would. At the end the workers score the held-out sequences and
rank 0 writes the merged HF model (export.py) and the metrics file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager, Iterator

import numpy as np

from pipeline.train.checkpoints import CheckpointStore
from pipeline.train.job import StageJob

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.train.freeze import StagePlan
    from pipeline.train.world import World

log = logging.getLogger("vbpe.train")

DTYPES = {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}
IGNORE = -100


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


def _load_model(base: str, precision: str, device, gradient_checkpointing: bool, options=None):
    """The model to train (fp32 master weights unless pure bf16) and the dtype its checkpoint was saved in."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from pipeline.storage import local_dir

    hf_logging.disable_progress_bar()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with local_dir(base, options) as d:
        saved_dtype = AutoConfig.from_pretrained(d).dtype or torch.float32
        model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype)
    model.config.use_cache = False
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model.to(device), saved_dtype


def _write_metrics(path: str, rows: list[dict], options=None) -> None:
    from pipeline import storage

    storage.write_text(path, "".join(json.dumps(r) + "\n" for r in rows), options)


@dataclass
class Run:
    """What one worker holds for one stage."""

    job: StageJob
    rank: int
    world: int
    device: "torch.device"
    precision: str  # resolved: fp32 | bf16-mixed | fp16-mixed | bf16
    model: "nn.Module"  # the model being trained (new rows split off in stages 1 and 2; sharded in place by FSDP)
    net: "nn.Module"  # what the forward pass calls: `model`, or its DDP wrapper
    stage_plan: "StagePlan"
    params: list[tuple[str, "nn.Parameter"]]  # the trainable tensors (this rank's shards under FSDP), fixed order
    optimizer: "torch.optim.Optimizer"
    scaler: "torch.amp.GradScaler"
    autocast: ContextManager
    source: "World"  # where this rank's micro-batches come from


def _setup(job: StageJob, world: "World") -> tuple[Run, "torch.dtype"]:
    import torch

    from pipeline.train import parallel
    from pipeline.train.freeze import apply_stage

    rank, size, device = world.rank, world.size, world.device
    precision = _resolve_precision(job.precision, device.type == "cuda")
    if device.type == "cuda" and job.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model, saved_dtype = _load_model(job.base_model, precision, device, job.gradient_checkpointing, job.storage)
    stage_plan = apply_stage(model, job.stage, job.n_old, job.unfreeze_fraction)
    net = parallel.wrap(model, job.strategy, size, device, precision, job.cpu_offload)
    params = stage_plan.trainable()  # after wrapping: FSDP replaces parameters by sharded ones
    fsdp_mixed = job.strategy == "fsdp" and precision == "bf16-mixed"  # FSDP's own policy casts, not autocast
    run = Run(
        job=job, rank=rank, world=size, device=device, precision=precision,
        model=model, net=net, stage_plan=stage_plan, params=params, optimizer=_optimizer(params, job.settings),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed"),
        autocast=(torch.autocast(device.type, dtype=getattr(torch, DTYPES[precision]))
                  if precision in DTYPES and not fsdp_mixed else contextlib.nullcontext()),
        source=world,
    )
    return run, saved_dtype


def _barrier(run: Run) -> None:
    if run.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _resume(run: Run) -> dict:
    """The loop's progress: fresh, or restored from the newest checkpoint complete on storage."""
    from pipeline.train import state as ckpt

    stage, fingerprint = run.job.stage, run.job.fingerprint
    progress = {"step": 0, "metrics": [], "fingerprint": fingerprint, "geometry": run.job.geometry}
    latest = CheckpointStore(run.job.checkpoints, run.job.storage).latest()
    if latest is None:
        return progress
    progress = ckpt.load(latest[1], run.params, run.optimizer, run.job.storage)
    if progress["fingerprint"] != fingerprint:
        raise ValueError(f"the checkpoint of {stage} was made with another config ({progress['fingerprint']} != {fingerprint})")
    if progress["geometry"] != run.job.geometry:
        raise ValueError(f"cannot resume {stage}: checkpoint batch geometry {progress['geometry']} != now "
                         f"{run.job.geometry} (same workers needed)")
    if "scaler" in progress:
        run.scaler.load_state_dict(progress["scaler"])
    log.info("%s: resuming at step %d of %d", stage, progress["step"], run.job.steps)
    return progress


def _step(run: Run, step: int, micro: list[dict]) -> dict:
    """One optimizer step over this rank's micro-batches of the step's global batch; returns its metrics row (same on every rank)."""
    import torch
    import torch.distributed as dist

    from pipeline.train import parallel
    from pipeline.train.loss import token_loss_sum
    from pipeline.train.schedule import lr_at
    from pipeline.train.stream import collate

    settings, device, job = run.job.settings, run.device, run.job
    t0 = time.time()
    torch.manual_seed(job.seed * 1_000_003 + step * 1009 + run.rank)
    lr = lr_at(step, job.steps, settings.lr, settings.schedule, settings.warmup_ratio, settings.min_lr_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    n_targets = int(job.targets[step])
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, non-pad tokens
    for m, batch in enumerate(micro):
        ids, mask, labels = (torch.from_numpy(a).to(device) for a in collate(batch, job.pad_id, IGNORE))
        with parallel.no_sync(run.net, job.strategy, run.world, m == len(micro) - 1):
            with run.autocast:
                logits = run.net(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss = token_loss_sum(logits, labels)
            run.scaler.scale(loss * run.world / max(n_targets, 1)).backward()
        totals[0] += loss.detach().double()
        totals[1] += mask.sum()
        del logits, loss
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in run.params], settings.max_grad_norm or float("inf"))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.world > 1:
        dist.all_reduce(totals)
    dt = time.time() - t0
    job.hooks.after_step(job.stage, step + 1, run.rank, np.concatenate([b["row"] for b in micro]))
    return {
        "stage": job.stage,
        "step": step + 1,
        "loss": float(totals[0]) / max(n_targets, 1),
        "lr": lr,
        "tokens_per_s": float(totals[1]) / dt,
        "tokens": int(totals[1]),
        "target_tokens": n_targets,
        "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
        "samples": (step + 1) * job.geometry["global_batch"],
        "step_s": dt,
    }


def _checkpoint(run: Run, progress: dict) -> str:
    """Every rank writes its shards of this step's checkpoint; it is complete on storage on return."""
    from pipeline.train import state as ckpt

    if run.scaler.is_enabled():
        progress["scaler"] = run.scaler.state_dict()
    store = CheckpointStore(run.job.checkpoints, run.job.storage)
    path = store.save(progress["step"], run.rank, lambda d: ckpt.save(d, run.params, run.optimizer, progress, run.rank),
                      lambda: _barrier(run))
    if run.rank == 0:
        _write_metrics(run.job.steps_path, progress["metrics"], run.job.storage)
        store.prune(run.job.keep_checkpoints)
    run.job.hooks.after_checkpoint(run.job.stage, progress["step"], run.rank)
    return path


def heldout_loss(run: Run, path: str, batch_size: int = 8) -> tuple[float | None, int]:
    """Mean loss per target token on the held-out sequences (all ranks take part; rank r scores rows r, r + W, ...).

    Every rank runs the same number of forward passes (the last ones may be empty), which sharded
    models need; the unwrapped module is used, so DDP's per-forward buffer broadcast is not involved.
    """
    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist

    from pipeline import storage
    from pipeline.train.loss import token_loss_sum
    from pipeline.train.stream import collate, read_rows

    options = run.job.storage
    if not storage.exists(path, options):
        return None, 0
    with storage.open_file(path, options=options) as f:
        n = pq.ParquetFile(f).metadata.num_rows
    if n == 0:
        return None, 0
    mine = np.arange(run.rank, n, run.world)
    n_batches = -(-n // (run.world * batch_size))
    totals = torch.zeros(2, device=run.device, dtype=torch.float64)  # loss sum, target tokens
    was_training = run.model.training
    run.model.eval()
    with torch.no_grad():
        for b in range(n_batches):
            rows = mine[b * batch_size : (b + 1) * batch_size]
            table = read_rows(path, rows if len(rows) else np.zeros(1, np.int64), options)
            batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("input_ids", "labels")}
            ids, mask, labels = (torch.from_numpy(a).to(run.device) for a in collate(batch, run.job.pad_id, IGNORE))
            with run.autocast:
                logits = run.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if len(rows) == 0:
                continue
            loss = token_loss_sum(logits, labels)
            totals[0] += loss.double()
            totals[1] += (labels[:, 1:] != IGNORE).sum()
    run.model.train(was_training)
    if run.world > 1:
        dist.all_reduce(totals)
    count = int(totals[1])
    return (float(totals[0]) / count if count else None), n


def _batches_by_step(run: Run, start: int) -> Iterator[tuple[int, list[dict]]]:
    grad_accum = run.job.geometry["grad_accum"]
    pending: list[dict] = []
    expected = start
    for step, batch in run.source.micro_batches(start, run.job.geometry["batch_size"]):
        if step != expected:
            raise RuntimeError(f"rank {run.rank}: expected data of step {expected}, got step {step}")
        pending.append(batch)
        if len(pending) == grad_accum:
            yield step, pending
            pending, expected = [], step + 1
    if expected != run.job.steps:
        raise RuntimeError(f"rank {run.rank}: the data ended at step {expected} of {run.job.steps}")


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _gather_ints(run: Run, value: int) -> list[int]:
    """`value` of every rank, in rank order."""
    if run.world == 1:
        return [value]
    import torch
    import torch.distributed as dist

    mine = torch.tensor([value], dtype=torch.int64, device=run.device)
    out = [torch.zeros_like(mine) for _ in range(run.world)]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def train_loop(job: StageJob) -> dict:
    """Ray Train's per-worker function for one stage; rank 0 returns the stage summary."""
    from pipeline.train.world import ray_world

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_loop(job, ray_world())


def run_loop(job: StageJob, world: "World") -> dict:
    """One rank's whole stage: resume, train, checkpoint, score the held-out set, export; rank 0 returns the summary."""
    from pipeline.train import parallel
    from pipeline.train.export import save_model

    run, saved_dtype = _setup(job, world)
    progress = _resume(run)
    resumed_from = progress["step"]
    settings, stage, steps = job.settings, job.stage, job.steps
    if resumed_from < job.first_step:
        raise RuntimeError(f"{stage}: the data starts at step {job.first_step} but the newest checkpoint is at {resumed_from}")
    t_start = time.time()
    checkpoint = None
    for step, micro in _batches_by_step(run, resumed_from):
        row = _step(run, step, micro)
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
    full = parallel.full_state_dict(run.model, job.strategy, run.rank)
    peak = _gather_ints(run, _peak_rss())
    if run.rank != 0:
        return {}
    info = {
        "stage": stage,
        "steps": steps,
        "resumed_from_step": resumed_from,
        "strategy": job.strategy,
        "layers_unfrozen": run.stage_plan.layers_unfrozen,
        "trainable_parameters": int(sum(p.numel() for _, p in run.params)),
        "final_loss": progress["metrics"][-1]["loss"] if progress["metrics"] else None,
        "heldout_loss": held,
        "heldout_sequences": n_held,
        "geometry": job.geometry,
        "precision": run.precision,
        "seconds_this_attempt": time.time() - t_start,
        "worker_peak_rss_bytes": peak,
        "checkpoint": checkpoint or CheckpointStore(job.checkpoints, job.storage).path(steps),
    }
    _write_metrics(job.steps_path, progress["metrics"], job.storage)
    save_model(full, job.n_old, saved_dtype, job.base_model, job.output_model, info, job.storage)
    log.info("%s: done (%d steps), model in %s", stage, steps, job.output_model)
    return info
