"""`vbpe tokenize` config: which grids (or image shards), which vocabulary, which id layout, where to write.

Validated before any work: the CLI builds one of these from its flags, `jobs.tokenize` loads one
from YAML, and both call `pipeline.tokenize.api.run`.
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from schemas.base import JobConfig
from schemas.layout import IdLayout
from schemas.quantize import QuantizeOptions

SHARDS_NEED_QUANTIZER = (
    "image-shard input needs the quantizer that turns images into codes: `quantize: {quantizer: {kind: ...}}` in "
    "the config, or --quantizer Q.yaml"
)

InputKind = Literal["auto", "grids", "shards"]


class TokenizeConfig(JobConfig):
    """The stage's workers are its tokenize tasks: one per grid file, or per batch of encoded images.

    `cpus_per_task` is the old name of `cpus`.
    """

    inputs: list[str] = Field(min_length=1, description="code-grid Parquet or WebDataset tar shards: files, dirs, globs, s3:// URLs")
    vocab: str = Field(description="vocabulary JSON written by `vbpe learn`")
    out: str = Field(description="corpus root; each vocabulary + layout gets its own version directory under it")
    layout: IdLayout | str | None = Field(
        None, description="id layout (inline mapping or a YAML path); adds `input_ids`. None: vocabulary ids only"
    )
    input_kind: InputKind = Field("auto", description="auto: .parquet -> grids, .tar* -> image shards")
    quantize: QuantizeOptions | None = Field(
        None, description="image shards only: the quantizer (its fingerprint must be the vocabulary's) and how shards "
        "are read and quantized, as in `vbpe quantize` (schemas/quantize.py)"
    )

    @model_validator(mode="after")
    def _shards_need_quantizer(self) -> "TokenizeConfig":
        if self.input_kind == "shards" and not self.quantize:
            raise ValueError(SHARDS_NEED_QUANTIZER)
        return self

    def local_relative_paths(self) -> list[str]:
        """Relative local paths: fine on this machine, wrong inside a submitted job's temporary working dir."""
        paths = [*self.inputs, self.vocab, self.out]
        if isinstance(self.layout, str):
            paths.append(self.layout)
        if self.quantize is not None:
            q = self.quantize.quantizer
            paths.extend(getattr(q, f) for f in ("codebook", "config", "checkpoint", "path") if hasattr(q, f))
        return [p for p in paths if "://" not in p and not os.path.isabs(p)]
