"""The stage contract and the registry of stages.

A stage is a config class plus `run(config) -> summary`. The summary says what the run did:

    ok          False when some inputs failed (the run still finished; a re-run retries them)
    to_json()   a JSON-safe dict (what `python -m jobs.<stage>` prints)
    lines()     a few lines for people
    metrics()   counts for the run's metrics file: rows_in / rows_out / rows_rejected, optional
                merges and reject_reasons, plus any stage-specific figures

Everything around a run (metrics file, exit status, one-line errors) is the runner's
(pipeline/runner.py), the same for `vbpe <stage>`, `python -m jobs.<stage>` and `vbpe submit`.
Stages are named once, here; `vbpe`, `jobs/` and `vbpe submit` resolve them from this table.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from schemas.base import ConfigError


class Summary(Protocol):
    @property
    def ok(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...

    def lines(self) -> list[str]: ...

    def metrics(self) -> dict[str, Any]: ...


def _load(ref: str) -> Any:
    module_name, attr = ref.split(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class Stage:
    name: str
    config: str  # "module:Class", a schemas.base.JobConfig subclass
    run: str  # "module:function": run(cfg) -> Summary (run(cfg, step) for a stage with steps)
    help: str = ""
    description: str = ""
    output_field: str = "out"  # the config field whose location the metrics file goes next to
    positional: str | None = "inputs"  # the list field taken from positional arguments on the command line
    metavar: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # extra flag -> dotted config field
    steps: tuple[str, ...] = ()  # train: init | prepare | stage1 | ...
    default_step: str | None = None
    own_command: bool = False  # its `vbpe` sub-command is registered by its own module, not derived here

    @property
    def entry_module(self) -> str:
        return f"jobs.{self.name}"

    def config_class(self) -> type:
        return _load(self.config)

    def run_function(self) -> Callable[..., Summary]:
        return _load(self.run)

    def output(self, cfg: Any) -> str | None:
        return getattr(cfg, self.output_field, None)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "quantize", "schemas.quantize:QuantizeConfig", "pipeline.quantize.api:run",
            help="WebDataset shards -> code-grid Parquet (Ray)",
            description="Encode WebDataset tar shards (local, globs, {a,b}, s3://) into code grids, one Parquet file "
            "per shard; re-runs do only shards not done yet. Exit 3 if some shards failed.",
            metavar="SHARDS",
            aliases={"--num-actors": "workers", "--cpus-per-actor": "cpus", "--max-pixels": "ingest.max_pixels",
                     "--endpoint-url": "storage.endpoint_url"},
        ),
        Stage(
            "learn", "schemas.learn:LearnConfig", "pipeline.learn.api:run",
            help="learn a visual BPE vocabulary from code grids",
            description="Learn a visual BPE vocabulary (P = F + alpha * S) from code-grid Parquet.",
            metavar="GRIDS",
            aliases={"--actor-cpus": "cpus", "--endpoint-url": "storage.endpoint_url"},
        ),
        Stage(
            "tokenize", "schemas.tokenize:TokenizeConfig", "pipeline.tokenize.api:run",
            help="apply a vocabulary to code grids or image shards: versioned token corpus for trainers (Parquet)",
            description="Encode code-grid Parquet (or WebDataset image shards, quantized in the same Ray Data pass) "
            "with a learned vocabulary. Output: OUT/<version>/data/*.parquet, one version per (vocabulary, layout); "
            "re-runs process only inputs not yet done. Exit 3 if some inputs failed.",
            metavar="INPUTS",
            aliases={"--quantizer": "quantize.quantizer", "--batch-size": "quantize.batch_size",
                     "--num-actors": "quantize.num_actors", "--num-gpus": "quantize.num_gpus",
                     "--cpus-per-task": "cpus", "--endpoint-url": "storage.endpoint_url"},
        ),
        # `vbpe train STEP` is the train stage's own command (pipeline/train/cli.py); jobs and submit use the runner.
        Stage("train", "schemas.train:TrainConfig", "pipeline.train.api:run", output_field="output", positional=None,
              steps=("all", "init", "prepare", "stage1", "stage2", "stage3"), default_step="all", own_command=True),
        # `vbpe eval ablation` is its own command (pipeline/evaluate/cli.py) and runs through the runner too.
        Stage("ablation", "schemas.evaluate:AblationConfig", "pipeline.evaluate.api:run", positional=None,
              help="VQ-only vs visual BPE on one corpus (held-out answers)", own_command=True),
    )
}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None
