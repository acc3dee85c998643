"""Image shards straight to tokens: quantize, then apply the vocabulary, in one Ray Data pass.

Needs the quantize stage (pipeline.quantize). Until that stage is part of this build, asking for
shard input is a clear configuration error; code-grid Parquet input works without it.

The seam: the quantize stage's Ray Data pipeline (read shards -> encoder actors) gains one more
`map_batches` that validates the code rows (codegrids) and calls `records.encode_to_table`; the
driver regroups rows per shard as quantize does and commits each shard exactly like a grid file
(`files.atomic_write`, then a `versions.Manifest` entry keyed by the shard URL), so versions,
incremental runs and rejects behave the same for both kinds of input.
"""
from __future__ import annotations

import importlib.util

from pipeline.learn.vocab import Vocabulary
from schemas.base import ConfigError
from schemas.layout import IdLayout
from schemas.tokenize import TokenizeConfig


def quantize_available() -> bool:
    return importlib.util.find_spec("pipeline.quantize") is not None and importlib.util.find_spec("schemas.quantize") is not None


def run_shards(cfg: TokenizeConfig, vocab: Vocabulary, layout: IdLayout | None, urls: list[str]):
    if not quantize_available():
        raise ConfigError(
            f"{len(urls)} inputs are image shards (e.g. {urls[0]}), but this build has no quantize stage "
            "(pipeline.quantize): quantize them with `vbpe quantize` first and tokenize the code-grid Parquet"
        )
    raise ConfigError("image-shard input is not wired to this build's quantize stage yet")
