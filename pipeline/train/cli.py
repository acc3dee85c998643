"""`vbpe train init|prepare|stage1|stage2|stage3|all --config FILE.yaml`."""
from __future__ import annotations

import argparse
import json
import sys

STEPS = {
    "init": "extend a local HF causal LM by the id layout; write the base model (config `init`, `model`)",
    "prepare": "conversation records + tokenized corpus -> training sequences, rejects and stats",
    "stage1": "embedding alignment: only the new vocabulary rows train",
    "stage2": "selective fine-tuning: new rows + the first unfreeze_fraction of the layers",
    "stage3": "full fine-tuning",
    "all": "init (if configured), then stage1, stage2, stage3; completed steps are skipped",
    "eval": "held-out answer loss and exact-match accuracy of the base model and each completed stage",
}


def _run(step: str, args: argparse.Namespace) -> int:
    from pipeline import storage
    from schemas.train import TrainConfig

    cfg = TrainConfig.from_yaml(args.config)
    if cfg.storage:
        storage.set_default_storage(cfg.storage)
    from pipeline.train import stages

    if step == "init":
        out = stages.run_init(cfg, force=args.force)
    elif step == "prepare":
        out = stages.run_prepare(cfg)
    elif step == "eval":
        from pipeline.evaluate.cli import train_eval

        return train_eval(cfg, args)
    else:
        import ray

        if not ray.is_initialized():
            ray.init()  # joins the cluster under `ray job submit` / RAY_ADDRESS, else starts a local one
        out = stages.run_all(cfg) if step == "all" else stages.run_stage(cfg, step)
    json.dump(out, sys.stdout, indent=1, default=str)
    print()
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="three-stage curriculum training of an LLM on visual tokens (Ray Train)")
    steps = parser.add_subparsers(dest="train_step", required=True, metavar="STEP")
    for step, text in STEPS.items():
        p = steps.add_parser(step, help=text, description=text)
        p.add_argument("--config", required=True, help="train config YAML (schemas/train.py)")
        if step == "init":
            p.add_argument("--force", action="store_true", help="rebuild the base model even if it exists")
        if step == "eval":
            from pipeline.evaluate.cli import add_train_eval_flags

            add_train_eval_flags(p)
        p.set_defaults(handler=lambda args, step=step: _run(step, args))

