"""`vbpe.VisualTokenizer` speed: the grid part against the bare encoder, and images/s end to end.

- grids: `encode_grids` (LLM id lists, as users get them) vs `Encoder.encode` (the numba kernel alone) on
  the same held-out synthetic 32 x 32 grids, V = 8192, 8,192 merges (the encode benchmark's vocabulary),
  alternated three times, best of each; one thread. The target is the encoder's: >= 5,000 grids/s.
- images: `encode_batch` on JPEG bytes of real photo crops, with a k-means quantizer like the demo's
  (256 px, 8 px patches, 512 codes, 1,000 merges), torch on one thread: images/s, and where the time goes
  (decode + resize, quantizer, BPE + ids); and how many of those grids `decode_grid` gives back exactly,
  with the token layout and from the ids alone (cells in place).
"""
from __future__ import annotations

import io
import time

import numpy as np

from bench.bench_learn import V
from bench.synthetic import synthetic_grids


def _tokenizer(vocab, spec, tensors):
    from pipeline.quantize.decode import prepare_decoder
    from vbpe import VisualTokenizer, directory

    decoder, dtensors = prepare_decoder(None, spec, tensors) if spec.kind == "kmeans" else (None, None)
    return VisualTokenizer(directory.Parts(vocab, directory.default_layout(vocab), spec, tensors, decoder, dtensors))


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def grids(vocab, quick: bool) -> dict:
    from pipeline.quantize.kmeans import KMeansCodebook
    from pipeline.bpe.encoder import BpeEncoder

    n = 2000 if quick else 20000
    held_out = synthetic_grids(n, seed=2, sample_seed=7777).codes
    cb = KMeansCodebook(np.random.default_rng(0).random((V, 12), dtype=np.float32), 64, 2, "bicubic")
    tok = _tokenizer(vocab, cb.spec(), {"centroids": cb.centroids})
    enc = BpeEncoder(vocab)
    flat, sides = held_out.reshape(-1), [32] * n
    enc.encode(held_out[:10].reshape(-1), [32] * 10, [32] * 10)  # compile / warm up
    tok.encode_grids(held_out[:10])
    tok.encode_grids(held_out[:10], return_encoding=True)
    bare = api = api_np = float("inf")
    for _ in range(3):
        bare = min(bare, _best(lambda: enc.encode(flat, sides, sides), 1))
        api = min(api, _best(lambda: tok.encode_grids(held_out), 1))
        api_np = min(api_np, _best(lambda: tok.encode_grids(held_out, return_tensors="np"), 1))
    layout_s = _best(lambda: tok.encode_grids(held_out[: n // 10], return_encoding=True), 1) * 10
    ids = tok.encode_grids(held_out[:50])
    return {
        "grids": n, "vocab_merges": len(vocab.merges),
        "bare_encoder_grids_per_s": round(n / bare), "api_grids_per_s": round(n / api),
        "api_over_bare": round(bare / api, 3), "api_np_grids_per_s": round(n / api_np),
        "api_np_over_bare": round(bare / api_np, 3), "with_layout_grids_per_s": round(n / layout_s),
        "ids_per_grid": round(float(np.mean([len(x) for x in ids])), 1),
    }


def _photo_jpegs(n: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    from pipeline.demo.photos import load_photos, random_view

    photos, _ = load_photos()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im, _ = random_view(photos[i % len(photos)], rng, 384)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def images(quick: bool) -> dict:
    import torch

    from pipeline.bpe.learner import learn_arrays
    from pipeline.bpe.vocab import Vocabulary
    from pipeline.ingest.preprocess import ImageSpec
    from pipeline.quantize.kmeans import KMeansEncoder, fit_codebook
    from vbpe.images import prepare

    torch.set_num_threads(1)
    n = 96 if quick else 384
    data = _photo_jpegs(n)
    train = [prepare(d, ImageSpec(256, "bicubic")) for d in _photo_jpegs(128, seed=1)]
    cb = fit_codebook(train, 256, 8, "bicubic", 512, 40_000, 8, 0)
    codes = KMeansEncoder(cb.spec(), {"centroids": cb.centroids}).encode(np.stack(train))
    merges, _, alpha = learn_arrays(list(codes), 512, 300 if quick else 1000, alpha_rel=0.01)
    vocab = Vocabulary(512, 1.0, 2, alpha, merges=merges, quantizer_fingerprint=cb.fingerprint)
    tok = _tokenizer(vocab, cb.spec(), {"centroids": cb.centroids})
    tok.encode_batch(data[:8])  # warm up
    total = _best(lambda: tok.encode_batch(data), 2)
    batches = [data[i:i + 32] for i in range(0, n, 32)]  # the parts, batched as encode_batch does
    pre = _best(lambda: [tok.preprocess(b) for b in batches], 2)
    arrays = [tok.preprocess(b) for b in batches]
    quant = _best(lambda: [tok._quantizer().encode(a) for a in arrays], 2)
    grid_codes = np.concatenate([tok._quantizer().encode(a) for a in arrays])
    bpe = _best(lambda: tok.encode_grids(grid_codes), 2)
    encs = tok.encode_grids(grid_codes, return_encoding=True)
    exact = np.mean([np.array_equal(tok.decode_grid(e), g) for e, g in zip(encs, grid_codes)])
    inferred = [tok.decode_grid(e.tokens) == g for e, g in zip(encs, grid_codes)]
    return {
        "images": n, "image_size": 256, "grid": [32, 32], "codebook": 512, "merges": len(vocab.merges),
        "torch_threads": 1, "images_per_s": round(n / total, 1),
        "seconds": {"total": round(total, 3), "decode_resize": round(pre, 3), "quantizer": round(quant, 3),
                    "bpe_and_ids": round(bpe, 3)},
        "decode_with_layout_exact_grids": float(exact),
        "decode_from_ids_exact_grids": float(np.mean([x.all() for x in inferred])),
        "decode_from_ids_cells_in_place": round(float(np.mean([x.mean() for x in inferred])), 3),
    }


def run(quick: bool, vocab_path: str | None = None) -> dict:
    import os

    from pipeline.bpe.learner import learn_arrays
    from pipeline.bpe.vocab import Vocabulary

    if vocab_path and os.path.exists(vocab_path):
        vocab = Vocabulary.load(vocab_path)
    else:  # no scale run to reuse: learn the encode benchmark's vocabulary here (not timed)
        train = synthetic_grids(2000 if quick else 20000, seed=2, sample_seed=1000).codes
        merges, _, alpha = learn_arrays(list(train), V, 500 if quick else 8192, alpha_rel=0.01)
        vocab = Vocabulary(V, 1.0, 2, alpha, merges=merges)
    return {"grids": grids(vocab, quick), "images": images(quick)}
