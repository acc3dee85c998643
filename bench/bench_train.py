"""Training figures on the tiny model, each against a baseline measured in the same run:

- strategies: tokens/s per worker of one stage (stage 3: everything trains) with 2 CPU workers over
  gloo, DDP vs FSDP (`fully_shard`), the same steps and data;
- preparation: records/s of `prepare` in one process (how it ran before Ray Data) vs as a Ray
  Data map over 2 actors, same records;
- the three stages of a 1-worker run (fit seconds, tokens/s per step);
- memory: a Ray Train worker's peak RSS with 1,500 and then 15,000 images of ~400 code ids (target:
  < 25 MB growth while the data grows > 80 MB: workers stream a few micro-batches, never the file).

    python -m bench.bench_train [--out DIR] [--records N] [--quick] [--only strategies,preparation,one_worker,memory] [--gpus N]
Prints one JSON object; per-step numbers come from the stages' metrics files. `--gpus N` runs the
strategies part on N GPU workers (bf16 mixed precision, NCCL) instead of 2 CPU workers: untested
here (no GPU on the machines this was built on).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time


def _world(out: str, images: int, min_len: int = 64, max_len: int = 128) -> dict:
    from pipeline.train import tiny
    from schemas.layout import IdLayout
    from schemas.train import CATEGORIES

    tok = tiny.build_tokenizer(os.path.join(out, "tok"))
    tiny.build_model(os.path.join(out, "src"), len(tok))
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=256, num_merges=256)
    keys = tiny.write_corpus(os.path.join(out, "corpus", "p.parquet"), layout, images, min_len=min_len, max_len=max_len)
    tiny.write_conversations(os.path.join(out, "conv", "c.jsonl"), keys, list(CATEGORIES))
    return {
        "model": os.path.join(out, "base"),
        "init": {"source_model": os.path.join(out, "src"), "tokenizer": os.path.join(out, "tok"),
                 "layout": os.path.join(out, "corpus", "layout.yaml")},
        "data": {"conversations": [{"path": os.path.join(out, "conv")}], "corpus": [os.path.join(out, "corpus")], "image_key": "stem"},
        "gradient_checkpointing": False,
    }


def _steady(rows: list[dict]) -> list[dict]:
    return rows[1:] or rows  # the first step pays for warm-up


def strategies(out: str, steps: int, gpus: int = 0) -> dict:
    from pipeline.train import api
    from schemas.train import TrainConfig

    world = _world(os.path.join(out, "world-s"), 128)
    result = {}
    for strategy in ("ddp", "fsdp"):
        stage = {"max_steps": steps, "batch_size": 4, "grad_accum": 2, "lr": 3e-3, "log_every": 1000, "strategy": strategy,
                 "checkpoint_every": 10_000}
        cfg = TrainConfig.from_dict({**world, "output": os.path.join(out, f"run-{strategy}"),
                                     "stage1": {**stage, "max_steps": 1}, "stage2": {**stage, "max_steps": 1}, "stage3": stage,
                                     "workers": ({"workers": gpus, "use_gpu": True} if gpus
                                                 else {"workers": 2, "cpus": 0.75})})
        summary = api.run(cfg, "all").results["stage3"]
        rows = _steady([json.loads(line) for line in open(summary["metrics"])])
        workers = gpus or 2
        result[strategy] = {
            "workers": workers,
            "device": "cuda" if gpus else "cpu",
            "steps": summary["steps"],
            "tokens_per_s_per_worker_median": round(statistics.median(r["tokens_per_s"] for r in rows) / workers),
            "step_ms_median": round(1000 * statistics.median(r["step_s"] for r in rows), 1),
            "final_loss": round(summary["final_loss"], 4),
            "worker_peak_rss_mib": [round(b / 2**20) for b in summary["worker_peak_rss_bytes"]],
        }
    result["fsdp_over_ddp"] = round(result["fsdp"]["tokens_per_s_per_worker_median"] / result["ddp"]["tokens_per_s_per_worker_median"], 2)
    return result


def preparation(out: str, records: int) -> dict:
    """records/s of `prepare`: in process vs Ray Data with 1 and 2 actors. Ray's fixed start-up (pipeline,
    actors loading the tokenizer) is measured on a small corpus in the same run and reported apart."""
    from pipeline.train import api
    from schemas.train import TrainConfig

    big = _world(os.path.join(out, "world-p"), records // 4, min_len=200, max_len=400)
    small = _world(os.path.join(out, "world-p-small"), 50, min_len=200, max_len=400)
    result = {}
    for name, prep in (("local", {"executor": "local"}), ("ray_1_actor", {"executor": "ray", "workers": 1, "cpus": 0.9}),
                       ("ray_2_actors", {"executor": "ray", "workers": 2, "cpus": 0.9})):
        seconds = {}
        if prep["executor"] == "ray":  # the first Ray run also starts the local cluster: not the stage's start-up
            warm = TrainConfig.from_dict({**small, "output": os.path.join(out, f"prep-{name}-warm"), "prepare": prep})
            api.run(warm, "init")
            api.run(warm, "prepare")
        for size, world in (("small", small), ("big", big)):
            cfg = TrainConfig.from_dict({**world, "output": os.path.join(out, f"prep-{name}-{size}"), "prepare": prep})
            api.run(cfg, "init")
            t0 = time.perf_counter()
            stats = api.run(cfg, "prepare").results["prepare"]
            seconds[size] = (time.perf_counter() - t0, stats["records"])
        (t_big, n_big), (t_small, n_small) = seconds["big"], seconds["small"]
        result[name] = {"records": n_big, "seconds": round(t_big, 2), "records_per_s": round(n_big / t_big),
                        "startup_s": round(t_small, 2), "steady_records_per_s": round((n_big - n_small) / (t_big - t_small)) if t_big > t_small else None}
    local = result["local"]["records_per_s"]
    result["ray_2_actors_over_local"] = round(result["ray_2_actors"]["records_per_s"] / local, 2)
    steady = [result[k]["steady_records_per_s"] for k in ("ray_2_actors", "ray_1_actor")]
    result["ray_2_over_1_actor_steady"] = round(steady[0] / steady[1], 2) if all(steady) else None
    return result


def stages(out: str, images: int) -> dict:
    from pipeline.train import api
    from schemas.train import TrainConfig

    world = _world(os.path.join(out, "world-1"), images)
    stage = {"epochs": 1, "batch_size": 4, "grad_accum": 2, "lr": 3e-3, "log_every": 1000}
    cfg = TrainConfig.from_dict({**world, "output": os.path.join(out, "run-1"), "stage1": stage, "stage2": stage, "stage3": stage})
    t0 = time.time()
    summary = api.run(cfg, "all")
    result = {"workers": 1, "images": images, "total_s": round(time.time() - t0, 1), "stages": {}}
    for name in ("stage1", "stage2", "stage3"):
        s = summary.results[name]
        rows = [json.loads(line) for line in open(s["metrics"])]
        result["stages"][name] = {
            "fit_s": round(s["fit_seconds"], 1),
            "steps": s["steps"],
            "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in _steady(rows))),
            "loss_first_last": [round(rows[0]["loss"], 3), round(rows[-1]["loss"], 3)],
        }
    return result


MEMORY_GROWTH_MAX = 25e6  # bytes of worker peak RSS
MEMORY_DATA_GROWTH_MIN = 80e6  # bytes of input_ids + labels (int32) more in the big run


def memory(out: str) -> dict:
    """Peak RSS of the one Ray Train worker over 3 steps of stage 1, with 10x more sequences the second time.
    The sizes are the target's, also with --quick: a smaller run could not tell streaming from holding the file."""
    from pipeline.train import api, tiny
    from schemas.layout import IdLayout
    from schemas.train import TrainConfig

    tok = tiny.build_tokenizer(os.path.join(out, "mem-tok"))
    tiny.build_model(os.path.join(out, "mem-src"), len(tok), layers=2)
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=256, num_merges=256)
    runs = {}
    for n in (1500, 15000):
        root = os.path.join(out, f"mem-{n}")
        keys = tiny.write_corpus(os.path.join(root, "corpus", "p.parquet"), layout, n, min_len=380, max_len=420, seed=n)
        tiny.write_conversations(os.path.join(root, "conv", "c.jsonl"), keys, ["foundation", "perception"])
        stage = {"epochs": 2, "batch_size": 2, "grad_accum": 2}
        cfg = TrainConfig.from_dict({
            "model": os.path.join(root, "base"), "output": os.path.join(root, "run"),
            "init": {"source_model": os.path.join(out, "mem-src"), "tokenizer": os.path.join(out, "mem-tok"),
                     "layout": os.path.join(root, "corpus", "layout.yaml")},
            "data": {"conversations": [{"path": os.path.join(root, "conv")}], "corpus": [os.path.join(root, "corpus")],
                     "image_key": "stem", "max_length": 512, "heldout_fraction": 0.0},
            "stage1": {**stage, "lr": 1e-2, "max_steps": 3}, "stage2": stage, "stage3": stage,
            "workers": {"workers": 1, "max_failures": 0}, "gradient_checkpointing": False})
        api.run(cfg, "init")
        summary = api.run(cfg, "stage1").results["stage1"]
        with open(os.path.join(root, "run", "data", "stats.json")) as f:
            stats = json.load(f)
        runs[n] = {"images": n, "sequences": stats["sequences"], "data_bytes": stats["tokens"] * 8,  # ids + labels, int32
                   "worker_peak_rss_bytes": summary["worker_peak_rss_bytes"][0]}
    small, big = runs[1500], runs[15000]
    growth = big["worker_peak_rss_bytes"] - small["worker_peak_rss_bytes"]
    data_growth = big["data_bytes"] - small["data_bytes"]
    return {"runs": list(runs.values()), "worker_peak_rss_mib": [round(r["worker_peak_rss_bytes"] / 2**20, 1) for r in runs.values()],
            "peak_growth_mb": round(growth / 1e6, 1), "data_growth_mb": round(data_growth / 1e6, 1),
            "target": "< 25 MB peak growth while the data grows > 80 MB",
            "within_target": growth < MEMORY_GROWTH_MAX and data_growth > MEMORY_DATA_GROWTH_MIN}


PARTS = ("strategies", "preparation", "one_worker", "memory")


def run(out: str, records: int = 20_000, quick: bool = False, only: tuple[str, ...] = PARTS, gpus: int = 0) -> dict:
    from pipeline.train.api import ensure_ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    ensure_ray()
    parts = {
        "strategies": lambda: strategies(out, steps=8 if quick else 24, gpus=gpus),
        "preparation": lambda: preparation(out, records=2_000 if quick else records),
        "one_worker": lambda: stages(out, images=32 if quick else 64),
        "memory": lambda: memory(out),
    }
    return {name: parts[name]() for name in only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    parser.add_argument("--gpus", type=int, default=0, help="strategies on this many GPU workers (untested here)")
    args = parser.parse_args()
    only = tuple(p for p in args.only.split(",") if p)
    unknown = [p for p in only if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="vbpe-bench-train-"))
    print(json.dumps(run(out, args.records, args.quick, only, args.gpus), indent=1))


if __name__ == "__main__":
    main()
