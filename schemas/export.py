"""`vbpe export` config: a vocabulary, the quantizer that made its codes and an id layout -> one tokenizer directory."""
from __future__ import annotations

from pydantic import Field

from schemas.base import Config, StorageOptions
from schemas.layout import IdLayout
from schemas.quantize import QuantizerConfig


class ExportConfig(Config):
    vocab: str = Field(description="vocabulary JSON written by `vbpe learn`")
    quantizer: QuantizerConfig = Field(description="the quantizer section, as for `vbpe quantize --quantizer`")
    layout: IdLayout | str | None = Field(
        None, description="id layout (inline or a YAML path); default: Llama-3's 128,256 text ids + 5 specials, "
        "sized to the vocabulary")
    out: str = Field(description="tokenizer directory (local or s3://)")
    storage: StorageOptions = StorageOptions()
