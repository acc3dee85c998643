"""Learner and encoder benchmarks: each compares against a baseline measured in the same run.

1. naive:  the authors' method (dense matrix rebuilt, corpus rescanned every merge) at 2,000 grids.
2. hf:     codes -> characters -> HuggingFace tokenizers (1D, frequency only), 20,000 grids x 1,000 merges.
3. scale:  100,000 grids x 8,192 merges through `vbpe learn` (Parquet in, JSON out): time and peak RSS.
4. encode: grids/s on one core with an 8,192-merge vocabulary.
5. overhead: the per-merge Ray round trip with 2 workers on a corpus where merging costs ~nothing, per transport.
6. workers: 100,000 grids x 8,192 merges in this process vs 1 and 2 Ray workers, memory over every process, and
   the cost model (per-merge serial and parallel time, bytes sent) extrapolated to 16/64 workers, 1M/10M grids.
7. scale300: 300,000 grids x 8,192 merges with 2 Ray workers.
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
TRANSPORTS = ("mesh", "graph", "calls", "relay")
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


# --- the learner on Ray workers (issue #9) ---------------------------------------------------------

def _learn_cli(corpus: str, vocab_path: str, merges: int, workers: int, env: dict | None = None,
               extra: tuple[str, ...] = ()) -> dict:
    """`vbpe learn` in a child process: wall time, and what its metrics file says about every process."""
    import json

    cmd = [sys.executable, "-m", "pipeline.cli", "learn", corpus, "--out", vocab_path, "--merges", str(merges),
           "--checkpoint-every", "0", "--no-progress", "--workers", str(workers), *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    with open(vocab_path[: -len(".json")] + ".metrics.json") as f:
        m = json.load(f)
    from pipeline.bpe.vocab import Vocabulary

    vocab = Vocabulary.load(vocab_path)
    return {"wall_s": round(wall, 1), "merges": len(vocab.merges), "fingerprint": vocab.fingerprint(),
            "cells": vocab.corpus.cells, "metrics": m}


def _memory(run: dict) -> dict:
    m = run["metrics"]
    cells = run["cells"]
    total = m.get("peak_rss_all_processes_bytes") or m["process_peak_rss_bytes"]
    workers = m.get("workers_resources", [])
    structures = sum(w["shard_bytes"] + w["stats_bytes"] for w in workers)
    return {"peak_rss_all_gb": round(total / 1e9, 2), "bytes_per_cell_all": round(total / cells, 1),
            "driver_peak_rss_gb": round(m.get("driver_peak_rss_bytes", m["process_peak_rss_bytes"]) / 1e9, 2),
            "worker_peak_rss_gb": [round(w["peak_rss_bytes"] / 1e9, 2) for w in workers],
            "structures_bytes_per_cell_end": round(structures / cells, 1)}


def overhead(out: str, quick: bool = False) -> dict:
    """Per-merge cost of the Ray round trip: a corpus so small that merging costs ~nothing (V = 64,
    64 grids of 16 x 16), learned in this process and with 2 actors over each transport."""
    corpus = os.path.join(out, "overhead-grids")
    if not os.path.exists(os.path.join(corpus, "part-0000.parquet")):
        from pipeline.codegrids import Grids, write_grids

        os.makedirs(corpus, exist_ok=True)
        rng = np.random.default_rng(5)
        n = 64
        write_grids(os.path.join(corpus, "part-0000.parquet"),
                    Grids([f"o{i:04d}" for i in range(n)], np.full(n, 16, np.int32), np.full(n, 16, np.int32),
                          rng.integers(0, 64, size=n * 256).astype(np.int32)), 64, "synthetic")
    merges = 300 if quick else 2000
    runs = {"local": _learn_cli(corpus, os.path.join(out, "overhead-local.json"), merges, 0)}
    for transport in TRANSPORTS:
        runs[transport] = _learn_cli(corpus, os.path.join(out, f"overhead-{transport}.json"), merges, 2, None,
                                     ("--transport", transport, "--actor-cpus", "1"))
    per = {k: r["metrics"]["driver_step_s"] / max(1, r["metrics"]["steps"]) * 1e3 for k, r in runs.items()}
    return {
        "merges": runs["local"]["merges"], "workers": 2,
        "ms_per_merge": {k: round(v, 3) for k, v in per.items()},
        "overhead_ms_per_merge": {k: round(per[k] - per["local"], 3) for k in TRANSPORTS},
        "same_vocabulary": len({r["fingerprint"] for r in runs.values()}) == 1,
    }


def workers(out: str, quick: bool = False, results: dict | None = None) -> dict:
    """100,000 grids x 8,192 merges: this process vs 1 and 2 Ray workers, one after the other; plus the
    cost model (docs/learn.md) extrapolated from the 2-worker profile."""
    n_grids, merges = (5000, 500) if quick else (100000, 8192)
    corpus = os.path.join(out, f"scale-{n_grids}")
    if not os.path.exists(os.path.join(corpus, "part-0000.parquet")):
        _write_corpus(corpus, n_grids, 10)
    runs = {"local": _learn_cli(corpus, os.path.join(out, f"workers-{n_grids}-local.json"), merges, 0)}
    for w in (1, 2):
        runs[f"w{w}"] = _learn_cli(corpus, os.path.join(out, f"workers-{n_grids}-w{w}.json"), merges, w, None,
                                   ("--actor-cpus", "1"))
    out_ = {
        "grids": n_grids, "merges": runs["local"]["merges"], "transport": _default_transport(),
        "wall_s": {k: r["wall_s"] for k, r in runs.items()},
        "w2_over_w1": round(runs["w2"]["wall_s"] / runs["w1"]["wall_s"], 3),
        "w2_over_local": round(runs["w2"]["wall_s"] / runs["local"]["wall_s"], 3),
        "same_vocabulary": len({r["fingerprint"] for r in runs.values()}) == 1,
        "memory": {k: _memory(r) for k, r in runs.items()},
    }
    latency = (results or {}).get("overhead", {}).get("overhead_ms_per_merge", {}).get(_default_transport())
    out_["cost_model"] = cost_model(runs["w2"], latency)
    return out_


def _default_transport() -> str:
    from schemas.learn import LearnConfig

    return LearnConfig.model_fields["transport"].default


def cost_model(run: dict, latency_ms: float | None) -> dict:
    """Per merge: serial (driver: pick + round trip) and parallel (shard merge, partition reduce) time and
    bytes sent between workers, measured at W = 2; extrapolated to 16 and 64 workers and 1M / 10M grids.

    Assumptions: the work of a merge and its deltas grow with the corpus (F grows with it); the work
    splits evenly over workers; the round trip grows linearly with W from the measured W = 2 value;
    memory per cell stays as measured; each process adds the measured base RSS."""
    m = run["metrics"]
    ws = m["workers_resources"]
    steps = max(1, m["steps"])
    W = len(ws)
    cells0 = run["cells"]
    grids0 = cells0 / 1024
    work = sum(w["merge_s"] + w["reduce_s"] for w in ws) / steps  # summed over workers, per merge
    slowest = max(w["merge_s"] + w["reduce_s"] for w in ws) / steps
    step = m["driver_step_s"] / steps
    serial = latency_ms / 1e3 if latency_ms is not None else max(0.0, step - slowest)
    sent = sum(w["sent_bytes"] for w in ws) / steps
    count = max(w["count_s"] for w in ws) * W  # one worker's count time x W: the whole count on one
    per_cell = sum(w["shard_bytes"] + w["stats_bytes"] for w in ws) / cells0
    base = min(w["peak_rss_bytes"] - w["shard_bytes"] - w["stats_bytes"] for w in ws)
    model = {
        "measured_at": {"grids": int(grids0), "workers": W, "merges": steps},
        "per_merge_s": {"serial_driver_round_trip": round(serial, 6), "parallel_work_summed": round(work, 6),
                        "slowest_worker": round(slowest, 6), "driver_step": round(step, 6)},
        "bytes_sent_per_merge": int(sent),
        "bytes_per_cell_structures": round(per_cell, 1),
        "process_base_gb": round(base / 1e9, 2),
        "extrapolated": [],
    }
    for grids in (1_000_000, 10_000_000):
        scale = grids / grids0
        for workers_ in (16, 64):
            lat = serial * (workers_ / W)
            t_merge = lat + work * scale / workers_
            model["extrapolated"].append({
                "grids": grids, "workers": workers_,
                "s_per_merge": round(t_merge, 5), "serial_share": round(lat / t_merge, 3),
                "hours_8192_merges": round((8192 * t_merge + count * scale / workers_) / 3600, 2),
                "gb_per_worker": round(per_cell * grids * 1024 / workers_ / 1e9 + base / 1e9, 2),
                # all deltas of a merge = sent x W / (W - 1) (pairs spread evenly); a share (W' - 1) / W' leaves its worker
                "mb_sent_per_merge": round(sent * W / (W - 1) * scale * (workers_ - 1) / workers_ / 1e6, 2) if W > 1 else None,
            })
    return model


def scale_workers(out: str, quick: bool = False) -> dict:
    """300,000 grids x 8,192 merges with 2 Ray workers: wall time and peak RSS over every process."""
    n_grids, merges = (10000, 500) if quick else (300000, 8192)
    corpus = os.path.join(out, f"scale-{n_grids}")
    if not os.path.exists(os.path.join(corpus, "part-0000.parquet")):
        _write_corpus(corpus, n_grids, 30)
    run = _learn_cli(corpus, os.path.join(out, f"scale-{n_grids}-w2.json"), merges, 2, None,
                     ("--actor-cpus", "1"))
    return {"grids": n_grids, "merges": run["merges"], "wall_s": run["wall_s"], "memory": _memory(run)}
