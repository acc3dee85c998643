"""Driver side: prepare data once, then one Ray Train `TorchTrainer` run per stage.

Run directory (`output`, local or s3://):
  data/                       sequences.parquet, heldout.parquet, sequences.rejects.parquet, stats.json
  ray/<stage>-<fingerprint>/  Ray Train's checkpoints of that stage (resume point)
  <stage>/model/              the stage's final HF model (the next stage's base)
  <stage>/metrics.jsonl       one row per optimizer step
  <stage>/done.json           written last: the stage is complete

A stage's fingerprint covers its config, the prepared data and its base model. A completed stage
with the same fingerprint is skipped; with another fingerprint it is an error (results are never
overwritten). An interrupted stage resumes from its last checkpoint when run again with the same
fingerprint (a changed config starts a new Ray run instead of resuming an incompatible one).
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import time
from typing import Any

import pyarrow.parquet as pq

from pipeline import storage
from pipeline.train.paths import RunPaths
from schemas.base import ConfigError, InputError
from schemas.train import STAGES, TrainConfig

log = logging.getLogger(__name__)
_NOT_IN_FINGERPRINT = {"log_every", "checkpoint_every"}


def stage_dir(cfg: TrainConfig, stage: str) -> str:
    return storage.join(cfg.output, stage)


def base_model(cfg: TrainConfig, stage: str) -> str:
    i = STAGES.index(stage)
    return cfg.model if i == 0 else storage.join(stage_dir(cfg, STAGES[i - 1]), "model")


def _read_json(path: str) -> dict | None:
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def run_init(cfg: TrainConfig, force: bool = False) -> dict:
    from pipeline.train.init import init_base_model

    if cfg.init is None:
        raise ConfigError("the config has no `init` section")
    done = _read_json(storage.join(cfg.model, "vbpe_init.json"))
    if done and not force:
        log.info("base model %s exists; skipping init", cfg.model)
        return {**done, "skipped": True}
    return init_base_model(cfg.init, cfg.model)


def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    from pipeline.train.files import local_dir

    with local_dir(model_dir) as d:
        return AutoTokenizer.from_pretrained(d)


def run_prepare(cfg: TrainConfig) -> dict:
    from pipeline.train.init import read_layout
    from pipeline.train.prepare import prepare

    layout = read_layout(cfg.model)
    return prepare(cfg.data, _tokenizer(cfg.model), layout, RunPaths(cfg.output).data.directory)


def _base_identity(cfg: TrainConfig, stage: str) -> str:
    i = STAGES.index(stage)
    if i > 0:
        prev = _read_json(storage.join(stage_dir(cfg, STAGES[i - 1]), "done.json"))
        if prev is None:
            raise InputError(f"{STAGES[i - 1]} has not completed in {cfg.output}; run it before {stage}")
        return prev["fingerprint"]
    parts = [storage.read_text(storage.join(cfg.model, name)) for name in ("config.json", "layout.yaml", "vbpe_init.json")
             if storage.exists(storage.join(cfg.model, name))]
    if len(parts) < 2:
        raise ConfigError(f"{cfg.model} is not a model written by `vbpe train init` (config.json + layout.yaml needed)")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def stage_fingerprint(cfg: TrainConfig, stage: str, data_fingerprint: str) -> str:
    scfg = cfg.stage(stage).model_dump(mode="json", exclude=_NOT_IN_FINGERPRINT)
    blob = json.dumps([stage, scfg, data_fingerprint, _base_identity(cfg, stage), cfg.precision, cfg.seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ray_storage(cfg: TrainConfig) -> tuple[str, Any]:
    """RunConfig(storage_path, storage_filesystem): S3 with a custom endpoint needs an explicit pyarrow filesystem."""
    path = storage.join(cfg.output, "ray")
    if not storage.is_remote(path):
        os.makedirs(path, exist_ok=True)
        return os.path.abspath(path), None
    opts = cfg.storage
    endpoint = (opts.endpoint_url if opts else None) or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return path, None
    import pyarrow.fs as pafs
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    fs = pafs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme or "https", region=(opts.region if opts else None) or "us-east-1")
    return path.split("://", 1)[1], fs


def run_stage(cfg: TrainConfig, stage: str, chaos: dict | None = None) -> dict:
    """Train one stage on Ray Train (or skip it when already complete). `chaos` injects a worker crash (tests)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.train import curriculum
    from pipeline.train.init import read_layout
    from pipeline.train.loop import train_loop

    if cfg.storage:
        storage.set_default_storage(cfg.storage)
    stats = run_prepare(cfg)
    fingerprint = stage_fingerprint(cfg, stage, stats["fingerprint"])
    done_path = storage.join(stage_dir(cfg, stage), "done.json")
    done = _read_json(done_path)
    if done is not None:
        if done["fingerprint"] != fingerprint:
            raise ConfigError(
                f"{stage} already completed in {cfg.output} with another config or input "
                f"({done['fingerprint']} != {fingerprint}); use a new output directory"
            )
        log.info("%s already complete (%s); skipping", stage, fingerprint)
        return {**done, "skipped": True}

    layout = read_layout(cfg.model)
    scfg = cfg.stage(stage)
    files = RunPaths(cfg.output).data
    sequences = files.sequences
    with storage.open_file(sequences) as f:
        categories = pq.read_table(f, columns=["category"]).column("category").to_numpy(zero_copy_only=False)
    order = curriculum.plan(categories, scfg.mixture.weights(), cfg.seed, STAGES.index(stage) + 1, scfg.epochs, scfg.samples)
    counts = collections.Counter(categories[order].tolist())
    log.info("%s: %d samples planned %s", stage, len(order), dict(counts))

    w = cfg.workers
    resources = {"CPU": w.cpus_per_worker, **({"GPU": w.gpus_per_worker} if w.use_gpu else {})}
    storage_path, storage_fs = _ray_storage(cfg)
    loop_cfg = {
        "stage": stage,
        "stage_cfg": scfg.model_dump(mode="json"),
        "base_model": base_model(cfg, stage),
        "sequences": sequences,
        "heldout": files.heldout,
        "plan": order.tolist(),
        "n_old": layout.text_vocab_size,
        "pad_id": layout.pad_id,
        "precision": cfg.precision,
        "tf32": cfg.tf32,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "seed": cfg.seed,
        "fingerprint": fingerprint,
        "metrics_path": storage.join(stage_dir(cfg, stage), "metrics.jsonl"),
        "output_model": storage.join(stage_dir(cfg, stage), "model"),
        "storage": cfg.storage.model_dump(mode="json") if cfg.storage else None,
        "chaos": chaos,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=w.num_workers, use_gpu=w.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=f"{stage}-{fingerprint}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=w.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=w.keep_checkpoints),
        ),
    )
    t0 = time.time()
    result = trainer.fit()
    info = dict(result.return_value or {})
    summary = {
        **info,
        "stage": stage,
        "fingerprint": fingerprint,
        "base_model": loop_cfg["base_model"],
        "model": loop_cfg["output_model"],
        "metrics": loop_cfg["metrics_path"],
        "samples_planned": len(order),
        "samples_per_category": {c: int(n) for c, n in sorted(counts.items())},
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "fit_seconds": time.time() - t0,
    }
    storage.write_text(done_path, json.dumps(summary, indent=1))
    log.info("%s complete in %.1f s: final loss %s", stage, summary["fit_seconds"], summary.get("final_loss"))
    return summary


def run_all(cfg: TrainConfig) -> list[dict]:
    """init (when configured), then the three stages in order; completed parts are skipped."""
    out = []
    if cfg.init is not None:
        out.append(run_init(cfg))
    for stage in STAGES:
        out.append(run_stage(cfg, stage))
    return out
