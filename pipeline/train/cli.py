"""`vbpe train init|prepare|stage1|stage2|stage3|all --config FILE.yaml`."""
from __future__ import annotations

import argparse
import json
import sys

STEPS = {
    "init": "extend a local HF causal LM by the id layout; write the base model (config `init`, `model`)",
    "prepare": "conversation records + tokenized corpus -> training and held-out sequences, rejects and stats",
    "stage1": "embedding alignment: only the new vocabulary rows train",
    "stage2": "selective fine-tuning: new rows + the first unfreeze_fraction of the layers",
    "stage3": "full fine-tuning",
    "all": "init (if configured), then stage1, stage2, stage3; completed steps are skipped",
    "eval": "held-out answer loss and exact-match accuracy of the base model and each completed stage",
    "plan": "per-GPU memory of every stage under DDP, FSDP and FSDP + offload, from the model's config alone",
}


def _plan(args: argparse.Namespace) -> int:
    from pipeline.configargs import load_config
    from pipeline.train.plan import memory_plan
    from schemas.train import TrainConfig

    cfg = load_config(TrainConfig, args.config)
    result = memory_plan(cfg, gpus=args.gpus, gpu_memory_gib=args.gpu_memory, model_config=args.model_config)
    if args.json:
        json.dump(result["json"], sys.stdout, indent=1)
        print()
    else:
        print(result["text"])
    return 0


def _run(step: str, args: argparse.Namespace) -> int:
    """Through the stage runner, as `python -m jobs.train`: the run's metrics file, exit status, one-line errors."""
    from pipeline.configargs import load_config
    from pipeline.runner import run_and_report
    from pipeline.stage import get_stage
    from schemas.train import TrainConfig

    if step == "plan":
        return _plan(args)
    cfg = load_config(TrainConfig, args.config)
    if step == "eval":  # scoring lives with the evaluation code (pipeline/evaluate)
        from pipeline.evaluate.cli import train_eval

        return train_eval(cfg, args)
    return run_and_report(get_stage("train"), cfg, "vbpe train", step, verbose=getattr(args, "verbose", False),
                          json_out=sys.stdout, force_init=getattr(args, "force", False))


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
        if step == "plan":
            p.add_argument("--gpus", type=int, help="GPUs to plan for (default: workers.workers)")
            p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
            p.add_argument("--model-config", help="a config.json to plan for (default: init.source_model's, else model's)")
            p.add_argument("--json", action="store_true", help="print the plan as JSON")
        p.set_defaults(handler=lambda args, step=step: _run(step, args))
