"""The stages a Ray job can run, named once: their config class, run function and job entrypoint.

Entrypoints (`jobs/`), `vbpe submit` and the infra tests all resolve stages here, so a stage that is
not part of this build fails with one clear message instead of an ImportError deep in a job.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from schemas.base import ConfigError


class StageUnavailable(ConfigError):
    """The stage's code is not in this build (e.g. its branch has not been merged yet)."""


@dataclass(frozen=True)
class Stage:
    name: str
    config: str  # "module:Class", a schemas.base.Config subclass
    run: str  # "module:function", called as run(cfg) or run(cfg, step)
    takes_step: bool = False  # train: run(cfg, step) with --stage
    default_step: str | None = None

    @property
    def entry_module(self) -> str:
        return f"jobs.{self.name}"

    def _load(self, ref: str, what: str) -> Any:
        module_name, attr = ref.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                raise StageUnavailable(f"stage {self.name!r} is not available in this build: no module {module_name} ({what})") from None
            raise
        try:
            return getattr(module, attr)
        except AttributeError:
            raise StageUnavailable(f"stage {self.name!r} is not available in this build: {module_name} has no {attr} ({what})") from None

    def config_class(self) -> type:
        return self._load(self.config, "its config schema")

    def run_function(self) -> Callable[..., Any]:
        return self._load(self.run, "its run function")

    def available(self) -> bool:
        try:
            self.config_class()
            self.run_function()
        except StageUnavailable:
            return False
        return True


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("quantize", "schemas.quantize:QuantizeConfig", "pipeline.quantize.api:run"),
        Stage("learn", "schemas.learn:LearnConfig", "pipeline.learn.api:run"),
        Stage("tokenize", "schemas.tokenize:TokenizeConfig", "pipeline.tokenize.api:run"),
        # jobs/train.py delegates to `vbpe train STEP` (the train stage's own CLI); `run` is the agreed
        # api name for the shared entry (jobs/_entry.py), used once pipeline/train/api.py exists.
        Stage("train", "schemas.train:TrainConfig", "pipeline.train.api:run", takes_step=True, default_step="all"),
    )
}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None
