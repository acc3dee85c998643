"""Config of `vbpe train` (init + three curriculum stages) and the Arrow schema of prepared sequences.

Defaults follow the authors' released scripts (Being-VL-0.5): per-device batch 1, gradient
accumulation 2/4/4, epochs 2/3/3, learning rates 1e-3/3e-5/5e-5, cosine, 3% warmup, no weight
decay, bf16, gradient checkpointing. Mixtures follow the paper (FD/PD/RD/ID).
"""
from __future__ import annotations

from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from schemas.base import Config, ExecutionOptions, StorageOptions

CATEGORIES = ("foundation", "perception", "reasoning", "instruction")
CATEGORY_ALIASES = {"fd": "foundation", "pd": "perception", "rd": "reasoning", "id": "instruction"}
STAGES = ("stage1", "stage2", "stage3")

Category = Literal["foundation", "perception", "reasoning", "instruction"]

# What `prepare` writes: one training sequence per accepted conversation record.
SEQUENCES_SCHEMA = pa.schema(
    [
        pa.field("record", pa.string(), nullable=False),  # the record's id (or source:row)
        pa.field("category", pa.string(), nullable=False),
        pa.field("image", pa.string()),  # corpus key of the first image, null for text-only records
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),  # -100 where no loss
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("n_labels", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("images", pa.list_(pa.string()), nullable=False),  # every image key of the record, in order
        pa.field("n_targets", pa.int32(), nullable=False),  # labels some position predicts (the loss's token count)
    ]
)


class Mixture(Config):
    """Relative weights of the four categories in one stage (normalised, need not sum to 1)."""

    foundation: float = Field(0.0, ge=0)
    perception: float = Field(0.0, ge=0)
    reasoning: float = Field(0.0, ge=0)
    instruction: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> "Mixture":
        if sum(self.weights().values()) <= 0:
            raise ValueError("at least one category needs a positive weight")
        return self

    def weights(self) -> dict[str, float]:
        return {c: float(getattr(self, c)) for c in CATEGORIES}

    def normalised(self) -> dict[str, float]:
        w = self.weights()
        total = sum(w.values())
        return {c: v / total for c, v in w.items()}


class StageConfig(Config):
    lr: float = Field(gt=0)
    mixture: Mixture
    epochs: float = Field(1.0, gt=0)
    samples: int | None = Field(None, gt=0, description="sequences per epoch; None: as many as the pool gives without repeats")
    max_steps: int | None = Field(None, gt=0, description="at most this many optimizer steps; the schedule spans the steps actually run")
    batch_size: int = Field(1, gt=0, description="sequences per worker per micro-step")
    grad_accum: int = Field(1, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every worker holds the whole model; fsdp: parameters, gradients and optimizer state sharded"
    )
    mixture_shift: bool = Field(
        False, description="shift the mixture linearly over the stage, from this stage's at its start to the next stage's at its end"
    )
    checkpoint_every: int = Field(500, gt=0, description="optimizer steps between checkpoints (one more at the end)")
    log_every: int = Field(1, gt=0)


class Stage1Config(StageConfig):
    """Embedding alignment: only the new rows (specials, codes, merges) of input embeddings and head."""

    lr: float = Field(1e-3, gt=0)
    mixture: Mixture = Mixture(foundation=80, perception=20)
    epochs: float = Field(2.0, gt=0)
    grad_accum: int = Field(2, gt=0)


class Stage2Config(StageConfig):
    """Selective fine-tuning: stage 1's rows plus the first `unfreeze_fraction` of transformer layers."""

    lr: float = Field(3e-5, gt=0)
    mixture: Mixture = Mixture(foundation=40, perception=30, reasoning=20, instruction=10)
    epochs: float = Field(3.0, gt=0)
    grad_accum: int = Field(4, gt=0)
    unfreeze_fraction: float = Field(0.25, ge=0, le=1)


class Stage3Config(StageConfig):
    """Full fine-tuning."""

    lr: float = Field(5e-5, gt=0)
    mixture: Mixture = Mixture(foundation=15, perception=15, reasoning=30, instruction=40)
    epochs: float = Field(3.0, gt=0)
    grad_accum: int = Field(4, gt=0)


class ConversationSource(Config):
    """LLaVA-style records (.json list, .jsonl, or .parquet with the same fields)."""

    path: str | list[str]
    category: Category | None = Field(None, description="for records without their own `category` field")

    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class DataConfig(Config):
    conversations: list[ConversationSource] = Field(min_length=1)
    corpus: list[str] = Field(min_length=1, description="tokenized-corpus Parquet files / dirs / globs")
    image_key: Literal["exact", "basename", "stem"] = Field(
        "exact", description="how a record's `image` names a corpus key: as is, its file name, or its file name without extension"
    )
    max_length: int = Field(4096, gt=2)
    overflow: Literal["truncate", "drop"] = "truncate"
    image_loss: bool = Field(False, description="also train on the image tokens (the unified objective of VW-LMM)")
    images: Literal["first", "inline"] = Field(
        "first", description="where a record's images go: all before the text, or each at its <image> placeholder"
    )
    heldout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="share of images whose conversations are set aside for evaluation (by a salted hash of the image key)",
    )
    heldout_salt: str = Field(
        "vbpe-holdout", description="salt of that hash; the learner's default, so the same images can be held out of both"
    )


class InitConfig(Config):
    """`vbpe train init`: extend a local HF causal LM by the id layout and write the base model to `TrainConfig.model`."""

    source_model: str
    tokenizer: str | None = Field(None, description="defaults to source_model")
    layout: str = Field(description="layout.yaml (schemas.layout.IdLayout), e.g. next to the tokenized corpus")
    rule: Literal["he", "mean", "normal"] = Field("he", description="how new rows start: he (the authors'), mean, normal")
    noise: float = Field(0.1, ge=0, description="rule 'mean': scale of the per-dimension noise")
    seed: int = 0
    chat_template: str | None = Field(None, description="Jinja chat template when the tokenizer has none (or to replace it)")


class PrepareConfig(ExecutionOptions):
    """Where `prepare` tokenizes records: in this process or as a Ray Data map over actors.

    The execution fields every stage has (schemas.base.ExecutionOptions, same names and meaning): `auto` is
    Ray when `workers` > 0 or a cluster is named (`ray_address`, RAY_ADDRESS), else this process; on Ray,
    `workers` actors of `cpus` each (0: as many as the free CPUs hold) on the cluster at `ray_address`.
    """

    batch_size: int = Field(256, gt=0, description="records per tokenization batch")


class FsdpConfig(Config):
    """Settings of the stages that use `strategy: fsdp`."""

    cpu_offload: bool = Field(False, description="keep parameter, gradient and optimizer shards in host memory between uses")


class WorkersConfig(ExecutionOptions):
    """Where the stages train: the execution fields every stage has (schemas.base.ExecutionOptions, same names and
    meaning) plus train's own.

    executor: `ray` (a Ray Train run of `workers` workers), `local` (this process is the only rank: no Ray Train,
    no Ray Data, no torch.distributed; DDP with one worker), `auto` = Ray when `workers` > 0 or a cluster is
    named (`ray_address`, RAY_ADDRESS), else local. `workers` is the world size (the global batch depends on
    it); `workers: 0` means no Ray Train workers, i.e. local (on Ray it is refused: Ray Train needs a count).
    `cpus`: CPUs per worker (local: the torch threads of the one rank). Old names `num_workers` and
    `cpus_per_worker` are still accepted.
    """

    renamed: ClassVar[dict[str, str]] = {"num_workers": "workers", "cpus_per_worker": "cpus"}

    workers: int = Field(1, ge=0, description="Ray Train workers (the world size); 0: train in this process (local)")
    cpus: float = Field(1.0, gt=0, description="CPUs per worker (local: torch threads)")
    use_gpu: bool = False
    data_cpus: float = Field(
        0.25, ge=0, description="CPUs per Ray Data task reading a worker's sequences (leave this much free beside the workers)"
    )
    gpus_per_worker: float = Field(1.0, ge=0)
    max_failures: int = Field(2, ge=-1, description="automatic restarts from the last checkpoint (Ray); -1 = unlimited")
    keep_checkpoints: int = Field(2, gt=0)

    @property
    def world_size(self) -> int:
        """Ranks a run of these settings has (local: one)."""
        return max(1, self.workers)


class TrainConfig(Config):
    model: str = Field(description="the base model directory written by `vbpe train init` (local or s3://)")
    output: str = Field(description="run directory: prepared data, checkpoints, metrics, stage models (local or s3://)")
    data: DataConfig
    init: InitConfig | None = None
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    stage3: Stage3Config = Stage3Config()
    workers: WorkersConfig = WorkersConfig()
    fsdp: FsdpConfig = FsdpConfig()
    prepare: PrepareConfig = PrepareConfig()
    precision: Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16"] = Field(
        "auto", description="auto: bf16-mixed on GPU (the authors' bf16), fp32 on CPU"
    )
    tf32: bool = True
    gradient_checkpointing: bool = True
    seed: int = 0
    shuffle_block: int = Field(
        1024, gt=0, description="sequences per shuffle block of a category's pool (blocks in random order, each shuffled)"
    )
    storage: StorageOptions | None = None

    @field_validator("output", "model")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/") or v

    @model_validator(mode="after")
    def _fsdp_precision(self) -> "TrainConfig":
        uses = [s for s in STAGES if self.stage(s).strategy == "fsdp"]
        if uses and self.precision == "fp16-mixed":
            raise ValueError(f"precision fp16-mixed needs a gradient scaler FSDP does not support here ({', '.join(uses)} use fsdp); use bf16-mixed")
        return self

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise KeyError(f"unknown stage {name!r}; expected one of {STAGES}")
        return getattr(self, name)

    def shift_target(self, name: str) -> dict[str, float] | None:
        """The mixture a stage shifts toward (the next stage's), when it shifts."""
        i = STAGES.index(name)
        if not self.stage(name).mixture_shift or i + 1 == len(STAGES):
            return None
        return self.stage(STAGES[i + 1]).mixture.weights()
