"""The sharded learner on a real local Ray: the vocabulary does not depend on the worker count or the
transport; a killed actor is restarted from the checkpoint, or stops the run with one line and --resume
finishes it."""
from __future__ import annotations

import logging
import os
import signal

import pytest

from pipeline.learn.api import learn_vocabulary as run
from schemas.learn import LearnConfig
from tests.helpers.grids import write_synthetic

pytestmark = pytest.mark.ray


def test_same_vocabulary_for_any_number_of_workers(tmp_path, ray_local):
    write_synthetic(tmp_path, 90, parts=3, side=14, codebook_size=200)

    def learn(workers, **kw):
        cfg = LearnConfig(inputs=[str(tmp_path)], out=str(tmp_path / f"w{workers}.json"), merges=70, workers=workers,
                          actor_cpus=0.5, progress=False, checkpoint_every=0, alpha_rel=0.02, **kw)
        return run(cfg)

    local = learn(0)
    for workers, transport in ((1, "mesh"), (2, "mesh"), (3, "mesh"), (2, "graph"), (3, "relay")):
        sharded = learn(workers, transport=transport)
        assert sharded.merges == local.merges, f"{workers} workers, {transport}"
        assert sharded.corpus == local.corpus and sharded.stopped == local.stopped
    assert not ray_local.util.list_named_actors()


def test_a_run_to_exhaustion_stops_where_the_local_one_does(tmp_path, ray_local):
    """Over the mesh the actors find out themselves that no pair is left, in the middle of a batch that
    checkpoints every 97 merges: the same merges, the same reason, the same checkpoint as in process."""
    write_synthetic(tmp_path / "grids", 24, parts=2, side=8, codebook_size=40)
    vocabs = {}
    for workers in (0, 2):
        vocabs[workers] = run(LearnConfig(inputs=[str(tmp_path / "grids")], out=str(tmp_path / f"x{workers}.json"),
                                          merges=100_000, workers=workers, actor_cpus=0.5, progress=False,
                                          checkpoint_every=97))
    local, mesh = vocabs[0], vocabs[2]
    assert local.stopped == mesh.stopped == "no eligible pair left" and 97 < len(local.merges) < 100_000
    assert mesh.merges == local.merges and mesh.fingerprint() == local.fingerprint()


def test_checkpoint_written_by_two_workers_resumes_on_three(tmp_path, ray_local):
    write_synthetic(tmp_path, 60, parts=2, side=12, codebook_size=150)
    base = dict(inputs=[str(tmp_path)], actor_cpus=0.5, progress=False)
    straight = run(LearnConfig(out=str(tmp_path / "s.json"), merges=50, checkpoint_every=0, **base))
    run(LearnConfig(out=str(tmp_path / "r.json"), merges=20, workers=2, checkpoint_every=10, **base))
    resumed = run(LearnConfig(out=str(tmp_path / "r.json"), merges=50, workers=3, checkpoint_every=10, resume=True, **base))
    assert resumed.merges == straight.merges


KILL_MERGES, KILL_AT, EVERY = 120, 40, 20


def _kill_a_worker() -> int:
    """SIGKILL the last of this run's learner actors (as a lost node would); returns its pid."""
    import ray

    from pipeline.learn.distributed import ACTOR_PREFIX

    actors = sorted((a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_PREFIX)),
                    key=lambda a: a["name"])
    handle = ray.get_actor(actors[-1]["name"], namespace=actors[-1]["namespace"])
    pid = ray.get(handle.pid.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


def _learn_and_kill(tmp_path, monkeypatch, name: str, **kw):
    """Learn on 2 workers and kill one right after the checkpoint of KILL_AT merges is complete (a deterministic
    point: the kill is done before the run goes on, so the run can be short)."""
    from pipeline.learn.checkpoint import Checkpoint

    cfg = LearnConfig(inputs=[str(tmp_path / "grids")], out=str(tmp_path / f"{name}.json"), progress=False,
                      actor_cpus=0.5, workers=2, merges=KILL_MERGES, checkpoint_every=EVERY, alpha_rel=0.02, **kw)
    killed, save = [], Checkpoint.save

    def save_then_kill(self, merges, *args, **kwargs):
        save(self, merges, *args, **kwargs)
        if len(merges) >= KILL_AT and not killed:
            killed.append((_kill_a_worker(), len(merges)))

    monkeypatch.setattr(Checkpoint, "save", save_then_kill)
    vocab = run(cfg)
    return cfg, vocab, killed


@pytest.fixture(scope="module")
def kill_corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    (base / "grids").mkdir()
    write_synthetic(base / "grids", 200, parts=2, side=20, codebook_size=400)
    straight = run(LearnConfig(inputs=[str(base / "grids")], out=str(base / "straight.json"), merges=KILL_MERGES,
                               progress=False, checkpoint_every=0, alpha_rel=0.02))
    return base, straight


@pytest.mark.slow
def test_a_killed_worker_is_restarted_from_the_checkpoint(kill_corpus, ray_local, caplog, tmp_path, monkeypatch):
    base, straight = kill_corpus
    (tmp_path / "grids").symlink_to(base / "grids")
    with caplog.at_level(logging.WARNING, logger="pipeline.learn.api"):
        _, vocab, killed = _learn_and_kill(tmp_path, monkeypatch, "restarted")
    assert killed, "the run finished before a worker could be killed: make it longer"
    assert any("restarting the workers (1 of 2) from the checkpoint" in r.getMessage() for r in caplog.records)
    assert vocab.merges == straight.merges and vocab.corpus == straight.corpus
    assert not [a for a in ray_local.util.list_named_actors(all_namespaces=True) if a["name"].startswith("vbpe-learn-")]


@pytest.mark.slow
def test_a_killed_worker_without_restarts_stops_with_one_line_and_resume_finishes(kill_corpus, ray_local, tmp_path, monkeypatch):
    from pipeline.learn.distributed import WorkerLost

    base, straight = kill_corpus
    (tmp_path / "grids").symlink_to(base / "grids")
    with pytest.raises(WorkerLost) as err:
        _learn_and_kill(tmp_path, monkeypatch, "stopped", restarts=0)
    monkeypatch.undo()
    message = str(err.value)
    assert "\n" not in message and "run again with --resume" in message
    resumed = run(LearnConfig(inputs=[str(tmp_path / "grids")], out=str(tmp_path / "stopped.json"), progress=False,
                              actor_cpus=0.5, workers=2, merges=KILL_MERGES, checkpoint_every=EVERY, alpha_rel=0.02,
                              resume=True))
    assert resumed.merges == straight.merges and resumed.fingerprint() == straight.fingerprint()


def test_the_driver_of_a_run_on_ray_never_loads_numba(tmp_path):
    """The actors run every kernel; the driver only imports their modules, which must not load
    numba and LLVM (~65 MB of the driver's RSS, numba_cache.Kernel)."""
    import subprocess
    import sys

    write_synthetic(tmp_path / "grids", 40, parts=1, side=8, codebook_size=16)
    script = ("import sys\nfrom pipeline.cli import main\n"
              f"code = main(['learn', {str(tmp_path / 'grids')!r}, '--out', {str(tmp_path / 'v.json')!r}, "
              "'--merges', '20', '--workers', '2', '--actor-cpus', '0.5', '--no-progress', '--checkpoint-every', '0'])\n"
              "print('numba loaded' if 'numba' in sys.modules else 'numba not loaded', code)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "numba not loaded 0", out.stdout[-2000:]
