"""Image shards -> tokens in one Ray Data pass, against quantize alone on the same shards, in one process.

`python -m bench.bench_tokenize_shards OUT [--images 1536] [--merges 1024] [--rounds 2]`. Demo photos in 16 shards,
the k-means quantizer (256 px -> 32 x 32, 512 codes, the cheap forward, so anything the extra
tokenize step costs shows), a vocabulary learned by `vbpe learn` on the quantized codes. Runs
alternate (quantize, shards->tokens, quantize, ...) so load from other jobs on this shared machine
hits both alike. Both runs: one encoder actor of 1 CPU (1 torch thread), reader tasks of 0.5 CPU;
the tokenize tasks get 0.5 CPU. (With readers and actor at 1 CPU each, 2 cores leave the tokenize
step no CPU until reading ends: results are the same, but shards are committed only at the end.)

Figures per run: images/s over the Ray phase incl. start-up (5-10 s here), and CPU ms per image of
each Ray Data operator (reader tasks, encoder actor, tokenize tasks) from Ray Data's stats: on a
machine shared with other jobs wall-clock rates swing, CPU time per image does not. (A "steady"
rate from block arrivals, as in bench_quantize, would flatter the tokenize pass: its tasks take
>= 256 images each, so blocks reach the driver in clumps.)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time


RESOURCES = {"batch_size": 32, "torch_threads": 1, "cpus_per_actor": 1.0, "cpus_per_reader": 0.5}


def _first_last(arrivals: list, start: float) -> list[float]:
    """Seconds from the start of the run to the first and to the last block reaching the driver."""
    return [round(arrivals[0][0] - start, 1), round(arrivals[-1][0] - start, 1)]


def _cpu_ms(stats: str, n: int) -> dict[str, float]:
    from bench.bench_quantize import _op_cpu_seconds

    return {op: round(1000 * _op_cpu_seconds(stats, op) / n, 2) for op in ("read_shards", "EncodeActor", "tokenize_stream")
            if f"MapBatches({op})" in stats}


def _quantize(q, shards: list[str], out: str) -> dict:
    from pipeline.quantize.api import run as run_quantize
    from schemas.quantize import QuantizeConfig

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    s = run_quantize(QuantizeConfig(inputs=shards, out=out, quantizer=q, **RESOURCES))
    return {"images": s.rows_written, "ips": s.rows_written / s.encode_seconds, "first_last": _first_last(s.trace.arrivals, start),
            "cpu_ms": _cpu_ms(s.trace.dataset_stats, s.rows_written)}


def _tokenize(q, shards: list[str], vocab: str, out: str) -> dict:
    from pipeline.tokenize.api import run
    from schemas.layout import IdLayout
    from schemas.tokenize import TokenizeConfig

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    s = run(TokenizeConfig(inputs=shards, vocab=vocab, out=out, layout=IdLayout(codebook_size=512),
                           quantize={"quantizer": q.model_dump(), **RESOURCES}, cpus=0.5))
    assert s.ok, s.failed
    return {"images": s.rows_written, "ips": s.rows_written / s.work_seconds, "first_last": _first_last(s.trace.arrivals, start),
            "cpu_ms": _cpu_ms(s.trace.dataset_stats, s.rows_written), "cells_per_token": s.cells / max(s.tokens, 1)}


def run(out_dir: str, images: int = 1536, merges: int = 1024, rounds: int = 2) -> dict:
    from pipeline.demo.photos import build_demo_shards
    from pipeline.learn.api import learn_vocabulary as learn
    from pipeline.quantize.fit import ensure_codebook
    from pipeline.execution import ensure_ray
    from schemas.learn import LearnConfig
    from schemas.quantize import IngestOptions, KMeansQuantizerConfig

    os.makedirs(out_dir, exist_ok=True)
    shards = build_demo_shards(os.path.join(out_dir, "shards"), samples=images, shards=16, seed=1, plant_bad=False).shards
    q = KMeansQuantizerConfig(codebook=os.path.join(out_dir, "kmeans.safetensors"), image_size=256, patch_size=8,
                              codebook_size=512, fit_patches=40_000, fit_iterations=12)
    ensure_codebook(q, shards, IngestOptions(), None)
    ensure_ray(None)
    vocab = os.path.join(out_dir, f"vocab-{merges}.json")
    if not os.path.exists(vocab):  # learned on this quantizer's codes, so it carries its fingerprint
        _quantize(q, shards, os.path.join(out_dir, "train-codes"))
        learn(LearnConfig(inputs=[os.path.join(out_dir, "train-codes", "grids")], out=vocab, merges=merges, progress=False))
    runs: dict[str, list[dict]] = {"quantize": [], "shards_to_tokens": []}
    for r in range(rounds):
        runs["quantize"].append(_quantize(q, shards, os.path.join(out_dir, f"q-{r}")))
        runs["shards_to_tokens"].append(_tokenize(q, shards, vocab, os.path.join(out_dir, f"t-{r}")))
    result = {name: {"images": rs[0]["images"], "ips_runs": [round(x["ips"], 1) for x in rs],
                     "ips_median": round(statistics.median(x["ips"] for x in rs), 1), "cpu_ms_per_image": rs[-1]["cpu_ms"],
                     "first_last_block_s": [x["first_last"] for x in rs]}
              for name, rs in runs.items()}
    result["shards_to_tokens"]["cells_per_token"] = round(runs["shards_to_tokens"][0]["cells_per_token"], 2)
    result["merges"] = merges
    result["load_avg_end"] = os.getloadavg()
    q_, t_ = result["quantize"], result["shards_to_tokens"]
    for name in ("quantize", "shards_to_tokens"):
        r = result[name]
        print(f"{name:18} {r['images']:6d} images, img/s per run {r['ips_runs']}, first/last block at "
              f"{r['first_last_block_s']} s, CPU ms/image {r['cpu_ms_per_image']}")
    print(f"shards->tokens / quantize: {t_['ips_median'] / q_['ips_median']:.2f} (median img/s, whole Ray phase); "
          f"{t_['cells_per_token']} cells per token")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--images", type=int, default=1536)
    p.add_argument("--merges", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    t = time.perf_counter()
    result = run(args.out, args.images, args.merges, args.rounds)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"({time.perf_counter() - t:.0f} s in all)")


if __name__ == "__main__":
    main()
