"""A train stage's first attempt in its own driver process, joined to this process's Ray cluster, that a hook
kills (tests of a killed driver); and the wait until Ray has cleaned up after that driver's job."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = """
import os, sys
import ray
from pipeline.train.driver import run_stage
from schemas.train import TrainConfig
from tests.helpers.train_hooks import CrashOnce, KillDriver, RecordBatches, shippable

config, address, stage, job_file, kill_after, crash_step, crash_rank, marker, batches = sys.argv[1:]
ray.init(address=address, configure_logging=False, log_to_driver=False,
         runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
shippable()
with open(job_file, "w") as f:
    f.write(ray.get_runtime_context().get_job_id())
cfg = TrainConfig.from_yaml_text(open(config).read(), config)
hooks = KillDriver(int(kill_after), os.getpid(), CrashOnce(int(crash_step), marker, int(crash_rank)), RecordBatches(batches))
run_stage(cfg, stage, hooks=hooks)
"""


@dataclass(frozen=True)
class Attempt:
    returncode: int
    job_id: str
    log: str  # the child's output, for failure messages


def run_killed(cfg, stage: str, workdir, kill_after: int, crash_step: int, crash_rank: int, marker: str,
               batches: str, timeout: float = 600) -> Attempt:
    """Run `stage` of `cfg` in a child driver whose workers crash once (rank `crash_rank` after the checkpoint of
    `crash_step`, Ray Train restarts them) and SIGKILL the child after the checkpoint of `kill_after`."""
    import ray

    config, job_file, log_file = (os.path.join(workdir, name) for name in ("config.yaml", "job_id", "child.log"))
    with open(config, "w") as f:
        f.write(cfg.to_yaml())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    args = [config, ray.get_runtime_context().gcs_address, stage, job_file, kill_after, crash_step, crash_rank, marker, batches]
    with open(log_file, "w") as log:
        rc = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, timeout=timeout).returncode
    job_id = open(job_file).read().strip() if os.path.exists(job_file) else ""
    return Attempt(rc, job_id, open(log_file).read()[-4000:])


def wait_until_gone(job_id: str, timeout: float = 120) -> None:
    """Ray kills a dead driver's actors (and frees their placement groups) asynchronously: wait until every actor
    of `job_id` is dead and no placement group is left, so a new attempt does not race the dying workers.
    Detached actors outlive their job by design (Ray Train's PlacementGroupCleaner, no CPUs) and are not waited for."""
    import ray
    from ray._private import state
    from ray.util import placement_group_table

    deadline = time.time() + timeout
    while True:
        alive = [a["ActorClassName"] for a in state.actors(job_id=ray.JobID.from_hex(job_id)).values()
                 if a["State"] != "DEAD" and not a["IsDetached"]]
        groups = [g["placement_group_id"] for g in placement_group_table().values() if g["state"] != "REMOVED"]
        if not alive and not groups:
            return
        if time.time() > deadline:
            raise AssertionError(f"job {job_id} still has actors {alive} and placement groups {groups} after {timeout} s")
        time.sleep(0.2)
