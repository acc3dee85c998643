"""Training figures on the tiny model: seconds per stage fit on Ray Train and tokens/s per step.

    python -m bench.bench_train [--out DIR] [--workers N] [--images N]
Prints one JSON object; the per-step numbers come from the stages' metrics files.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def run(out: str, workers: int = 1, images: int = 64) -> dict:
    import ray

    from pipeline.train import tiny
    from pipeline.train import api
    from schemas.layout import IdLayout
    from schemas.train import CATEGORIES, TrainConfig

    tok = tiny.build_tokenizer(os.path.join(out, "tok"))
    tiny.build_model(os.path.join(out, "src"), len(tok))
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=256, num_merges=256)
    keys = tiny.write_corpus(os.path.join(out, "corpus", "p.parquet"), layout, images, min_len=64, max_len=128)
    tiny.write_conversations(os.path.join(out, "conv", "c.jsonl"), keys, list(CATEGORIES))
    stage = {"epochs": 1, "batch_size": 4, "grad_accum": 2, "lr": 3e-3, "log_every": 1000}
    cfg = TrainConfig.from_dict({
        "model": os.path.join(out, "base"),
        "output": os.path.join(out, "run"),
        "init": {"source_model": os.path.join(out, "src"), "tokenizer": os.path.join(out, "tok"), "layout": os.path.join(out, "corpus", "layout.yaml")},
        "data": {"conversations": [{"path": os.path.join(out, "conv")}], "corpus": [os.path.join(out, "corpus")], "image_key": "stem"},
        "stage1": stage, "stage2": stage, "stage3": stage,
        "workers": {"num_workers": workers},
        "gradient_checkpointing": False,
    })
    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    t0 = time.time()
    summary = api.run(cfg, "all")
    stages = [summary.results[s] for s in ("stage1", "stage2", "stage3")]
    result = {"workers": workers, "images": images, "total_s": round(time.time() - t0, 1), "stages": {}}
    for s in stages:
        rows = [json.loads(line) for line in open(s["metrics"])]
        steady = rows[1:] or rows
        result["stages"][s["stage"]] = {
            "fit_s": round(s["fit_seconds"], 1),
            "steps": s["steps"],
            "train_s": round(s["seconds_this_attempt"], 2),
            "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in steady)),
            "step_ms_median": round(1000 * statistics.median(r["step_s"] for r in steady), 1),
            "loss_first_last": [round(rows[0]["loss"], 3), round(rows[-1]["loss"], 3)],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="vbpe-bench-train-")
    print(json.dumps(run(out, args.workers, args.images), indent=1))


if __name__ == "__main__":
    main()
