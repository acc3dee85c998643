"""`vbpe eval ablation --out DIR [--config A.yaml]` and the `vbpe train eval` step's flags and output."""
from __future__ import annotations

import argparse
import json
from typing import Any

TYPE_ABBREV = {"foundation": "FD", "perception": "PD", "reasoning": "RD", "instruction": "ID"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def heldout_table(models: dict[str, dict[str, Any]]) -> str:
    """Plain-text table: one row per model, accuracy and loss overall and per data type."""
    head = ["model", "answers", "acc %", "loss"] + [f"{a} acc" for a in TYPE_ABBREV.values()] + [f"{a} loss" for a in TYPE_ABBREV.values()]
    rows = [head]
    for name, m in models.items():
        by = m.get("by_type", {})
        rows.append([name, str(m["answers"]), _pct(m["answer_accuracy"]), _loss(m["answer_loss"])]
                    + [_pct(by.get(c, {}).get("answer_accuracy")) for c in TYPE_ABBREV]
                    + [_loss(by.get(c, {}).get("answer_loss")) for c in TYPE_ABBREV])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def add_train_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", help="only this model: 0 (the base model), 1, 2, 3 (default: base + every completed stage)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=32, help="sequences per forward pass (default 32)")
    p.add_argument("--force", action="store_true", help="score again even when the stored figures are up to date")


def train_eval(cfg, args: argparse.Namespace) -> int:
    from pipeline.evaluate.heldout import results_path, run_eval

    out = run_eval(cfg, args.stage, args.batch_size, args.force)
    print(heldout_table(out["models"]))
    print(f"held-out: {out['heldout_sequences']} sequences of {out['heldout_images']} images; "
          f"figures in {results_path(cfg.output)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from pipeline.configargs import add_config_arguments
    from schemas.evaluate import AblationConfig

    p = sub.add_parser("eval", help="evaluation: the with/without visual-BPE ablation")
    steps = p.add_subparsers(dest="eval_step", required=True, metavar="STEP")
    a = steps.add_parser("ablation", help="VQ-only vs visual BPE: same corpus, model, curriculum and budget",
                         description="Run one corpus through arms that differ only in the vocabulary (0 merges = "
                                     "VQ only, and M merges) and compare them on held-out images. Without --config: "
                                     "the CPU preset (minutes on 2 cores).")
    add_config_arguments(a, AblationConfig, aliases={"--images": "scenes.images", "--endpoint-url": "storage.endpoint_url"})
    a.set_defaults(handler=_ablation)


def _ablation(args: argparse.Namespace) -> int:
    from pipeline.evaluate.ablation import run_ablation
    from pipeline.evaluate.report import table_text
    from pipeline.configargs import config_from_args

    cfg = config_from_args(args)
    result = run_ablation(cfg)
    print(table_text(result))
    print(json.dumps({"ablation": result["files"]["ablation.json"], "seconds": result["seconds"]}))
    return 0
