"""The CPU preset of `vbpe eval ablation`, end to end in a fresh directory: its figures and its wall time
(target: <= 15 minutes on 2 cores, the whole ablation from nothing). `--quick`: a small corpus, short stages."""
from __future__ import annotations

import os
import shutil
import time

QUICK = {"scenes": {"images": 400}, "kmeans": {"fit_images": 200, "fit_patches": 10_000},
         "llm": {"tiny": {"warmup_steps": 50}},
         "stage1": {"max_steps": 20}, "stage2": {"max_steps": 20}, "stage3": {"max_steps": 20}}
TARGET_SECONDS = 15 * 60


def run(out: str, quick: bool) -> dict:
    from pipeline.evaluate.ablation import run_ablation
    from schemas.evaluate import AblationConfig

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cfg = AblationConfig.from_dict({**(QUICK if quick else {}), "out": out})
    t0 = time.perf_counter()
    result = run_ablation(cfg)
    wall = time.perf_counter() - t0
    arms = {a["name"]: {"merges": a["merges"], "budget": a["budget"], "tokens_per_image": round(a["tokens_per_image"], 1),
                        "steps": a["steps"], "train_tokens": a["train_tokens"],
                        "heldout_answer_loss": round(a["heldout"]["answer_loss"], 4),
                        "heldout_answer_accuracy": round(a["heldout"]["answer_accuracy"], 4),
                        "by_type_accuracy": {t: round(v["answer_accuracy"], 4) for t, v in a["heldout"]["by_type"].items()},
                        "seconds": a["seconds"]} for a in result["arms"]}
    comparisons = [{"arm": c["second"], "difference": round(c["difference"], 4),
                    "difference_95": [round(x, 4) for x in c["difference_95"]], "mcnemar_p": c["mcnemar_p"]}
                   for c in result["comparisons"]]
    return {"wall_seconds": round(wall, 1), "target_seconds": TARGET_SECONDS, "within_target": wall <= TARGET_SECONDS,
            "seconds": result["seconds"], "arms": arms, "comparisons": comparisons,
            "majority_answer_accuracy": round(result["baselines"]["majority_answer"]["answer_accuracy"], 4),
            "heldout_keys": result["heldout_keys"], "train_keys": result["train_keys"],
            "ablation_json": result["files"]["ablation.json"], "table": result["files"].get("ablation.md")}
