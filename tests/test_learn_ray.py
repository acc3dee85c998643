"""The sharded learner on a real local Ray: the vocabulary does not depend on the worker count."""
from __future__ import annotations

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
    for workers in (1, 2, 3):
        sharded = learn(workers)
        assert sharded.merges == local.merges, f"{workers} workers"
        assert sharded.corpus == local.corpus
    assert not ray_local.util.list_named_actors()


def test_checkpoint_written_by_two_workers_resumes_on_three(tmp_path, ray_local):
    write_synthetic(tmp_path, 60, parts=2, side=12, codebook_size=150)
    base = dict(inputs=[str(tmp_path)], actor_cpus=0.5, progress=False)
    straight = run(LearnConfig(out=str(tmp_path / "s.json"), merges=50, checkpoint_every=0, **base))
    run(LearnConfig(out=str(tmp_path / "r.json"), merges=20, workers=2, checkpoint_every=10, **base))
    resumed = run(LearnConfig(out=str(tmp_path / "r.json"), merges=50, workers=3, checkpoint_every=10, resume=True, **base))
    assert resumed.merges == straight.merges
