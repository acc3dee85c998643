"""`vbpe tokenize` config: which grids (or image shards), which vocabulary, which id layout, where to write.

Validated before any work: the CLI builds one of these from its flags, `jobs.tokenize` loads one
from YAML, and both call `pipeline.tokenize.api.run`.
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from schemas.base import Config, StorageOptions
from schemas.layout import IdLayout
from schemas.quantize import QuantizeOptions

SHARDS_NEED_QUANTIZER = (
    "image-shard input needs the quantizer that turns images into codes: `quantize: {quantizer: {kind: ...}}` in "
    "the config, or --quantizer Q.yaml"
)

InputKind = Literal["auto", "grids", "shards"]
Executor = Literal["auto", "local", "ray"]


class TokenizeConfig(Config):
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
    executor: Executor = Field(
        "auto", description="auto: Ray when workers > 0, ray_address or RAY_ADDRESS is set (e.g. under `ray job submit`)"
    )
    workers: int = Field(0, ge=0, description="Ray: files (shards: batches of grids) in flight at once (0: as many as "
                         "the cluster has CPUs)")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs per tokenize task (one grid file, or one batch of grids)")
    ray_address: str | None = None
    storage: StorageOptions = StorageOptions()

    @model_validator(mode="after")
    def _shards_need_quantizer(self) -> "TokenizeConfig":
        if self.input_kind == "shards" and not self.quantize:
            raise ValueError(SHARDS_NEED_QUANTIZER)
        return self

    def wants_ray(self) -> bool:
        if self.executor != "auto":
            return self.executor == "ray"
        return self.workers > 0 or bool(self.ray_address) or bool(os.environ.get("RAY_ADDRESS"))

    def local_relative_paths(self) -> list[str]:
        """Relative local paths: fine on this machine, wrong inside a submitted job's temporary working dir."""
        paths = [*self.inputs, self.vocab, self.out]
        if isinstance(self.layout, str):
            paths.append(self.layout)
        if self.quantize is not None:
            q = self.quantize.quantizer
            paths.extend(getattr(q, f) for f in ("codebook", "config", "checkpoint", "path") if hasattr(q, f))
        return [p for p in paths if "://" not in p and not os.path.isabs(p)]
