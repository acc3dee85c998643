"""The id layout applied to encoded grids: resolve it, check it fits the vocabulary, wrap images.

`input_ids` of an image = [begin_image] + [code_offset + t for t in tokens] + [end_image]. A layout
that reserves fewer merge rows than the vocabulary has, or a different codebook, would silently feed
the LLM ids of other rows, so it is refused before any work.
"""
from __future__ import annotations

import numpy as np

from pipeline.bpe.vocab import Vocabulary
from schemas.base import ConfigError, StorageOptions
from schemas.layout import IdLayout

INT32_MAX = (1 << 31) - 1


def resolve_layout(layout: IdLayout | str | None, options: StorageOptions | None = None) -> IdLayout | None:
    """An inline layout as is; a path is read as YAML (local or s3://)."""
    if layout is None or isinstance(layout, IdLayout):
        return layout
    from pipeline.configargs import load_config

    return load_config(IdLayout, layout, options)


def check_layout(layout: IdLayout, vocab: Vocabulary, vocab_path: str = "the vocabulary") -> None:
    problems = []
    if layout.codebook_size != vocab.codebook_size:
        problems.append(f"codebook_size {layout.codebook_size} != the vocabulary's V = {vocab.codebook_size}")
    if layout.num_merges < len(vocab.merges):
        problems.append(f"num_merges {layout.num_merges} < the vocabulary's {len(vocab.merges)} merges")
    if layout.total_size > INT32_MAX:
        problems.append(f"total size {layout.total_size} does not fit int32 ids")
    if problems:
        raise ConfigError(f"id layout {layout.fingerprint()} does not fit {vocab_path} ({vocab.fingerprint()}): " + "; ".join(problems))


def wrap_images(tokens: np.ndarray, offsets: np.ndarray, layout: IdLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per image, [boi] + code_offset + tokens + [eoi]; returns (values, offsets) of the new lists."""
    offsets = np.asarray(offsets, np.int64)
    n = len(offsets) - 1
    new_offsets = offsets + 2 * np.arange(n + 1, dtype=np.int64)
    values = np.empty(int(new_offsets[-1]), np.int32)
    if n == 0:
        return values, new_offsets
    starts, ends = new_offsets[:-1], new_offsets[1:] - 1
    body = np.ones(len(values), bool)
    body[starts] = False
    body[ends] = False
    values[starts] = layout.begin_image_id
    values[ends] = layout.end_image_id
    values[body] = np.asarray(tokens, np.int64) + layout.code_offset
    return values, new_offsets
