"""`vbpe train eval`: score the base model and every completed stage of a run on its held-out set.

Results go to `<output>/eval/heldout.json`, one entry per model (`base`, `stage1`, ...), each with
the overall and per-type figures of `scoring.score`, the model's identity (the stage's fingerprint,
or the base model's) and the prepared data's fingerprint. An entry whose model and data are
unchanged is reused, so re-running after another stage only scores the new model. The run itself is
recorded in `<output>/eval/metrics.json` (pipeline.metrics).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow.parquet as pq

from pipeline import storage
from pipeline.metrics import StageMetrics
from schemas.base import ConfigError, InputError, StorageOptions
from schemas.train import STAGES, TrainConfig

log = logging.getLogger(__name__)
MODELS = ("base", *STAGES)
FORMAT = "vbpe.heldout.v1"


def model_name(stage: str | int | None) -> str | None:
    """--stage accepts 0..3 (0 = the base model), base, stage1..stage3."""
    if stage is None:
        return None
    s = str(stage).strip().lower()
    if s.isdigit() and int(s) < len(MODELS):
        return MODELS[int(s)]
    if s in MODELS:
        return s
    raise ConfigError(f"--stage must be one of 0, 1, 2, 3 (0 = the base model) or {', '.join(MODELS)}; got {stage!r}")


def results_path(output: str) -> str:
    return storage.join(output, "eval", "heldout.json")


def answers_path(output: str, model: str) -> str:
    """Every held-out answer of one model: record, category, turn, gold, predicted, correct."""
    return storage.join(output, "eval", f"{model}.answers.parquet")


def _write_answers(path: str, detail: dict, options: StorageOptions | None) -> None:
    import pyarrow as pa

    table = pa.table({"record": pa.array(detail["record"], pa.string()), "category": pa.array(detail["category"], pa.string()),
                      "turn": pa.array(detail["turn"], pa.int32()), "gold": pa.array(detail["gold"], pa.string()),
                      "predicted": pa.array(detail["predicted"], pa.string()), "correct": pa.array(detail["correct"], pa.bool_())})
    with storage.open_file(path, "wb", options) as f:
        pq.write_table(table, f)


def read_answers(output: str, model: str, options: StorageOptions | None = None) -> dict[tuple[str, int], tuple[str, bool]]:
    """(record, turn) -> (category, correct), for paired comparisons of runs on the same held-out records."""
    with storage.open_file(answers_path(output, model), options=options) as f:
        t = pq.read_table(f, columns=["record", "turn", "correct", "category"]).to_pydict()
    return {(r, k): (cat, bool(c)) for r, k, c, cat in zip(t["record"], t["turn"], t["correct"], t["category"])}


def _read_json(path: str, options: StorageOptions | None) -> dict | None:
    return json.loads(storage.read_text(path, options)) if storage.exists(path, options) else None


def _targets(cfg: TrainConfig, only: str | None) -> list[tuple[str, str, str]]:
    """(name, model directory, identity) of each model to score: the base model and the completed stages."""
    from pipeline.train.paths import RunPaths
    from pipeline.train.driver import _base_identity

    paths = RunPaths(cfg.output)
    out = []
    for name in MODELS:
        if only is not None and name != only:
            continue
        if name == "base":
            out.append((name, cfg.model, "base-" + _base_identity(cfg, STAGES[0])))
            continue
        done = _read_json(paths.done(name), cfg.storage)
        if done is None:
            if only is not None:
                raise InputError(f"{name} has not completed in {cfg.output}; train it before evaluating it")
            continue
        out.append((name, paths.model(name), done["fingerprint"]))
    return out


def score_model(model_dir: str, table, layout, batch_size: int, device, options: StorageOptions | None = None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from pipeline.evaluate.scoring import score
    hf_logging.disable_progress_bar()
    with storage.local_dir(model_dir, options) as d:
        tokenizer = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(device).eval()
    model.generation_config.use_cache = True
    return score(model, tokenizer, table, pad_id=layout.pad_id, end_image_id=layout.end_image_id,
                 batch_size=batch_size, device=device)


def _score_on_gpu(model_dir: str, heldout: str, layout: dict, batch_size: int, storage_options: dict | None) -> dict:
    """A Ray task holding one GPU: training's GPUs are free again once a stage has finished."""
    from schemas.layout import IdLayout

    options = StorageOptions(**storage_options) if storage_options else None
    with storage.open_file(heldout, options=options) as f:
        table = pq.read_table(f)
    return score_model(model_dir, table, IdLayout(**layout), batch_size, "cuda", options)


def _score(cfg: TrainConfig, model_dir: str, heldout: str, table, layout, batch_size: int) -> dict:
    if not cfg.workers.use_gpu:
        return score_model(model_dir, table, layout, batch_size, "cpu", cfg.storage)
    import ray

    from pipeline.execution import ensure_ray

    ensure_ray(None)
    task = ray.remote(num_gpus=1, num_cpus=1, max_retries=0)(_score_on_gpu)
    opts = cfg.storage.model_dump(mode="json") if cfg.storage else None
    return ray.get(task.remote(model_dir, heldout, layout.model_dump(mode="json"), batch_size, opts))


def run_eval(cfg: TrainConfig, stage: str | int | None = None, batch_size: int = 32, force: bool = False) -> dict:
    """Score the run's models on its held-out set; returns the whole results file."""
    from pipeline.train.init import read_layout
    from pipeline.train.paths import RunPaths
    from pipeline.train.driver import run_prepare

    only = model_name(stage)
    if cfg.data.heldout_fraction <= 0:
        raise ConfigError("the run has no held-out set: set data.heldout_fraction (e.g. 0.1) and prepare again "
                          "(a new output directory, since the training sequences change)")
    stats = run_prepare(cfg)
    files = RunPaths(cfg.output).data
    with storage.open_file(files.heldout, options=cfg.storage) as f:
        table = pq.read_table(f)
    if table.num_rows == 0:
        raise InputError(f"{files.heldout} is empty: no image fell into the held-out fraction "
                         f"{cfg.data.heldout_fraction}; raise it")
    layout = read_layout(cfg.model, cfg.storage)
    targets = _targets(cfg, only)
    path = results_path(cfg.output)
    old = _read_json(path, cfg.storage) or {}
    same_data = old.get("data_fingerprint") == stats["fingerprint"]
    models = dict(old.get("models", {})) if same_data else {}
    scored = []
    with StageMetrics("eval", storage.join(cfg.output, "eval", "metrics.json"), storage_options=cfg.storage) as metrics:
        for name, model_dir, identity in targets:
            prev = models.get(name)
            if prev and prev.get("identity") == identity and not force and storage.exists(answers_path(cfg.output, name), cfg.storage):
                log.info("%s: held-out figures up to date", name)
                continue
            t0 = time.time()
            result = _score(cfg, model_dir, files.heldout, table, layout, batch_size)
            _write_answers(answers_path(cfg.output, name), result.pop("detail"), cfg.storage)
            models[name] = {"model": model_dir, "identity": identity, "seconds": round(time.time() - t0, 2), **result}
            scored.append(name)
            log.info("%s: held-out answer loss %s, accuracy %s (%d answers)", name, result["answer_loss"],
                     result["answer_accuracy"], result["answers"])
        metrics.add(rows_in=table.num_rows, rows_out=table.num_rows)
        metrics.set(models=[t[0] for t in targets])
    out = {
        "format": FORMAT,
        "heldout": files.heldout,
        "data_fingerprint": stats["fingerprint"],
        "heldout_sequences": table.num_rows,
        "heldout_images": stats.get("heldout_images"),
        "heldout_fraction": cfg.data.heldout_fraction,
        "models": {n: models[n] for n in MODELS if n in models},
    }
    storage.write_text(path, json.dumps(out, indent=1) + "\n", cfg.storage)
    return {**out, "scored": scored}
