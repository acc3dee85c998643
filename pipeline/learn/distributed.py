"""Shards on Ray actors: each actor reads its own rows and keeps its grids in memory.

Per merge the driver sends (a, b, id, u*) to every actor and gets back only deltas (a few
arrays), so messages stay small however large the corpus is. Integer sums are exact, so the
vocabulary is the same for any number of actors.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from pipeline.bpe.shard import Deltas, concat_deltas
from pipeline.codegrids import Corpus
from pipeline.learn.shard_group import LoadReport, ShardGroup
from schemas.base import StorageOptions

log = logging.getLogger(__name__)


class _ShardActor:
    """Runs inside a Ray actor process (wrapped by `ray.remote` in `RayShards`)."""

    def __init__(self, corpus: Corpus, start: int, stop: int, shard_cells: int,
                 options: StorageOptions | None, state_dir: str | None, holdout: tuple[float, str] | None):
        self.group = ShardGroup.read(corpus, start, stop, shard_cells, options, state_dir, holdout)

    def report(self) -> LoadReport:
        return self.group.report

    def count(self) -> tuple[np.ndarray, np.ndarray]:
        d = concat_deltas(list(self.group.count()))
        return d.keys, d.d

    def merge(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> tuple[np.ndarray, np.ndarray, int]:
        d, done = self.group.merge(a, b, new_tok, uy, ux)
        return d.keys, d.d, done

    def save_state(self, directory: str) -> str:
        return self.group.save_state(directory)

    def segmentation(self):
        return self.group.segmentation()

    def memory_bytes(self) -> int:
        return self.group.memory_bytes()


def ensure_ray(address: str | None) -> None:
    """Join the given cluster, the job's own cluster, or start a local one."""
    import ray

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # Our own throwaway local cluster: token auth would only get in the way.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=address, configure_logging=False, log_to_driver=True, include_dashboard=False)


class RayShards:
    """The same interface as ShardGroup, over `workers` actors holding contiguous row ranges."""

    def __init__(self, corpus: Corpus, workers: int, shard_cells: int, actor_cpus: float,
                 options: StorageOptions | None, state_dir: str | None, address: str | None,
                 holdout: tuple[float, str] | None = None):
        import ray

        ensure_ray(address)
        actor_cls = ray.remote(_ShardActor)
        self.actors = [
            actor_cls.options(num_cpus=actor_cpus, name=None).remote(corpus, start, stop, shard_cells, options, state_dir, holdout)
            for start, stop in corpus.row_ranges(workers)
        ]
        self.report = LoadReport()
        for r in ray.get([a.report.remote() for a in self.actors]):
            self.report.merge(r)

    def _all(self, method: str, *args):
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def count(self):
        """Each actor's deltas as they arrive."""
        import ray

        pending = [a.count.remote() for a in self.actors]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            keys, d = ray.get(done[0])
            yield Deltas(keys, d)

    def merge(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> tuple[Deltas, int]:
        results = self._all("merge", a, b, new_tok, uy, ux)
        return concat_deltas([Deltas(k, d) for k, d, _ in results]), sum(r[2] for r in results)

    def save_state(self, directory: str) -> list[str]:
        return self._all("save_state", directory)

    def segmentation(self):
        parts = self._all("segmentation")
        toks = np.concatenate([p[0] for p in parts])
        ancs = np.concatenate([p[1] for p in parts])
        offs, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offs.append(p[2][1:] + base)
            base += int(p[2][-1])
        return toks, ancs, np.concatenate(offs)

    def memory_bytes(self) -> int:
        return int(sum(self._all("memory_bytes")))

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
