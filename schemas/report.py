"""`vbpe report` config: which vocabulary, which grids (and source shards), how big a sample, what to draw."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import Config, StorageOptions

Resample = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


class ReportConfig(Config):
    vocab: str = Field(description="vocabulary JSON written by `vbpe learn`")
    grids: list[str] = Field(min_length=1, description="code-grid Parquet files, directories or globs")
    out: str = Field(description="directory for atlas.png, report.html, plots, summary.json, metrics.json")
    shards: list[str] = Field(default_factory=list, description="WebDataset tar shards with the source images (exemplar crops)")
    tokenizer: str | None = Field(None, description="a tokenizer directory (`vbpe export`) of this vocabulary: tokens "
                                  "are drawn with their codes' decoded appearance; else one colour per code")
    codebook_size: int | None = Field(None, ge=1, description="only for grids that do not declare vbpe.codebook_size")
    # The held-out sample: grids whose key hashes (with the salt) below `holdout_fraction`.
    holdout_fraction: float = Field(0.1, gt=0.0, le=1.0)
    holdout_salt: str = "vbpe-holdout"
    max_holdout_grids: int = Field(10_000, ge=1, description="keep the grids with the smallest hashes beyond this")
    batch_grids: int = Field(2_000, ge=1, description="grids encoded per batch (bounds memory)")
    # What to draw.
    atlas_tokens: int = Field(48, ge=0, description="most used learned tokens in the atlas")
    exemplars: int = Field(4, ge=0, description="crops per atlas token (needs shards)")
    image_size: int | None = Field(None, ge=8, description="quantizer input side R; default: the quantize manifest, else 512")
    resample: Resample = "bicubic"
    dead_rate_points: int = Field(12, ge=1, description="vocabulary sizes (halving from the full one) at which the dead rate is measured")
    rare_below: int = Field(5, ge=1, description="a token used fewer times than this on the sample counts as rare")
    evaluation: list[str] = Field(default_factory=list, description="held-out results to show: heldout.json of "
                                  "`vbpe train eval` and/or ablation.json of `vbpe eval ablation`")
    storage: StorageOptions = StorageOptions()
