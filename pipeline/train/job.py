"""What the driver hands every Ray Train worker for one stage: a typed, immutable job description.

The driver resolves everything that needs the whole picture (fingerprints, paths, the sample
plan, the id layout) once; a worker only reads this object. `Hooks` is the loop's extension point
(observe batches, act after a checkpoint); the default does nothing. Tests inject subclasses
to kill a worker at a chosen moment or to record what each rank saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from schemas.base import StorageOptions
from schemas.train import StageConfig


class Hooks:
    """Called by every rank of the loop; must not change what the loop computes."""

    def after_step(self, stage: str, step: int, rank: int, records: np.ndarray) -> None:
        """After optimizer step `step` (1-based); `records` are the rows of the sequences this rank trained on."""

    def after_checkpoint(self, stage: str, step: int, rank: int) -> None:
        """After the checkpoint of step `step` is complete on storage, before Ray Train is told about it."""


@dataclass(frozen=True)
class StageJob:
    stage: str  # stage1 | stage2 | stage3
    settings: StageConfig
    fingerprint: str  # the stage's identity: config, prepared data, base model, precision, seed
    base_model: str  # HF model directory the stage starts from
    output_model: str  # where the merged final model goes
    sequences: str  # prepared training sequences (Parquet); workers read theirs through Ray Data (stream.py)
    heldout: str | None  # held-out sequences scored at the end, or None
    steps: int  # optimizer steps in the stage
    targets: np.ndarray  # per step: target tokens of the global batch (the loss normaliser)
    geometry: dict  # batch_size, grad_accum, world_size, global_batch, steps, plan: must match to resume
    first_step: int  # the step the workers' datasets start at
    strategy: str  # ddp | fsdp
    cpu_offload: bool
    n_old: int  # ids below this are the model's original vocabulary
    pad_id: int
    precision: str  # auto | fp32 | bf16-mixed | fp16-mixed | bf16
    tf32: bool
    gradient_checkpointing: bool
    seed: int
    steps_path: str  # metrics.jsonl: one row per optimizer step
    checkpoints: str  # root of the stage's checkpoints (pipeline.train.checkpoints.CheckpointStore)
    keep_checkpoints: int
    storage: StorageOptions | None = None
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def unfreeze_fraction(self) -> float:
        return float(getattr(self.settings, "unfreeze_fraction", 0.0))
