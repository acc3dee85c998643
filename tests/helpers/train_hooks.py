"""Hooks the train tests inject into the worker loop (pipeline.train.job.Hooks): faults and probes.

Ray ships them to its workers by value (see `shippable`), so the workers need not import tests/.
"""
from __future__ import annotations

import json
import os
import sys

from pipeline.train.job import Hooks


def shippable() -> None:
    """Let Ray's cloudpickle send this module's classes by value to workers that cannot import tests/."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CrashOnce(Hooks):
    """Kill the worker process (as a lost node would) the first time `rank` passes `when` at `step`.

    when: "checkpoint" (right after the checkpoint of that step is complete on storage) or "step".
    The marker file makes it happen once across restarts.
    """

    def __init__(self, step: int, marker: str, rank: int = 0, when: str = "checkpoint"):
        self.step, self.marker, self.rank, self.when = step, marker, rank, when

    def _maybe(self, step: int, rank: int, when: str) -> None:
        if when == self.when and step == self.step and rank == self.rank and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)

    def after_step(self, stage, step, rank, records) -> None:
        self._maybe(step, rank, "step")

    def after_checkpoint(self, stage, step, rank) -> None:
        self._maybe(step, rank, "checkpoint")


class RecordBatches(Hooks):
    """Append, per optimizer step and rank, the plan rows trained on to `directory/<stage>-<rank>.jsonl`."""

    def __init__(self, directory: str):
        self.directory = directory

    def after_step(self, stage, step, rank, records) -> None:
        with open(os.path.join(self.directory, f"{stage}-{rank}.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "rows": [int(r) for r in records]}) + "\n")


class KillDriver(Hooks):
    """SIGKILL the driver process `pid` (as a killed `vbpe train` or a lost head node would) right after the
    checkpoint of `step` is complete on storage, then hold every rank there until Ray kills the job's workers,
    so nothing past that checkpoint reaches storage. `then`: hooks that run before (e.g. CrashOnce, RecordBatches)."""

    def __init__(self, step: int, pid: int, *then: Hooks):
        self.step, self.pid, self.then = step, pid, then

    def after_step(self, stage, step, rank, records) -> None:
        for hooks in self.then:
            hooks.after_step(stage, step, rank, records)

    def after_checkpoint(self, stage, step, rank) -> None:
        for hooks in self.then:
            hooks.after_checkpoint(stage, step, rank)
        if step == self.step:
            import signal
            import time

            if rank == 0:
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(300)  # Ray kills a job's actors once it notices that their driver is gone
            os._exit(1)
