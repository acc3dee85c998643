"""The route users take today: codes -> characters -> HuggingFace `tokenizers` BPE (1D, frequency only).

Each grid becomes one string (row-major), one "word" to the trainer; code c is the character
U+4E00 + c (CJK ideographs: 20,992 of them, so V up to that). No pre-tokenizer, no normalizer.
"""
from __future__ import annotations

import time

import numpy as np

CHAR_BASE = 0x4E00


def grids_to_text(grids: np.ndarray) -> list[str]:
    flat = grids.reshape(grids.shape[0], -1)
    table = np.array([chr(CHAR_BASE + c) for c in range(int(flat.max()) + 1)], dtype=object)
    return ["".join(table[row]) for row in flat]


def hf_learn(grids: np.ndarray, codebook_size: int, merges: int) -> tuple[int, float]:
    """Train; returns (merges learned, seconds spent in the trainer)."""
    from tokenizers import Tokenizer, models, trainers

    texts = grids_to_text(grids)
    alphabet = [chr(CHAR_BASE + c) for c in range(codebook_size)]
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=codebook_size + merges, min_frequency=2, initial_alphabet=alphabet,
                                  limit_alphabet=codebook_size, show_progress=False, special_tokens=[])
    t0 = time.perf_counter()
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    seconds = time.perf_counter() - t0
    return tok.get_vocab_size() - codebook_size, seconds
