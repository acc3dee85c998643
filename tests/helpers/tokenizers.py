"""Visual tokenizers built on the spot: a random k-means codebook with V codes plus a given vocabulary."""
from __future__ import annotations

import numpy as np

from pipeline.bpe.vocab import Vocabulary
from pipeline.quantize.decode import prepare_decoder
from pipeline.quantize.kmeans import KMeansCodebook
from schemas.layout import IdLayout


def kmeans_codebook(V: int, side: int = 8, patch: int = 4, seed: int = 0) -> KMeansCodebook:
    rng = np.random.default_rng(seed)
    return KMeansCodebook(rng.random((V, patch * patch * 3), dtype=np.float32), side * patch, patch, "bicubic")


def tokenizer_parts(vocab: Vocabulary, side: int = 8, patch: int = 4, layout: IdLayout | None = None, seed: int = 0):
    from vbpe.directory import Parts, default_layout

    cb = kmeans_codebook(vocab.codebook_size, side, patch, seed)
    spec, tensors = cb.spec(), {"centroids": cb.centroids}
    decoder, dtensors = prepare_decoder(None, spec, tensors)
    return Parts(vocab, layout or default_layout(vocab), spec, tensors, decoder, dtensors)


def visual_tokenizer(vocab: Vocabulary, side: int = 8, patch: int = 4, layout: IdLayout | None = None):
    from vbpe import VisualTokenizer

    return VisualTokenizer(tokenizer_parts(vocab, side, patch, layout))
