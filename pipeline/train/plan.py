"""`vbpe train plan`: the memory plan of a train config (pipeline/train/memory.py), reading only
`config.json` (and the id layout for the extended vocabulary), never the weights."""
from __future__ import annotations

import json

from pipeline import storage
from pipeline.configargs import load_config
from pipeline.train import memory
from schemas.base import ConfigError
from schemas.layout import IdLayout
from schemas.train import STAGES, TrainConfig


def _read_json(path: str, options) -> dict:
    if not storage.exists(path, options):
        raise ConfigError(f"no model config at {path}")
    return json.loads(storage.read_text(path, options))


def model_shape(cfg: TrainConfig, model_config: str | None = None) -> memory.ModelShape:
    """The model's shape after the vocabulary extension: the source model's config plus the layout's rows."""
    layout_path = cfg.init.layout if cfg.init else storage.join(cfg.model, "layout.yaml")
    opts = cfg.storage
    layout = load_config(IdLayout, layout_path, opts) if storage.exists(layout_path, opts) else None
    if model_config:
        config = _read_json(model_config, opts)
    elif cfg.init:
        config = _read_json(storage.join(cfg.init.source_model, "config.json"), opts)
    else:
        config = _read_json(storage.join(cfg.model, "config.json"), opts)
    if layout is None:
        return memory.ModelShape.from_config(config)
    return memory.ModelShape.from_config(config, vocab=layout.total_size, old_vocab=layout.text_vocab_size)


def memory_plan(cfg: TrainConfig, gpus: int | None = None, gpu_memory_gib: float = 80.0, model_config: str | None = None) -> dict:
    shape = model_shape(cfg, model_config)
    on_gpu = cfg.workers.use_gpu or gpus is not None
    stages = {
        s: {"micro_batch": cfg.stage(s).batch_size, "seq_len": cfg.data.max_length, "precision": cfg.precision,
            "checkpointing": cfg.gradient_checkpointing, "unfreeze_fraction": getattr(cfg.stage(s), "unfreeze_fraction", 0.25)}
        for s in STAGES
    }
    n = gpus or cfg.workers.world_size
    rows = memory.plan_table(shape, stages, n, int(gpu_memory_gib * memory.GIB), on_gpu=on_gpu)
    header = (f"model: {shape.params() / 1e9:.2f} B parameters ({shape.layers} layers, hidden {shape.hidden}, "
              f"vocabulary {shape.old_vocab} -> {shape.vocab}, {'tied' if shape.tied else 'untied'}); "
              f"micro-batch {cfg.stage1.batch_size} x {cfg.data.max_length} tokens, precision {cfg.precision}"
              f"{' (on GPU: bf16-mixed)' if cfg.precision == 'auto' and on_gpu else ''}, activation checkpointing "
              f"{'on' if cfg.gradient_checkpointing else 'off'}")
    text = header + "\n" + memory.render(rows, gpu_memory_gib)
    return {"text": text, "json": {"model": shape.__dict__ | {"parameters": shape.params()}, "gpu_memory_gib": gpu_memory_gib, "rows": rows}}
