"""Shared fixtures. Ray: one real local cluster per xdist worker process, reused by the modules that
run there (starting one costs 10-20 s on the 2-core test box), and restarted for a module whenever
reuse could change what it sees: the environment differs from the one the cluster was started with
(its workers inherited that one, e.g. S3 credentials), or the previous module did not leave the
cluster as it found it (actors, placement groups or CPUs still held, e.g. after killing workers)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The longest modules (by --durations on the 2-core box), longest first: run first, so that the two xdist
# workers finish together (a worker takes the next module when its current one has <= 2 tests left, so the
# short modules at the end even out the two). `make test` passes --no-loadscope-reorder, else xdist orders
# modules by their number of tests, which put the single-test end-to-end module last. Any module not listed
# keeps its place after these. Estimated seconds on one xdist worker: fsdp ~330, cluster_e2e ~150,
# train_local ~130, quantize_pipeline ~105, s3_outage ~100, train_faults ~90, ablation ~85, then < 75 each.
LONGEST_FIRST = ["test_train_fsdp.py", "test_cluster_e2e.py", "test_train_local.py", "test_quantize_pipeline.py",
                 "test_s3_outage.py", "test_train_faults.py", "test_ablation.py", "test_submit_ray.py", "test_learn_ray.py",
                 "test_tokenize_shards.py", "test_train_s3.py", "test_s3_quantize.py", "test_train_model.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order in a module


NUM_CPUS = 2
_VOLATILE = {"PYTEST_CURRENT_TEST"}
_cluster: dict = {}  # the running cluster: gcs address, temp dir, environment it was started with


def _environment() -> dict[str, str]:
    """What the cluster's processes inherit, less what changes per test or is set by OpenMP-linked imports."""
    return {k: v for k, v in os.environ.items() if k not in _VOLATILE and not k.startswith("KMP_")}


def _stop(ray) -> None:
    if ray.is_initialized():
        ray.shutdown()
    if _cluster:
        shutil.rmtree(_cluster["temp_dir"], ignore_errors=True)
        _cluster.clear()


def _start(ray) -> None:
    """A real local Ray with 2 logical CPUs, in a short temp dir we own (Ray's socket paths are length-limited)."""
    _stop(ray)  # also a private Ray that a stage run in this process started for itself
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    ray.init(
        num_cpus=NUM_CPUS,
        include_dashboard=False,
        _temp_dir=tmp,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}},
    )
    _cluster.update(address=ray.get_runtime_context().gcs_address, temp_dir=tmp, env=_environment())


def _reusable(ray) -> bool:
    return (bool(_cluster) and ray.is_initialized() and ray.get_runtime_context().gcs_address == _cluster["address"]
            and _environment() == _cluster["env"])


def _left_over(ray) -> list[str]:
    """What a module left behind on the cluster (empty when it is as a fresh one)."""
    if not ray.is_initialized():
        return ["not running"]
    from ray.util import list_named_actors, placement_group_table

    held = []
    actors = [a for a in list_named_actors(all_namespaces=True)  # not Ray Data's / Train's own singletons
              if not (a["namespace"].startswith("_") or a["namespace"] == a["name"])]
    if actors:
        held.append(f"named actors {sorted(a['name'] for a in actors)}")
    groups = [g for g in placement_group_table().values() if g.get("state") not in ("REMOVED",)]
    if groups:
        held.append(f"{len(groups)} placement groups")
    free = ray.available_resources().get("CPU", 0.0)
    if free < NUM_CPUS:
        held.append(f"{NUM_CPUS - free:g} CPUs")
    return held


@pytest.fixture(scope="session")
def _ray_session():
    import ray

    yield
    _stop(ray)


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """The worker process's Ray, started (again) when this module may not reuse it; checked when the module ends."""
    import ray

    if not _reusable(ray) or _left_over(ray):  # (a stage run in-process by a module without this fixture may use it)
        _start(ray)
    yield ray
    deadline = time.monotonic() + 20
    while (held := _left_over(ray)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if held:
        warnings.warn(f"restarting Ray after this module: it left {', '.join(held)}", stacklevel=1)
        _stop(ray)
