"""The training loop each Ray Train worker runs for one stage.

Resume: Ray hands back the last reported checkpoint (after a worker failure, or when the same
stage is run again); the loop restores its trainable tensors, optimizer state, step and metrics
and continues from the next step. The sample order, the learning rate and the random seed are pure
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

import numpy as np

log = logging.getLogger("vbpe.train")

DTYPES = {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}


def _resolve_precision(precision: str, on_gpu: bool) -> str:
    if precision == "auto":
        return "bf16-mixed" if on_gpu else "fp32"
    return precision


def _optimizer(params, scfg: dict):
    import torch

    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": scfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=scfg["lr"], betas=tuple(scfg["betas"]), eps=scfg["eps"])


def _load_model(base: str, precision: str, device, gradient_checkpointing: bool):
    """The model to train (fp32 master weights unless pure bf16) and the dtype its checkpoint was saved in."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from pipeline.train.files import local_dir

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

    from pipeline.train.files import local_dir, publish_dir

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


def train_loop(cfg: dict) -> dict:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from pipeline import storage
    from pipeline.train import state as ckpt
    from pipeline.train.batches import Geometry, Sequences, global_batch, worker_micro_batches
    from pipeline.train.freeze import apply_stage
    from pipeline.train.schedule import lr_at
    from schemas.base import StorageOptions

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.get("storage"):
        storage.set_default_storage(StorageOptions(**cfg["storage"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    precision = _resolve_precision(cfg["precision"], on_gpu)
    if on_gpu and cfg["tf32"]:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    scfg, stage = cfg["stage_cfg"], cfg["stage"]

    seqs = Sequences.read(cfg["sequences"])
    plan = np.asarray(cfg["plan"], np.int64)
    geo = Geometry.of(len(plan), scfg["batch_size"], scfg["grad_accum"], world, scfg.get("max_steps"))
    model, saved_dtype = _load_model(cfg["base_model"], precision, device, cfg["gradient_checkpointing"])
    stage_plan = apply_stage(model, stage, cfg["n_old"], scfg.get("unfreeze_fraction", 0.25))
    params = stage_plan.trainable()
    optimizer = _optimizer(params, scfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed")
    geometry = {"global_batch": geo.global_batch, "steps": geo.steps, "world_size": world, "plan": len(plan)}

    progress = {"step": 0, "metrics": [], "fingerprint": cfg["fingerprint"], "geometry": geometry}
    resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            progress = ckpt.load(d, params, optimizer)
        if progress["fingerprint"] != cfg["fingerprint"]:
            raise ValueError(f"the checkpoint of {stage} was made with another config ({progress['fingerprint']} != {cfg['fingerprint']})")
        if progress["geometry"] != geometry:
            raise ValueError(f"cannot resume {stage}: checkpoint batch geometry {progress['geometry']} != now {geometry} (same num_workers needed)")
        if "scaler" in progress:
            scaler.load_state_dict(progress["scaler"])
        resumed_from = progress["step"]
        log.info("%s: resuming at step %d of %d", stage, resumed_from, geo.steps)

    net = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    autocast = (
        torch.autocast(device.type, dtype=getattr(torch, DTYPES[precision]))
        if precision in DTYPES
        else contextlib.nullcontext()
    )
    chaos = cfg.get("chaos") or {}
    t_start = time.time()
    for step in range(progress["step"], geo.steps):
        t0 = time.time()
        torch.manual_seed(cfg["seed"] * 1_000_003 + step * 1009 + rank)
        lr = lr_at(step, geo.steps, scfg["lr"], scfg["schedule"], scfg["warmup_ratio"], scfg["min_lr_ratio"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = global_batch(plan, step, geo)
        n_targets = int(seqs.targets[rows].sum())
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        n_tokens = torch.zeros((), device=device, dtype=torch.float64)
        micro = worker_micro_batches(rows, seqs, geo, rank)
        for m, mb in enumerate(micro):
            ids, mask, labels = (torch.from_numpy(a).to(device) for a in seqs.collate(mb, cfg["pad_id"]))
            sync = m == len(micro) - 1 or world == 1
            with contextlib.nullcontext() if sync else net.no_sync():
                with autocast:
                    logits = net(input_ids=ids, attention_mask=mask, use_cache=False).logits
                token_loss = F.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
                )
                scaler.scale(token_loss * world / max(n_targets, 1)).backward()
            loss_sum += token_loss.detach().double()
            n_tokens += mask.sum()
            del logits, token_loss
        scaler.unscale_(optimizer)
        trainable = [p for _, p in params]
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(trainable, scfg["max_grad_norm"])
            if scfg["max_grad_norm"]
            else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainable if p.grad is not None]))
        )
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            totals = torch.stack([loss_sum, n_tokens])
            dist.all_reduce(totals)
            loss_sum, n_tokens = totals[0], totals[1]
        dt = time.time() - t0
        row = {
            "stage": stage,
            "step": step + 1,
            "loss": float(loss_sum) / max(n_targets, 1),
            "lr": lr,
            "tokens_per_s": float(n_tokens) / dt,
            "tokens": int(n_tokens),
            "target_tokens": n_targets,
            "grad_norm": float(grad_norm),
            "samples": (step + 1) * geo.global_batch,
            "step_s": dt,
        }
        progress["metrics"].append(row)
        progress["step"] = step + 1
        if rank == 0 and ((step + 1) % scfg["log_every"] == 0 or step + 1 == geo.steps):
            log.info(
                "%s step %d/%d loss %.4f lr %.3g tokens/s %.0f grad_norm %.3g",
                stage, step + 1, geo.steps, row["loss"], lr, row["tokens_per_s"], row["grad_norm"],
            )
        if (step + 1) % scfg["checkpoint_every"] == 0 or step + 1 == geo.steps:
            if scaler.is_enabled():
                progress["scaler"] = scaler.state_dict()
            with tempfile.TemporaryDirectory(prefix="vbpe-ckpt-") as d:
                if rank == 0:
                    ckpt.save(d, params, optimizer, progress)
                    _write_metrics(cfg["metrics_path"], progress["metrics"])
                report = {"step": step + 1, "loss": row["loss"]}
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)
            if chaos.get("crash_after_step") == step + 1 and rank == chaos.get("rank", 0) and not os.path.exists(chaos["marker"]):
                open(chaos["marker"], "w").close()
                log.warning("%s: simulated worker crash after step %d", stage, step + 1)
                os._exit(1)

    if rank != 0:
        return {}
    final = stage_plan.merge()
    info = {
        "stage": stage,
        "steps": geo.steps,
        "resumed_from_step": resumed_from,
        "layers_unfrozen": stage_plan.layers_unfrozen,
        "trainable_parameters": int(sum(p.numel() for _, p in params)),
        "final_loss": progress["metrics"][-1]["loss"] if progress["metrics"] else None,
        "geometry": geometry,
        "precision": precision,
        "seconds_this_attempt": time.time() - t_start,
    }
    _write_metrics(cfg["metrics_path"], progress["metrics"])
    _save_final(final, saved_dtype, cfg["base_model"], cfg["output_model"], info)
    log.info("%s: done (%d steps), model in %s", stage, geo.steps, cfg["output_model"])
    return info
