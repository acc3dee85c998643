"""Where a training run keeps its files, named once (the driver, the workers and `vbpe train eval` agree).

    <output>/data/sequences.parquet           training sequences (schemas.train.SEQUENCES_SCHEMA)
    <output>/data/heldout.parquet             held-out sequences, same schema, images never seen in training
    <output>/data/sequences.rejects.parquet   records that could not be used, with reasons
    <output>/data/stats.json                  written last: counts and the inputs' content fingerprint
    <output>/data/metrics.json                the preparation's run metrics (pipeline.metrics)
    <output>/ray/<stage>-<fingerprint>/       Ray Train run of a stage: its checkpoints
    <output>/<stage>/model/                   the stage's final HF model (the next stage's base)
    <output>/<stage>/metrics.jsonl            one row per optimizer step
    <output>/<stage>/metrics.json             the stage's run metrics (pipeline.metrics)
    <output>/<stage>/done.json                written last: the stage is complete
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline import storage
from schemas.grids import REJECTS_SUFFIX


@dataclass(frozen=True)
class PreparedFiles:
    """The prepared data of a run: one directory, written by `prepare`."""

    directory: str

    @property
    def sequences(self) -> str:
        return storage.join(self.directory, "sequences.parquet")

    @property
    def heldout(self) -> str:
        return storage.join(self.directory, "heldout.parquet")

    @property
    def rejects(self) -> str:
        return storage.join(self.directory, "sequences" + REJECTS_SUFFIX)

    @property
    def stats(self) -> str:
        return storage.join(self.directory, "stats.json")

    @property
    def metrics(self) -> str:
        return storage.join(self.directory, "metrics.json")


@dataclass(frozen=True)
class RunPaths:
    output: str

    @property
    def data(self) -> PreparedFiles:
        return PreparedFiles(storage.join(self.output, "data"))

    @property
    def ray(self) -> str:
        return storage.join(self.output, "ray")

    def stage(self, stage: str) -> str:
        return storage.join(self.output, stage)

    def model(self, stage: str) -> str:
        return storage.join(self.stage(stage), "model")

    def steps(self, stage: str) -> str:
        return storage.join(self.stage(stage), "metrics.jsonl")

    def stage_metrics(self, stage: str) -> str:
        return storage.join(self.stage(stage), "metrics.json")

    def done(self, stage: str) -> str:
        return storage.join(self.stage(stage), "done.json")
