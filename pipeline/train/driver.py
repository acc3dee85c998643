"""Driver side: prepare data once, then one fit per stage (a Ray Train run, or local: executors.py).

The run directory's files are named in `pipeline/train/paths.py`. Preparation and every stage
record their run metrics (`pipeline.metrics.StageMetrics`) next to their outputs.

A stage's fingerprint covers its config, the prepared data and its base model. A completed stage
with the same fingerprint is skipped; with another fingerprint it is an error (results are never
overwritten). An interrupted stage resumes from its last checkpoint when run again with the same
fingerprint (a changed config starts a new Ray run instead of resuming an incompatible one).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.metrics import StageMetrics
from pipeline.train.job import Hooks, StageJob
from pipeline.train.paths import RunPaths
from schemas.base import ConfigError, InputError, StorageOptions
from schemas.train import STAGES, TrainConfig

log = logging.getLogger(__name__)
_NOT_IN_FINGERPRINT = {"log_every", "checkpoint_every"}


def base_model(cfg: TrainConfig, stage: str) -> str:
    i = STAGES.index(stage)
    return cfg.model if i == 0 else RunPaths(cfg.output).model(STAGES[i - 1])


def _read_json(path: str, options: StorageOptions | None) -> dict | None:
    return json.loads(storage.read_text(path, options)) if storage.exists(path, options) else None


def run_init(cfg: TrainConfig, force: bool = False) -> dict:
    from pipeline.train.init import init_base_model

    if cfg.init is None:
        raise ConfigError("the config has no `init` section")
    done = _read_json(storage.join(cfg.model, "vbpe_init.json"), cfg.storage)
    if done and not force:
        log.info("base model %s exists; skipping init", cfg.model)
        return {**done, "skipped": True}
    return init_base_model(cfg.init, cfg.model, cfg.storage)


def _tokenizer(model_dir: str, options: StorageOptions | None):
    from transformers import AutoTokenizer

    from pipeline.storage import local_dir

    with local_dir(model_dir, options) as d:
        return AutoTokenizer.from_pretrained(d)


def _refuse_stale_stages(cfg: TrainConfig, fingerprint: str) -> None:
    """New inputs must not replace the data that completed stages were trained on."""
    paths = RunPaths(cfg.output)
    old = _read_json(paths.data.stats, cfg.storage)
    if old is None or old.get("fingerprint") == fingerprint:
        return
    done = [s for s in STAGES if storage.exists(paths.done(s), cfg.storage)]
    if done:
        raise InputError(
            f"the training inputs changed (prepared data {old.get('fingerprint')}, inputs now {fingerprint}) but "
            f"{', '.join(done)} already completed on the old data in {cfg.output}; use a new output directory "
            f"(or remove {paths.stage(done[0])} and later stages to retrain them)"
        )


def run_prepare(cfg: TrainConfig) -> dict:
    from pipeline.train.init import read_layout
    from pipeline.train.prepare import inputs_fingerprint, prepare

    layout = read_layout(cfg.model, cfg.storage)
    tokenizer = _tokenizer(cfg.model, cfg.storage)
    fingerprint = inputs_fingerprint(cfg.data, layout, tokenizer, cfg.storage)
    _refuse_stale_stages(cfg, fingerprint)
    files = RunPaths(cfg.output).data
    with StageMetrics("train.prepare", files.metrics, storage_options=cfg.storage) as m:
        stats = prepare(cfg.data, tokenizer, layout, files.directory, fingerprint, cfg.prepare, _absolute(cfg.model),
                        cfg.storage)
        m.add(rows_in=stats["records"], rows_out=stats["sequences"] + stats["heldout"], rows_rejected=stats["rejected"])
        m.set(sequences=stats["sequences"], heldout=stats["heldout"], reject_reasons=stats["reject_reasons"],
              reused=bool(stats.get("reused")))
    return stats


def _base_identity(cfg: TrainConfig, stage: str) -> str:
    i = STAGES.index(stage)
    if i > 0:
        prev = _read_json(RunPaths(cfg.output).done(STAGES[i - 1]), cfg.storage)
        if prev is None:
            raise InputError(f"{STAGES[i - 1]} has not completed in {cfg.output}; run it before {stage}")
        return prev["fingerprint"]
    parts = [storage.read_text(storage.join(cfg.model, name), cfg.storage)
             for name in ("config.json", "layout.yaml", "vbpe_init.json") if storage.exists(storage.join(cfg.model, name), cfg.storage)]
    if len(parts) < 2:
        raise ConfigError(f"{cfg.model} is not a model written by `vbpe train init` (config.json + layout.yaml needed)")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def stage_fingerprint(cfg: TrainConfig, stage: str, data_fingerprint: str) -> str:
    scfg = cfg.stage(stage).model_dump(mode="json", exclude=_NOT_IN_FINGERPRINT)
    plan = [cfg.shift_target(stage), cfg.shuffle_block]
    blob = json.dumps([stage, scfg, data_fingerprint, _base_identity(cfg, stage), cfg.precision, cfg.seed, plan], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_stage(cfg: TrainConfig, stage: str, hooks: Hooks | None = None, stats: dict | None = None) -> dict:
    """Train one stage (or skip it when already complete).

    `stats`: what run_prepare returned for this config (else it runs here); `hooks` reach into the
    worker loop (tests).
    """
    paths = RunPaths(cfg.output)
    stats = stats or run_prepare(cfg)
    fingerprint = stage_fingerprint(cfg, stage, stats["fingerprint"])
    done = _read_json(paths.done(stage), cfg.storage)
    if done is not None:
        if done["fingerprint"] != fingerprint:
            raise ConfigError(
                f"{stage} already completed in {cfg.output} with another config or input "
                f"({done['fingerprint']} != {fingerprint}); use a new output directory"
            )
        log.info("%s already complete (%s); skipping", stage, fingerprint)
        return {**done, "skipped": True}
    with StageMetrics(f"train.{stage}", paths.stage_metrics(stage), storage_options=cfg.storage) as m:
        summary = _fit(cfg, stage, fingerprint, hooks or Hooks())
        m.add(rows_in=summary["samples_consumed"], rows_out=summary["samples_consumed"])  # samples trained on
        m.set(**{k: summary[k] for k in ("samples_planned", "steps", "final_loss", "heldout_loss", "resumed_from_step",
                                         "fit_seconds")})
    return summary


def _absolute(path: str) -> str:
    """Workers run in another directory: local paths reach them absolute."""
    return path if storage.is_remote(path) else os.path.abspath(path)


def _job(cfg: TrainConfig, stage: str, fingerprint: str, schedule: dict, hooks: Hooks) -> StageJob:
    from pipeline.train.init import read_layout

    paths = RunPaths(_absolute(cfg.output))
    layout = read_layout(cfg.model, cfg.storage)
    settings = cfg.stage(stage)
    return StageJob(
        stage=stage, settings=settings, fingerprint=fingerprint,
        base_model=_absolute(base_model(cfg, stage)), output_model=paths.model(stage),
        sequences=paths.data.sequences, heldout=paths.data.heldout, **schedule,
        strategy=settings.strategy, cpu_offload=cfg.fsdp.cpu_offload,
        n_old=layout.text_vocab_size, pad_id=layout.pad_id,
        precision=cfg.precision, tf32=cfg.tf32, gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed,
        steps_path=paths.steps(stage), checkpoints=checkpoint_root(cfg, stage, fingerprint),
        keep_checkpoints=cfg.workers.keep_checkpoints, storage=cfg.storage, hooks=hooks,
    )


def checkpoint_root(cfg: TrainConfig, stage: str, fingerprint: str) -> str:
    return storage.join(RunPaths(_absolute(cfg.output)).ray, f"{stage}-{fingerprint}")


def _fit(cfg: TrainConfig, stage: str, fingerprint: str, hooks: Hooks) -> dict:
    from pipeline.train import curriculum, executors, stream
    from pipeline.train.batches import Geometry
    from pipeline.train.checkpoints import CheckpointStore

    paths = RunPaths(cfg.output)
    scfg, w = cfg.stage(stage), cfg.workers
    mode = executors.executor(cfg, (stage,))
    with storage.open_file(paths.data.sequences, options=cfg.storage) as f:
        columns = pq.read_table(f, columns=["category", "n_tokens", "n_targets"])
    categories = columns.column("category").to_numpy(zero_copy_only=False)
    plan = curriculum.plan(categories, scfg.mixture.weights(), cfg.seed, STAGES.index(stage) + 1, scfg.epochs,
                           scfg.samples, shift_to=cfg.shift_target(stage), block=cfg.shuffle_block)
    log.info("%s: %d samples planned %s (executor %s)", stage, len(plan), plan.counts(), mode)
    geo = Geometry.of(len(plan), scfg.batch_size, scfg.grad_accum, w.world_size, scfg.max_steps)
    assignment = stream.assign(plan.rows, columns.column("n_tokens").to_numpy(), columns.column("n_targets").to_numpy(),
                               scfg.batch_size, scfg.grad_accum, w.world_size, geo.steps)
    latest = CheckpointStore(checkpoint_root(cfg, stage, fingerprint), cfg.storage).latest()
    first_step = latest[0] if latest else 0
    geometry = {"batch_size": geo.batch_size, "grad_accum": geo.grad_accum, "world_size": geo.world_size,
                "global_batch": geo.global_batch, "steps": geo.steps, "plan": len(plan)}
    if first_step:
        _check_resumable(stage, latest[1], geometry, cfg.storage)
        log.info("%s: resuming from the checkpoint of step %d (%s)", stage, first_step, latest[1])
    job = _job(cfg, stage, fingerprint, {"steps": geo.steps, "targets": assignment.targets, "geometry": geometry,
                                         "first_step": first_step}, hooks)
    t0 = time.time()
    if mode == "local":
        info = executors.fit_local(cfg, job, assignment, first_step)
    else:
        info = executors.fit_ray(cfg, f"{stage}-{fingerprint}", job, assignment, first_step)
    consumed = np.arange(info["steps"] * info["geometry"]["global_batch"]) % len(plan)  # the last batch wraps around
    summary = {
        **info,
        "stage": stage,
        "executor": mode,
        "fingerprint": fingerprint,
        "base_model": job.base_model,
        "model": job.output_model,
        "metrics": job.steps_path,
        "samples_planned": len(plan),
        "samples_consumed": int(len(consumed)),
        "samples_per_category": plan.counts(),
        "consumed_per_category": plan.counts(consumed),
        "fit_seconds": time.time() - t0,
    }
    storage.write_text(paths.done(stage), json.dumps(summary, indent=1), cfg.storage)
    log.info("%s complete in %.1f s: final loss %s", stage, summary["fit_seconds"], summary.get("final_loss"))
    return summary


def _check_resumable(stage: str, checkpoint: str, geometry: dict, options: StorageOptions | None) -> None:
    """Before any worker starts: a checkpoint made with another batch geometry (e.g. another worker count) cannot resume."""
    from pipeline.train.state import read_state

    saved = read_state(checkpoint, options).get("geometry")
    if saved is not None and saved != geometry:
        raise ConfigError(f"cannot resume {stage} from {checkpoint}: it was trained with world size {saved.get('world_size')} "
                          f"(global batch {saved.get('global_batch')}), now {geometry['world_size']} "
                          f"({geometry['global_batch']}); use the same workers, or a new output directory")
