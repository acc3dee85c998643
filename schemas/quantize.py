"""`vbpe quantize` config: which shards, which quantizer, how many actors, what counts as bad input."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from schemas.base import Config, StorageOptions

Resample = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


class KMeansQuantizerConfig(Config):
    """Patch codebook fitted on the corpus itself: needs no weights.

    The codebook file fixes image_size / patch_size / codebook_size / resample; the fields here are
    the fitting parameters and must agree with an existing file (a mismatch is an error, not a refit).
    """

    kind: Literal["kmeans"] = "kmeans"
    codebook: str
    image_size: int = Field(256, ge=8)
    patch_size: int = Field(8, ge=1)
    codebook_size: int = Field(1024, ge=2)
    resample: Resample = "bicubic"
    fit_images: int = Field(1000, ge=1)
    fit_patches: int = Field(100_000, ge=1)
    fit_iterations: int = Field(20, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _patch_divides(self) -> "KMeansQuantizerConfig":
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        return self


class TamingQuantizerConfig(Config):
    """A taming-transformers VQModel: its own model YAML plus a Lightning .ckpt or a .safetensors file."""

    kind: Literal["taming"]
    config: str
    checkpoint: str
    image_size: int | None = Field(None, ge=8, description="default: ddconfig.resolution")
    resample: Resample = "bicubic"


class ChameleonQuantizerConfig(Config):
    """Chameleon's VQ-GAN: a ChameleonVQVAE save, or a full Chameleon checkpoint (only model.vqmodel.* is read)."""

    kind: Literal["chameleon"]
    path: str
    image_size: int | None = Field(None, ge=8, description="default: vq_config.resolution (512)")
    resample: Resample = "lanczos"
    decoder: str | None = Field(None, description="the original VQ-GAN checkpoint (.ckpt or .safetensors) whose "
                                "decoder.* weights decode codes to pixels; transformers' format holds none")


QuantizerConfig = Annotated[
    Union[KMeansQuantizerConfig, TamingQuantizerConfig, ChameleonQuantizerConfig],
    Field(discriminator="kind"),
]


class IngestOptions(Config):
    """What a sample must look like to be encoded; anything else becomes a recorded reject."""

    image_extensions: list[str] = ["jpg", "jpeg", "png", "webp", "bmp"]
    caption_extensions: list[str] = ["txt", "json"]
    max_pixels: int = Field(64_000_000, ge=1, description="decompression-bomb limit (width x height)")
    min_side: int = Field(8, ge=1)
    max_aspect: float = Field(20.0, ge=1.0)
    max_member_bytes: int = Field(64 << 20, ge=1)
    rows_per_block: int = Field(64, ge=1)

    @field_validator("image_extensions", "caption_extensions")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [e.lower().lstrip(".") for e in v]


class QuantizeOptions(Config):
    """How shards are read and quantized: shared by `vbpe quantize` and `vbpe tokenize` on image shards."""

    quantizer: QuantizerConfig
    ingest: IngestOptions = IngestOptions()
    batch_size: int = Field(32, ge=1)
    num_actors: int = Field(1, ge=1)
    max_actors: int | None = Field(None, ge=1, description="autoscale num_actors..max_actors")
    num_gpus: float | None = Field(None, ge=0, description="per actor; default 1 when the cluster has GPUs, else 0")
    cpus_per_actor: float = Field(1.0, gt=0)
    cpus_per_reader: float = Field(1.0, gt=0)
    shards_per_reader_process: int = Field(16, ge=1, description="a reader worker process is replaced after this many shards")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per actor; default max(1, cpus_per_actor)")
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @model_validator(mode="after")
    def _actors(self) -> "QuantizeOptions":
        if self.max_actors is not None and self.max_actors < self.num_actors:
            raise ValueError(f"max_actors {self.max_actors} < num_actors {self.num_actors}")
        return self


class QuantizeConfig(QuantizeOptions):
    inputs: list[str] = Field(min_length=1)
    out: str
    fit_kmeans: bool = False
    ray_address: str | None = None
    storage: StorageOptions = StorageOptions()

    @model_validator(mode="after")
    def _fit_needs_kmeans(self) -> "QuantizeConfig":
        if self.fit_kmeans and self.quantizer.kind != "kmeans":
            raise ValueError("fit_kmeans needs quantizer.kind: kmeans")
        return self
