"""Where visual tokens live in an LLM's vocabulary.

Layout (Being-VL's, by default): the text ids, then the special tokens, then the V base codes,
then the learned merges. Codes and merges are contiguous, so an LLM id is `code_offset + vbpe_id`.
"""
from __future__ import annotations

import hashlib
import json

from pydantic import field_validator, model_validator

from schemas.base import Config

DEFAULT_SPECIALS = ["<pad>", "<sep>", "<eoi>", "<image>", "<boi>"]


class IdLayout(Config):
    text_vocab_size: int = 128256
    special_tokens: list[str] = list(DEFAULT_SPECIALS)
    codebook_size: int = 8192
    num_merges: int = 8192
    begin_image: str = "<boi>"
    end_image: str = "<eoi>"
    pad: str = "<pad>"

    @field_validator("text_vocab_size", "codebook_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("num_merges")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @model_validator(mode="after")
    def _specials_named(self) -> "IdLayout":
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError("special_tokens has duplicates")
        for name in (self.begin_image, self.end_image, self.pad):
            if name not in self.special_tokens:
                raise ValueError(f"{name!r} is not one of special_tokens {self.special_tokens}")
        return self

    @property
    def special_offset(self) -> int:
        return self.text_vocab_size

    @property
    def code_offset(self) -> int:
        return self.text_vocab_size + len(self.special_tokens)

    @property
    def merge_offset(self) -> int:
        return self.code_offset + self.codebook_size

    @property
    def total_size(self) -> int:
        return self.merge_offset + self.num_merges

    @property
    def visual_ids(self) -> range:
        """Rows that stage 1 trains: every code and merge id."""
        return range(self.code_offset, self.total_size)

    def special_id(self, name: str) -> int:
        try:
            return self.special_offset + self.special_tokens.index(name)
        except ValueError:
            raise KeyError(f"unknown special token {name!r}; layout has {self.special_tokens}") from None

    @property
    def begin_image_id(self) -> int:
        return self.special_id(self.begin_image)

    @property
    def end_image_id(self) -> int:
        return self.special_id(self.end_image)

    @property
    def pad_id(self) -> int:
        return self.special_id(self.pad)

    def fingerprint(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
