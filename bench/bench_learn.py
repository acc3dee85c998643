"""Learner and encoder benchmarks: each compares against a baseline measured in the same run.

1. naive:  the authors' method (dense matrix rebuilt, corpus rescanned every merge) at 2,000 grids.
2. hf:     codes -> characters -> HuggingFace tokenizers (1D, frequency only), 20,000 grids x 1,000 merges.
3. scale:  100,000 grids x 8,192 merges through `vbpe learn` (Parquet in, JSON out): time and peak RSS.
4. encode: grids/s on one core with an 8,192-merge vocabulary.
Corpora are synthetic 32 x 32 grids, V = 8192: Zipfian codes, planted motifs and textures, noise.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import numpy as np

from bench.synthetic import synthetic_grids

V = 8192
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ours(grids: np.ndarray, merges: int, **kw) -> tuple[list, float]:
    from pipeline.bpe.learner import learn_arrays

    t0 = time.perf_counter()
    out, _, _ = learn_arrays(list(grids), V, merges, **kw)
    return out, time.perf_counter() - t0


def warm_up() -> None:
    """Compile (or load from cache) every kernel outside the timed regions."""
    from bench.naive import naive_learn

    g = synthetic_grids(8, seed=99).codes
    _ours(g, 5, alpha_rel=0.01)
    naive_learn(synthetic_grids(4, 8, 8, codebook_size=256, seed=99).codes, 256, 2)


def naive(quick: bool = False) -> dict:
    """Ours vs the authors' method at 2,000 grids: 100 merges both measured; then whole runs of 1,000
    and 8,192 merges (the vocabulary size Being-VL uses), ours measured, the naive one integrated from
    its per-merge cost measured at several points of the run (it is set by the (V + k)^2 matrix)."""
    from bench.naive import naive_learn

    n_grids, measured, runs = (200, 10, (100, 300)) if quick else (2000, 100, (1000, 8192))
    grids = synthetic_grids(n_grids, seed=0).codes
    _, t_ours_measured = _ours(grids, measured, alpha=0.0)
    _, t_naive_measured = naive_learn(grids, V, measured)
    samples = [(0, t_naive_measured / measured)]
    for k in np.linspace(0, runs[-1], 5)[1:].astype(int):
        k = int(min(k, runs[-1] - 3))
        _, t = naive_learn(grids, V, 3, start_size=V + k)
        samples.append((k, t / 3))
    ks, per = np.array([s[0] for s in samples], float), np.array([s[1] for s in samples])
    out = {
        "grids": n_grids,
        f"ours_s_{measured}_merges": round(t_ours_measured, 2),
        f"naive_s_{measured}_merges": round(t_naive_measured, 1),
        f"speedup_{measured}_merges_measured": round(t_naive_measured / t_ours_measured, 1),
        "naive_s_per_merge_at": {int(k): round(float(p), 3) for k, p in samples},
    }
    for m in runs:
        learned, t_ours = _ours(grids, m, alpha=0.0)
        grid_k = np.arange(len(learned))
        t_naive = float(np.interp(grid_k, ks, per).sum())  # piecewise-linear per-merge cost, summed
        out[f"ours_s_{m}_merges"] = round(t_ours, 2)
        out[f"ours_merges_learned_{m}"] = len(learned)
        out[f"naive_s_{m}_merges_estimated"] = round(t_naive, 0)
        out[f"speedup_{m}_merges_estimated"] = round(t_naive / t_ours, 0)
    return out


def hf(quick: bool = False) -> dict:
    from bench.hf_baseline import hf_learn

    n_grids, merges = (2000, 200) if quick else (20000, 1000)
    grids = synthetic_grids(n_grids, seed=1).codes
    learned, t_hf = hf_learn(grids, V, merges)
    ours, t_ours = _ours(grids, merges, alpha_rel=0.01)
    return {
        "grids": n_grids, "merges": merges, "hf_s": round(t_hf, 2), "hf_merges": learned,
        "ours_s_2d_spatial": round(t_ours, 2), "ours_merges": len(ours),
        "speedup_vs_hf": round(t_hf / t_ours, 2),
    }


def _write_corpus(directory: str, n_grids: int, parts: int) -> None:
    from pipeline.codegrids import Grids, write_grids

    os.makedirs(directory, exist_ok=True)
    per = n_grids // parts
    for p in range(parts):
        codes = synthetic_grids(per, seed=2, sample_seed=1000 + p).codes
        keys = [f"g{p * per + i:08d}" for i in range(per)]
        write_grids(os.path.join(directory, f"part-{p:04d}.parquet"),
                    Grids(keys, np.full(per, 32, np.int32), np.full(per, 32, np.int32), codes.reshape(-1)),
                    V, "synthetic")


def scale(out: str, quick: bool = False) -> dict:
    """The whole `vbpe learn` command in a child process: wall time, CPU time and peak RSS."""
    n_grids, merges = (5000, 500) if quick else (100000, 8192)
    corpus = os.path.join(out, f"scale-{n_grids}")
    if not os.path.exists(os.path.join(corpus, "part-0000.parquet")):
        _write_corpus(corpus, n_grids, 10)
    vocab_path = os.path.join(out, f"scale-{n_grids}-vocab.json")
    cmd = [sys.executable, "-m", "pipeline.cli", "learn", corpus, "--out", vocab_path, "--merges", str(merges),
           "--checkpoint-every", "0", "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    from pipeline.bpe.vocab import Vocabulary

    vocab = Vocabulary.load(vocab_path)
    return {
        "grids": n_grids, "merges": len(vocab.merges), "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "merges_per_s": round(len(vocab.merges) / wall, 1),
        "peak_rss_gb": round(after.ru_maxrss / 1e6, 2),  # Linux: kB; max over children so far
        "tokens_per_grid": round(vocab.corpus.tokens_after / vocab.corpus.grids, 1),
        "vocab": vocab_path,
    }


def encode(out: str, quick: bool = False, vocab_path: str | None = None) -> dict:
    from pipeline.bpe.encoder import BpeEncoder
    from pipeline.bpe.learner import learn_arrays
    from pipeline.bpe.vocab import Vocabulary

    n_grids = 2000 if quick else 20000
    if vocab_path and os.path.exists(vocab_path):
        vocab = Vocabulary.load(vocab_path)
    else:  # no scale run to reuse: learn a vocabulary here (not timed)
        train = synthetic_grids(2000 if quick else 20000, seed=2, sample_seed=1000).codes
        merges, _, alpha = learn_arrays(list(train), V, 500 if quick else 8192, alpha_rel=0.01)
        vocab = Vocabulary(V, 1.0, 2, alpha, merges=merges)
    held_out = synthetic_grids(n_grids, seed=2, sample_seed=7777).codes
    enc = BpeEncoder(vocab)
    enc.encode(held_out[:10].reshape(-1), [32] * 10, [32] * 10)  # compile / warm up
    t0 = time.perf_counter()
    result = enc.encode(held_out.reshape(-1), [32] * n_grids, [32] * n_grids)
    seconds = time.perf_counter() - t0
    return {
        "grids": n_grids, "vocab_merges": len(vocab.merges), "seconds": round(seconds, 2),
        "grids_per_s_one_core": round(n_grids / seconds, 0),
        "tokens_per_grid": round(result.tokens.shape[0] / n_grids, 1),
    }
