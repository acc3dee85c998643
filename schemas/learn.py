"""Config of `vbpe learn` / `python -m jobs.learn`."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.base import JobConfig

DEFAULT_ALPHA_REL = 0.01


class LearnConfig(JobConfig):
    """The stage's workers are Ray actors holding the grids (`workers`, `cpus` each; `actor_cpus` is the old name)."""

    inputs: list[str] = Field(min_length=1, description="code-grid Parquet files, directories, globs or s3:// URLs")
    out: str = Field(description="vocabulary JSON to write")
    merges: int = Field(8192, ge=0, description="merges to learn (Being-VL found 8K the best trade-off)")
    alpha: float | None = Field(None, ge=0, allow_inf_nan=False, description="weight of spatial consistency S, in count units")
    alpha_rel: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description=f"alpha as a share of the largest initial pair count (default {DEFAULT_ALPHA_REL} when alpha is not given)",
    )
    sigma: float = Field(1.0, gt=0, allow_inf_nan=False, description="width of the Gaussian kernel over offsets, in cells")
    min_frequency: int = Field(2, ge=1)
    codebook_size: int | None = Field(None, ge=1, description="V; overrides the files' vbpe.codebook_size")
    transport: Literal["mesh", "graph", "calls", "relay"] = Field(
        "mesh", description="how the actors exchange a merge's deltas and candidates: direct TCP connections between "
                            "them, many merges per driver call (mesh, default); a compiled Ray graph per merge (graph); "
                            "actor calls passing deltas actor to actor (calls) or relaying them through the driver (relay)")
    restarts: int = Field(2, ge=0, description="times lost Ray workers are restarted from the last checkpoint")
    checkpoint_dir: str | None = Field(None, description="default: <out>.checkpoint")
    checkpoint_every: int = Field(1000, ge=0, description="merges between checkpoints; 0 = none")
    resume: bool | Literal["auto"] = Field(
        False, description="continue from the checkpoint: true refuses one of other inputs or settings; auto then learns "
                           "afresh (a scheduled learn over a growing corpus)")
    rejects: str | None = Field(None, description="rejected rows Parquet; default: <out>.rejects.parquet")
    holdout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, allow_inf_nan=False,
        description="grids left out of learning, chosen by a salted hash of their key (the report's held-out sample)",
    )
    holdout_salt: str = "vbpe-holdout"
    shard_cells: int = Field(1 << 24, ge=1024, description="cells per in-process shard (bounds temporary memory)")
    progress: bool = True

    @model_validator(mode="after")
    def _one_alpha(self) -> "LearnConfig":
        if self.alpha is not None and self.alpha_rel is not None:
            raise ValueError("give alpha or alpha_rel, not both")
        return self

    @field_validator("out")
    @classmethod
    def _json(cls, v: str) -> str:
        if not v.endswith(".json"):
            raise ValueError("the vocabulary is a .json file")
        return v

    @property
    def effective_alpha_rel(self) -> float | None:
        if self.alpha is not None:
            return None
        return DEFAULT_ALPHA_REL if self.alpha_rel is None else self.alpha_rel

    @property
    def actor_cpus(self) -> float:
        return self.cpus

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint_dir or self.out[: -len(".json")] + ".checkpoint"

    @property
    def rejects_path(self) -> str:
        return self.rejects or self.out[: -len(".json")] + ".rejects.parquet"
