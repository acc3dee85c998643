"""Learner workers on Ray actors: each reads its own rows, holds its grids and one partition of
the pair statistics (pipeline.bpe.worker), so the driver holds no per-pair table at all.

One merge is two exchanges between the same actors every time: every actor applies the merge to
its grids and sends each partition its share of the deltas; every actor adds the parts addressed
to its partition and sends its candidate to all. With `transport: mesh` (default) the actors do
this over direct connections (mesh.py) and choose each next merge themselves (the best of the W
candidates, the same everywhere), many merges per driver call. With `graph` the two phases are
a Ray Compiled Graph driven merge by merge, with `calls` ordinary actor calls (deltas actor to
actor as object references), with `relay` calls that bring every part through the driver.
docs/learn.md has the measurements behind the default.

A dead actor (killed, out of memory, node lost) surfaces as `WorkerLost`; the stage restarts
the workers from the last checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
import uuid

import numpy as np

from pipeline.bpe.learner import fix_alpha, one_step
from pipeline.bpe.pair_filter import PairFilter, add_saturating, join_slices, pack_keep, slice_bounds, usable
from pipeline.bpe.shard import Deltas
from pipeline.bpe.stats import Choice, best_of
from pipeline.bpe.worker import LearnerWorker
from pipeline.codegrids import Corpus
from pipeline.learn.mesh import Mesh, PeerLost, deltas_frame, frame_deltas
from pipeline.learn.shard_group import LoadReport, ShardGroup, map_large_blocks
from schemas.base import ConfigError, InputError, RunInterrupted, StorageOptions

log = logging.getLogger(__name__)
SAVE = "save"
ACTOR_PREFIX = "vbpe-learn-"


class WorkerLost(RunInterrupted):
    """A learner actor died or stopped answering; its grids and statistics are gone."""


class _WorkerActor:
    """Runs inside a Ray actor process (wrapped by `ray.remote` in `RayWorkers`)."""

    def __init__(self, corpus: Corpus, start: int, stop: int, shard_cells: int, options: StorageOptions | None,
                 state_dir: str | None, holdout: tuple[float, str] | None, partition: int, partitions: int,
                 sigma: float, min_frequency: int):
        # A refusal (bad input, unreadable state) is kept and raised by `report`: raised here it would
        # only say "the actor died in its creation task".
        self.refusal: Exception | None = None
        map_large_blocks()
        try:
            self.group = ShardGroup.read(corpus, start, stop, shard_cells, options, state_dir, holdout)
        except (InputError, ConfigError, OSError) as err:
            self.refusal = err
            return
        self.worker = LearnerWorker(self.group, partition, partitions, sigma, min_frequency)
        self.best: Choice | None = None
        self.mesh: Mesh | None = None
        self.candidates: list[Choice | None] = []

    def _out(self, parts: list[Deltas]):
        return parts[0] if len(parts) == 1 else tuple(parts)  # num_returns = partitions

    def report(self) -> tuple[LoadReport, int]:
        if self.refusal is not None:
            raise self.refusal
        return self.group.report, self.worker.count_rounds

    def add_base_pair_counts(self, before: np.ndarray | None) -> np.ndarray:
        """The base pair counts of the actors before this one (a ring: none reach the driver), plus its own."""
        counts = self.worker.base_pair_counts()
        if before is not None:
            add_saturating(counts, before)
        return counts

    def make_filter(self, total: np.ndarray) -> PairFilter:
        return PairFilter.from_total(total, self.worker.shards.codebook_size, self.worker.stats.min_frequency)

    def set_filter(self, pair_filter: PairFilter) -> None:
        self.worker.set_filter(pair_filter)

    def count(self, r: int):
        return self._out(self.worker.count(r))

    def absorb(self, *parts: Deltas) -> None:
        self.worker.absorb(*parts)

    def max_frequency(self) -> int:
        return self.worker.max_frequency()

    def start(self, alpha: float) -> Choice | None:
        self.best = self.worker.start(alpha)
        return self.best

    def merge(self, msg: tuple):
        """Phase 1 of a step: ("merge", a, b, id, uy, ux) or ("save", directory)."""
        if msg[0] == SAVE:
            self.group.save_state(msg[1])
            self.worker.merged = 0
            return self._out([Deltas.empty() for _ in range(self.worker.partitions)])
        return self._out(self.worker.merge(*msg[1:]))

    def reduce(self, *parts: Deltas) -> tuple[Choice | None, int]:
        """Phase 2 of a step: this partition's share of every worker's deltas in, candidate out."""
        self.best, merged = self.worker.reduce(*parts)
        return self.best, merged

    def listen(self, token: bytes, timeout_s: float) -> tuple[str, int]:
        """Open this actor's end of the mesh transport; returns the address its peers connect to."""
        import ray

        self.mesh = Mesh(self.worker.partition, self.worker.partitions, token, timeout_s)
        return self.mesh.listen(ray.util.get_node_ip_address())

    def connect(self, addresses: list[tuple[str, int]]) -> None:
        self.mesh.connect(addresses)

    def set_candidates(self, candidates: list[Choice | None]) -> None:
        self.candidates = list(candidates)

    def count_over_mesh(self, rounds: int) -> None:
        """The base pair filter and the first count with every exchange over the mesh: through the
        object store, each actor would keep the pages of every array it wrote or read resident
        for the whole run (~0.15 GB per actor at 100K grids, docs/pitfalls.md)."""
        mesh, w = self.mesh, self.worker
        me, size, V = w.partition, w.partitions, w.shards.codebook_size
        if w.filters_pairs:  # reduce-scatter the dense counts, filter each slice, all-gather the filters
            counts = w.base_pair_counts()
            cuts = slice_bounds(V, size)
            got = mesh.exchange([memoryview(counts[cuts[j]:cuts[j + 1]]) for j in range(size)])
            mine = counts[cuts[me]:cuts[me + 1]]
            for j in range(size):
                if j != me:
                    add_saturating(mine, np.frombuffer(got[j], np.uint8))
            del got
            keep, left_out = pack_keep(mine, w.stats.min_frequency)
            del counts, mine
            frame = np.concatenate([keep, np.array([left_out], np.int64).view(np.uint8)])  # bits, then the int64
            got = [np.frombuffer(f, np.uint8) for f in mesh.exchange([frame.data] * size)]
            w.set_filter(join_slices(V, [f[:-8] for f in got], [int(f[-8:].view(np.int64)[0]) for f in got]))
            del got
        for r in range(rounds):
            w.absorb(*_exchange_deltas(mesh, me, w.count(r)))

    def run(self, count: int, next_id: int, max_seconds: float) -> tuple[list[tuple[Choice, int]] | int, bool]:
        """Up to `count` merges without the driver: every actor picks the same best of all candidates,
        merges, sends each partition its deltas, reduces its own, and sends its candidate to all.
        Worker 0 ends the batch early after `max_seconds` (its flag travels with the candidates, so
        all stop at the same merge). Returns the merges done (choice, instances merged) and
        whether no eligible pair is left."""
        mesh, w, done = self.mesh, self.worker, []
        t_end = time.perf_counter() + max_seconds
        while len(done) < count:
            choice = best_of(self.candidates)
            if choice is None:
                break
            parts = w.merge(choice.a, choice.b, next_id + len(done), *choice.offset)
            best, merged = w.reduce(*_exchange_deltas(mesh, w.partition, parts))
            stop = w.partition == 0 and time.perf_counter() > t_end
            replies = [_read_candidate(f) for f in mesh.exchange([_candidate_frame(best, merged, stop)] * w.partitions)]
            self.candidates = [c for c, _, _ in replies]
            done.append((choice, sum(m for _, m, _ in replies)))
            if replies[0][2]:
                break
        # the others' merges are worker 0's (the same candidates everywhere): they send only how many
        return (done if w.partition == 0 else len(done)), best_of(self.candidates) is None

    def save_state(self, directory: str) -> str:
        return self.group.save_state(directory)

    def segmentation(self):
        return self.group.segmentation()

    def pid(self) -> int:
        return os.getpid()

    def resources(self) -> dict:
        out = self.worker.resources()
        if self.mesh is not None:
            out["mesh_sent_bytes"] = self.mesh.sent_bytes
        return out


def _exchange_deltas(mesh: Mesh, me: int, parts: list[Deltas]) -> list[Deltas]:
    """Send each partition its part of this actor's deltas; returns every actor's part for partition `me`."""
    got = mesh.exchange([b"" if j == me else deltas_frame(p) for j, p in enumerate(parts)])
    return [parts[j] if j == me else frame_deltas(f) for j, f in enumerate(got)]


def _candidate_frame(best: Choice | None, merged: int, stop: bool) -> bytes:
    """A candidate as JSON (floats round-trip exactly through repr)."""
    c = None if best is None else [best.a, best.b, best.frequency, best.consistency, best.priority, list(best.offset),
                                   best.histogram]
    return json.dumps([c, merged, stop]).encode()


def _read_candidate(frame) -> tuple[Choice | None, int, bool]:
    c, merged, stop = json.loads(bytes(frame))
    choice = None if c is None else Choice(c[0], c[1], c[2], c[3], c[4], tuple(c[5]), [tuple(h) for h in c[6]])
    return choice, merged, stop


def _lost(err: Exception) -> bool:
    import ray.exceptions as rex

    if isinstance(err, rex.RayActorError) and err.actor_init_failed:
        return False  # a bug in the worker's setup: restarting cannot help
    if isinstance(err, rex.RayTaskError) and isinstance(err.cause, PeerLost):
        return True  # a survivor noticed first that a peer is gone
    return isinstance(err, (rex.RayActorError, rex.RayChannelError, rex.ObjectLostError, rex.OwnerDiedError))


class RayWorkers:
    """`workers` actors, actor i holding rows range i and partition i; the LocalWorkers interface."""

    def __init__(self, corpus: Corpus, workers: int, shard_cells: int, actor_cpus: float,
                 options: StorageOptions | None, state_dir: str | None, holdout: tuple[float, str] | None, sigma: float, min_frequency: int, transport: str = "graph",
                 step_timeout_s: float = 3600.0):
        import ray

        self.transport, self.step_timeout_s = transport, step_timeout_s
        self.batch_seconds = 1.0  # a mesh batch returns at least this often (progress, logs)
        self.step_s, self.steps, self.first_step_s = 0.0, 0, None
        self.partitions = workers
        self.codebook_size, self.min_frequency = corpus.codebook_size, min_frequency
        actor_cls = ray.remote(_WorkerActor)
        run = uuid.uuid4().hex[:8]  # names say which run an actor belongs to (`ray list actors`, tests)
        self.actors = [
            actor_cls.options(num_cpus=actor_cpus, max_restarts=0, max_task_retries=0, name=f"{ACTOR_PREFIX}{run}-{i}").remote(
                corpus, start, stop, shard_cells, options, state_dir, holdout, i, workers, sigma, min_frequency)
            for i, (start, stop) in enumerate(corpus.row_ranges(workers))
        ]
        self.dag = None
        self.report = LoadReport()
        reports = self._get([a.report.remote() for a in self.actors])
        for r, _ in reports:
            self.report.merge(r)
        self.count_rounds = max(n for _, n in reports)

    def _get(self, refs, timeout: float | None = None):
        import ray

        try:
            return ray.get(refs, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - sorted into "a worker is gone" or re-raised
            if _lost(err) or isinstance(err, ray.exceptions.GetTimeoutError):
                raise WorkerLost(f"a learner worker was lost: {type(err).__name__}: {str(err).splitlines()[0]}") from err
            if isinstance(err, ray.exceptions.RayTaskError):
                if isinstance(err.cause, (InputError, ConfigError, OSError)):
                    raise err.cause from None  # its own one-line message, not the remote traceback
                raise err.as_instanceof_cause() from None
            raise

    def _returns(self, method: str, *args) -> list[list]:
        """Call `method` on every actor with one return per partition; refs[i][j] = actor i's part for j."""
        refs = [getattr(a, method).options(num_returns=self.partitions).remote(*args) for a in self.actors]
        return [[r] if self.partitions == 1 else list(r) for r in refs]

    def start(self, alpha: float | None, alpha_rel: float | None) -> tuple[float, list[Choice | None]]:
        """Count shard by shard on every actor (bounded memory), routing each part to its partition;
        first the base pair filter (pair_filter.py): the actors' dense counts are summed along a ring
        of actors and the filter goes from the last one to all, so the driver holds none of it.
        Over the mesh, the actors connect first and exchange all of it among themselves."""
        if self.transport == "mesh":
            self._connect()
            self._get([a.count_over_mesh.remote(self.count_rounds) for a in self.actors])
        else:
            self._count_through_the_object_store()
        alpha = fix_alpha(alpha, alpha_rel, max(self._get([a.max_frequency.remote() for a in self.actors])))
        candidates = self._get([a.start.remote(alpha) for a in self.actors])
        if self.transport == "graph":
            self._compile()
        elif self.transport == "mesh":
            self._get([a.set_candidates.remote(candidates) for a in self.actors])
        return alpha, candidates

    def _count_through_the_object_store(self) -> None:
        if usable(self.codebook_size, self.min_frequency):
            total = None
            for a in self.actors:
                total = a.add_base_pair_counts.remote(total)
            pair_filter = self.actors[-1].make_filter.remote(total)
            self._get([a.set_filter.remote(pair_filter) for a in self.actors])
            del total, pair_filter
        for r in range(self.count_rounds):
            parts = self._returns("count", r)
            self._get([a.absorb.remote(*[p[j] for p in parts]) for j, a in enumerate(self.actors)])
            del parts

    def _connect(self) -> None:
        token = secrets.token_bytes(32)
        addresses = self._get([a.listen.remote(token, self.step_timeout_s) for a in self.actors])
        self._get([a.connect.remote(addresses) for a in self.actors], timeout=self.step_timeout_s)

    def _compile(self) -> None:
        from ray.dag import InputNode, MultiOutputNode

        with InputNode() as msg:
            parts = [a.merge.options(num_returns=self.partitions).bind(msg) for a in self.actors]
            parts = [[p] if self.partitions == 1 else list(p) for p in parts]
            outs = [a.reduce.bind(*[p[j] for p in parts]) for j, a in enumerate(self.actors)]
            self.dag = MultiOutputNode(outs).experimental_compile(_submit_timeout=self.step_timeout_s)

    def _run(self, msg: tuple) -> list[tuple[Choice | None, int]]:
        if self.dag is not None:
            try:
                ref = self.dag.execute(msg)
            except Exception as err:  # noqa: BLE001
                if _lost(err):
                    raise WorkerLost(f"a learner worker was lost: {type(err).__name__}") from err
                raise
            return self._get(ref, timeout=self.step_timeout_s)
        parts = self._returns("merge", msg)
        if self.transport == "relay":  # every part through the driver and back out
            parts = [self._get(p, timeout=self.step_timeout_s) for p in parts]
        return self._get([a.reduce.remote(*[p[j] for p in parts]) for j, a in enumerate(self.actors)],
                         timeout=self.step_timeout_s)

    def run(self, candidates: list[Choice | None] | None, next_id: int, count: int):
        """Merges from `next_id` on (merge_loop's interface): many per call over the mesh, else one."""
        if self.transport != "mesh":
            return one_step(self, candidates, next_id, count)
        t0 = time.perf_counter()
        # a batch ends after about batch_seconds, past it by one merge at most
        out = self._get([a.run.remote(count, next_id, self.batch_seconds) for a in self.actors],
                        timeout=self.step_timeout_s + self.batch_seconds)
        (done, exhausted), others = out[0], out[1:]
        if any(n != len(done) or e != exhausted for n, e in others):
            raise RuntimeError(f"learner workers disagree after merge {next_id}: {[len(done)] + [n for n, _ in others]} "
                               f"merges done (a bug: please report it)")
        self.step_s += time.perf_counter() - t0
        self.steps += len(done)
        return done, None, exhausted

    def step(self, a: int, b: int, new_tok: int, uy: int, ux: int) -> tuple[list[Choice | None], int]:
        t0 = time.perf_counter()
        out = self._run(("merge", a, b, new_tok, uy, ux))
        if self.first_step_s is None:  # includes the compiled graph's warm-up: kept out of the per-merge figure
            self.first_step_s = time.perf_counter() - t0
        else:
            self.step_s += time.perf_counter() - t0
            self.steps += 1
        return [c for c, _ in out], sum(n for _, n in out)

    def save_state(self, directory: str) -> None:
        """Every actor writes its segmentation (through the pipeline while it is compiled)."""
        if self.dag is not None:
            self._run((SAVE, directory))
        else:
            self._get([a.save_state.remote(directory) for a in self.actors])

    def _stop_graph(self) -> None:
        if self.dag is not None:
            dag, self.dag = self.dag, None
            try:
                dag.teardown()
            except Exception as err:  # noqa: BLE001 - a torn pipeline of a lost worker; nothing left to save
                log.debug("compiled graph teardown: %s", err)

    def segmentation(self):
        self._stop_graph()
        parts = self._get([a.segmentation.remote() for a in self.actors])
        toks = np.concatenate([p[0] for p in parts])
        ancs = np.concatenate([p[1] for p in parts])
        offs, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offs.append(p[2][1:] + base)
            base += int(p[2][-1])
        return toks, ancs, np.concatenate(offs)

    def resources(self) -> list[dict]:
        """Each actor's memory and profile (at the end of a run: stops the compiled graph)."""
        self._stop_graph()
        return self._get([a.resources.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        self._stop_graph()
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception as err:  # noqa: BLE001 - already dead
                log.debug("kill: %s", err)
        self.actors = []
