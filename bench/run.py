"""`make bench`: run the benchmarks, print a table, write bench-out/results.json.

    python -m bench.run [--out DIR] [--only naive,hf,scale,encode,api,overhead,workers,scale300,quantize,shards,train,ablation] [--quick]

Speed is reported as ratios against a baseline measured in the same run (the machines are noisy).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

ALL = ["naive", "hf", "scale", "encode", "api", "overhead", "workers", "scale300", "quantize", "shards", "train", "ablation"]


def _run_one(name: str, out: str, quick: bool, results: dict) -> dict:
    from bench import bench_learn

    if name in ("naive", "hf"):
        return getattr(bench_learn, name)(quick)
    if name == "scale":
        return bench_learn.scale(out, quick)
    if name == "overhead":
        return bench_learn.overhead(out, quick)
    if name == "workers":
        return bench_learn.workers(out, quick, results)
    if name == "scale300":
        return bench_learn.scale_workers(out, quick)
    if name == "encode":
        return bench_learn.encode(out, quick, results.get("scale", {}).get("vocab"))
    if name == "api":
        from bench import bench_api

        return bench_api.run(quick, results.get("scale", {}).get("vocab"))
    if name == "quantize":
        from bench import bench_quantize

        return bench_quantize.run(os.path.join(out, "quantize"))
    if name == "shards":
        from bench import bench_tokenize_shards

        return bench_tokenize_shards.run(os.path.join(out, "shards"), images=384 if quick else 1536)
    if name == "train":
        from bench import bench_train

        return bench_train.run(os.path.join(out, "train"), quick=quick)
    if name == "ablation":
        from bench import bench_ablation

        return bench_ablation.run(os.path.join(out, "ablation"), quick)
    raise ValueError(f"unknown benchmark {name}; choose from {ALL}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-out")
    p.add_argument("--only", default=",".join(ALL))
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the targets)")
    args = p.parse_args()
    args.out = os.path.abspath(args.out)  # Ray workers do not share this process's working directory
    os.makedirs(args.out, exist_ok=True)
    from bench.bench_learn import warm_up

    warm_up()
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "load_avg_start": os.getloadavg()}, "quick": args.quick}
    failed = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        t0 = time.perf_counter()
        print(f"== {name} ...", flush=True)
        try:
            results[name] = _run_one(name, args.out, args.quick, results)
        except Exception as err:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            failed.append(name)
        results[name]["bench_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    results["machine"]["load_avg_end"] = os.getloadavg()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {os.path.join(args.out, 'results.json')}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
