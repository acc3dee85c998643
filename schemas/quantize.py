"""`vbpe quantize` config: which shards, which quantizer, how many actors, what counts as bad input."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from schemas.base import Config, JobConfig

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


class _ShardQuantizing(Config):
    """How shards are read and quantized, apart from the size of the encoder actor pool."""

    quantizer: QuantizerConfig
    ingest: IngestOptions = IngestOptions()
    batch_size: int = Field(32, ge=1, description="images per encoder call")
    max_actors: int | None = Field(None, ge=1, description="autoscale the encoder actors up to this many")
    num_gpus: float | None = Field(None, ge=0, description="per actor; default 1 when the cluster has GPUs, else 0")
    cpus_per_reader: float = Field(1.0, gt=0, description="CPUs per read/decode task (one task per shard)")
    shards_per_reader_process: int = Field(16, ge=1, description="a reader worker process is replaced after this many shards")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per actor; default max(1, CPUs per actor)")
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @property
    def actor_count(self) -> int:
        raise NotImplementedError

    @property
    def actor_cpus(self) -> float:
        raise NotImplementedError

    @model_validator(mode="after")
    def _actors(self) -> "_ShardQuantizing":
        if self.max_actors is not None and self.actor_count and self.max_actors < self.actor_count:
            raise ValueError(f"max_actors {self.max_actors} < the {self.actor_count} encoder actors asked for")
        return self


class QuantizeOptions(_ShardQuantizing):
    """The quantize section of `vbpe tokenize` on image shards (its own workers are the tokenize tasks)."""

    num_actors: int = Field(1, ge=1, description="encoder actors")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per encoder actor")

    @property
    def actor_count(self) -> int:
        return self.num_actors

    @property
    def actor_cpus(self) -> float:
        return self.cpus_per_actor


class QuantizeConfig(_ShardQuantizing, JobConfig):
    """`vbpe quantize`: the stage's workers are its encoder actors (`workers`, `cpus` each).

    Shards always go through Ray Data (`executor: local` is refused). `workers: 0` means one actor per
    GPU of the cluster (one actor when it has none). `num_actors` / `cpus_per_actor` are the old names.
    """

    inputs: list[str] = Field(min_length=1, description="WebDataset shards: files, dirs, globs, {a,b} lists, s3:// URLs")
    out: str = Field(description="output directory (local or s3://)")
    fit_kmeans: bool = Field(False, description="fit the k-means codebook on a sample first (kept if it exists)")
    workers: int = Field(1, ge=0, description="encoder actors (0: one per GPU of the cluster)")
    cpus: float = Field(1.0, gt=0, description="CPUs per encoder actor")

    @model_validator(mode="before")
    @classmethod
    def _old_pool_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in (("num_actors", "workers"), ("cpus_per_actor", "cpus")):
                if old in data:
                    if new in data:
                        raise ValueError(f"{old} is the old name of {new}: give one of them")
                    data = {k: v for k, v in data.items() if k != old} | {new: data[old]}
        return data

    @property
    def actor_count(self) -> int:
        return self.workers

    @property
    def actor_cpus(self) -> float:
        return self.cpus

    @model_validator(mode="after")
    def _fit_needs_kmeans(self) -> "QuantizeConfig":
        if self.fit_kmeans and self.quantizer.kind != "kmeans":
            raise ValueError("fit_kmeans needs quantizer.kind: kmeans")
        return self
