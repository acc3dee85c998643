"""The train stage's entry for the shared stage contract: `run(config, step) -> TrainSummary`.

`vbpe train STEP`, `python -m jobs.train --stage STEP` and `vbpe submit train` all end here. Steps:
init, prepare, stage1, stage2, stage3, and all (init when configured, then the three stages;
completed parts are skipped). The summary is JSON-safe and carries the counts of the preparation
(records in = sequences + held out + rejected) for the run's metrics file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from schemas.base import ConfigError
from schemas.train import STAGES, TrainConfig

STEPS = ("all", "init", "prepare", *STAGES)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return str(value)


@dataclass
class TrainSummary:
    step: str
    results: dict[str, dict] = field(default_factory=dict)  # step name -> what it returned, in run order

    ok: bool = True  # a train step either completes or raises

    def to_json(self) -> dict[str, Any]:
        if self.step == "all":
            return _json_safe({"step": "all", **self.results})
        return _json_safe({"step": self.step, **self.results.get(self.step, {})})

    def lines(self) -> list[str]:
        out = []
        for name, r in self.results.items():
            if r.get("skipped"):
                out.append(f"{name}: already complete, skipped")
            elif name == "init":
                out.append(f"init: base model with {r.get('new_rows')} new rows ({r.get('rule')} init)")
            elif name == "prepare":
                out.append(f"prepare: {r['records']} records -> {r['sequences']} sequences, {r['heldout']} held out, "
                           f"{r['rejected']} rejected")
            else:
                held = r.get("heldout_loss")
                out.append(f"{name}: {r.get('steps')} steps, final loss {r.get('final_loss'):.4f}"
                           + (f", held-out loss {held:.4f}" if held is not None else "") + f", model {r.get('model')}")
        return out

    def metrics(self) -> dict[str, Any]:
        prep = self.results.get("prepare", {})
        figures: dict[str, Any] = {"step": self.step}
        if prep:
            figures.update(rows_in=prep["records"], rows_out=prep["sequences"] + prep["heldout"],
                           rows_rejected=prep["rejected"], reject_reasons=prep.get("reject_reasons", {}))
        for name in STAGES:
            r = self.results.get(name)
            if r:
                figures[name] = {k: r.get(k) for k in ("steps", "final_loss", "heldout_loss", "skipped") if k in r}
        return _json_safe(figures)


def run(cfg: TrainConfig, step: str = "all", *, force_init: bool = False, hooks=None) -> TrainSummary:
    from pipeline.train import driver, executors

    if step not in STEPS:
        raise ConfigError(f"unknown train step {step!r}; expected one of {', '.join(STEPS)}")
    stages = STAGES if step == "all" else tuple(s for s in STAGES if s == step)
    local = executors.executor(cfg, stages) == "local"  # refuses what one local rank cannot do before anything runs
    summary = TrainSummary(step)
    if step in ("init", "all") and (step == "init" or cfg.init is not None):
        summary.results["init"] = driver.run_init(cfg, force=force_init)
    if step == "init":
        return summary
    summary.results["prepare"] = driver.run_prepare(cfg)
    if step == "prepare":
        return summary
    if not local:
        ensure_ray(cfg.workers.ray_address)
    for stage in stages:
        summary.results[stage] = driver.run_stage(cfg, stage, hooks=hooks, stats=summary.results["prepare"])
    return summary


def ensure_ray(address: str | None = None) -> None:
    from pipeline import execution

    execution.ensure_ray(address)  # joins `address` or the cluster under `ray job submit` / RAY_ADDRESS, else starts a private local one
