"""Config of `vbpe scenes`: a generated image corpus with spatial structure and image-grounded conversations."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.base import Config, StorageOptions


class ConversationsPerImage(Config):
    """How many conversations of each data type every image gets (each from a randomly chosen template)."""

    foundation: int = Field(1, ge=0, description="FD: a caption of the whole scene")
    perception: int = Field(2, ge=0, description="PD: colour, shape, size or position of one object; the background")
    reasoning: int = Field(2, ge=0, description="RD: counting, comparison, relative position")
    instruction: int = Field(1, ge=0, description="ID: a multi-turn exchange about the scene")

    @model_validator(mode="after")
    def _some(self) -> "ConversationsPerImage":
        if self.foundation + self.perception + self.reasoning + self.instruction == 0:
            raise ValueError("every image needs at least one conversation")
        return self


class SceneSpec(Config):
    """What the corpus holds (the ablation embeds this; `vbpe scenes` adds where to write it)."""

    images: int = Field(2000, ge=1)
    seed: int = 0
    image_size: int = Field(48, ge=24, le=1024, description="square canvas side in pixels, divisible by 3 (a 3 x 3 grid of cells)")
    min_objects: int = Field(1, ge=1, le=9)
    max_objects: int = Field(4, ge=1, le=9)
    shards: int = Field(4, ge=1)
    key_prefix: str = Field("scene-", description="sample keys are <prefix><6-digit index>")
    image_format: Literal["png", "jpg"] = Field("png", description="png keeps the flat colours exact")
    conversations: ConversationsPerImage = ConversationsPerImage()

    @model_validator(mode="after")
    def _consistent(self) -> "SceneSpec":
        if self.image_size % 3:
            raise ValueError(f"image_size {self.image_size} must be divisible by 3")
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects {self.min_objects} > max_objects {self.max_objects}")
        if self.shards > self.images:
            raise ValueError(f"shards {self.shards} > images {self.images}")
        return self


class ScenesConfig(SceneSpec):
    out: str = Field(description="directory (local or s3://): shards/, conversations.jsonl, scenes.jsonl, manifest.json")
    storage: StorageOptions = StorageOptions()
