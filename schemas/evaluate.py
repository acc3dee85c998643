"""Config of `vbpe eval ablation`. The defaults are the CPU preset: the whole ablation in minutes on 2 cores.

To run it bigger (a GPU cluster): more and larger scenes (`scenes.images`, `scenes.image_size`), a
real VQ-GAN (`quantizer: {kind: taming|chameleon, ...}`), a real LLM (`llm.source: /models/...`),
more merges (`merges: [1024, 8192]`), the authors' stage settings (`stage1..3`, see schemas/train.py)
and `workers: {workers: 8, use_gpu: true}`.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.base import Config, StorageOptions
from schemas.quantize import QuantizerConfig
from schemas.scenes import SceneSpec
from schemas.train import Stage1Config, Stage2Config, Stage3Config, WorkersConfig


class KMeansPreset(Config):
    """The k-means patch quantizer fitted on the generated corpus (used when `quantizer` is not given)."""

    patch_size: int = Field(4, ge=1)
    codebook_size: int = Field(256, ge=2)
    fit_images: int = Field(2000, ge=1)
    fit_patches: int = Field(60_000, ge=1)
    fit_iterations: int = Field(15, ge=1)


class TinyLLM(Config):
    """A small Llama built on the spot (nothing is downloaded), with a word-level tokenizer over the scenes'
    words. A short text-only warm-up on the training conversations (images removed) gives it what a real
    LLM brings: the language and the answers' priors, so the stages measure what the image adds."""

    hidden_size: int = Field(64, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    intermediate_size: int | None = Field(None, ge=8, description="default: 2 x hidden_size")
    max_positions: int = Field(1024, ge=16)
    warmup_steps: int = Field(300, ge=0, description="text-only warm-up steps (0: a randomly initialised model)")
    warmup_lr: float = Field(3e-3, gt=0)
    warmup_batch: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _heads(self) -> "TinyLLM":
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must divide by heads {self.heads}, "
                             f"and heads by kv_heads {self.kv_heads}")
        return self


class LLMConfig(Config):
    source: str = Field("tiny", description="'tiny' (built locally, see `tiny`) or a local HF causal-LM directory")
    tiny: TinyLLM = TinyLLM()
    init_rule: Literal["he", "mean", "normal"] = Field("he", description="new rows: He-initialised, as the authors did")


PRESET_SECTIONS = ("scenes", "stage1", "stage2", "stage3", "workers")  # sections whose preset differs from their defaults


class AblationConfig(Config):
    out: str = Field("ablation-out", description="run directory (local or s3://); a re-run resumes what is there")
    seed: int = Field(0, description="seeds the corpus (unless scenes.seed is given), the models and the curriculum")
    scenes: SceneSpec = SceneSpec(images=3000, image_size=36)
    quantizer: QuantizerConfig | None = Field(None, description="default: k-means fitted on the scenes (`kmeans`)")
    kmeans: KMeansPreset = KMeansPreset()
    merges: list[int] = Field([256], min_length=1, description="visual-BPE arms; the VQ-only arm (0 merges) always runs")
    alpha_rel: float | None = Field(None, ge=0, description="the learner's alpha_rel (default: the learner's)")
    sigma: float = Field(1.0, gt=0)
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="images set aside (same hash for the learner and train)")
    heldout_salt: str = "vbpe-holdout"
    budgets: list[Literal["steps", "tokens"]] = Field(
        ["steps", "tokens"], min_length=1,
        description="steps: every arm runs the same optimizer steps; tokens: each BPE arm also runs with as many "
                    "training tokens as the VQ-only arm (more steps, as its sequences are shorter)",
    )
    llm: LLMConfig = LLMConfig()
    # A tiny model from scratch wants larger steps than the authors' 8B settings (schemas/train.py); the
    # mixtures are the authors'.
    stage1: Stage1Config = Stage1Config(lr=3e-3, epochs=1.0, batch_size=16, grad_accum=1, warmup_ratio=0.05,
                                        checkpoint_every=100_000, log_every=100)
    stage2: Stage2Config = Stage2Config(lr=1e-3, epochs=2.0, batch_size=16, grad_accum=1, warmup_ratio=0.05,
                                        checkpoint_every=100_000, log_every=100)
    stage3: Stage3Config = Stage3Config(lr=1e-3, epochs=3.0, batch_size=16, grad_accum=1, warmup_ratio=0.05,
                                        checkpoint_every=100_000, log_every=100)
    max_length: int = Field(1024, gt=2)
    # 0.75 + 0.25 (the reader streaming each worker's sequences): two arms side by side on 2 cores
    workers: WorkersConfig = WorkersConfig(workers=1, cpus=0.75, data_cpus=0.25, max_failures=1, keep_checkpoints=1)
    precision: Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    eval_batch_size: int = Field(64, ge=1)
    parallel_arms: bool = Field(True, description="train the arms side by side (each a Ray task driving its Ray Train runs)")
    storage: StorageOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _sections_onto_preset(cls, data: Any) -> Any:
        """A section given in part (`scenes: {images: 500}`, `--stage1-epochs 2`) changes those fields of the
        preset, not the preset back to the section's own defaults."""
        if isinstance(data, dict):
            data = dict(data)
            for name in PRESET_SECTIONS:
                given = data.get(name)
                if isinstance(given, dict):
                    preset = cls.model_fields[name].default
                    if hasattr(preset, "canonical"):  # old field names given onto the preset's new ones
                        given = preset.canonical(given)
                    data[name] = {**preset.model_dump(exclude_unset=True), **given}
        return data

    @field_validator("merges")
    @classmethod
    def _positive_distinct(cls, v: list[int]) -> list[int]:
        if any(m <= 0 for m in v):
            raise ValueError("BPE arms need merges > 0 (the 0-merge arm is always run)")
        if len(set(v)) != len(v):
            raise ValueError("merges has duplicates")
        return sorted(v)

    @model_validator(mode="after")
    def _seed_scenes(self) -> "AblationConfig":
        if "seed" not in self.scenes.model_fields_set and self.scenes.seed != self.seed:
            self.scenes = self.scenes.model_copy(update={"seed": self.seed})
        return self
