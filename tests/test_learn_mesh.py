"""The mesh transport's links, in threads of this process: every frame reaches its peer, big frames both
ways do not stall, strangers are turned away, and a peer that goes away is a `PeerLost`, not a hang."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from pipeline.bpe.shard import Deltas
from pipeline.learn.mesh import Mesh, PeerLost, deltas_frame, frame_deltas

TOKEN = b"t" * 32


def _meshes(n: int, timeout_s: float = 20.0) -> list[Mesh]:
    meshes = [Mesh(r, n, TOKEN, timeout_s) for r in range(n)]
    addresses = [m.listen("127.0.0.1") for m in meshes]
    _all(meshes, lambda m: m.connect(addresses))
    return meshes


def _all(meshes, fn) -> list:
    """fn(mesh) on every mesh at once (each in its thread); results in rank order, errors re-raised."""
    out, errors = [None] * len(meshes), []

    def one(i):
        try:
            out[i] = fn(meshes[i])
        except BaseException as err:  # noqa: BLE001 - handed to the test
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(meshes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return out


@pytest.mark.parametrize("n", [1, 2, 4])
def test_every_frame_reaches_its_peer_small_and_big(n):
    meshes = _meshes(n)
    try:
        for size in (0, 100, 3_000_000):  # 3 MB both ways at once: written by a thread while reading
            got = _all(meshes, lambda m: m.exchange([bytes([m.rank * 16 + j]) * size for j in range(n)]))
            for r in range(n):
                assert [bytes(f) for f in got[r]] == [bytes([j * 16 + r]) * size for j in range(n)]
        assert all(m.sent_bytes == (n - 1) * (8 * 3 + 3_000_100) for m in meshes)
    finally:
        for m in meshes:
            m.close()


def test_deltas_round_trip_through_a_frame():
    rng = np.random.default_rng(1)
    d = Deltas(rng.integers(-2**62, 2**62, 1000), rng.integers(-50, 50, 1000))
    back = frame_deltas(bytes(deltas_frame(d)))
    assert np.array_equal(back.keys, d.keys) and np.array_equal(back.d, d.d)
    assert len(frame_deltas(b"")) == 0


def test_a_stranger_is_turned_away_and_the_run_still_connects():
    meshes = [Mesh(r, 2, TOKEN, 20.0) for r in range(2)]
    addresses = [m.listen("127.0.0.1") for m in meshes]
    stranger = socket.create_connection(addresses[0])
    stranger.sendall((1).to_bytes(4, "little") + b"x" * 32)  # rank 1 with the wrong token
    time.sleep(0.05)
    _all(meshes, lambda m: m.connect(addresses))
    try:
        assert stranger.recv(1) == b""  # closed by rank 0
        got = _all(meshes, lambda m: m.exchange([b"from %d" % m.rank] * 2))
        assert [bytes(f) for f in got[0]] == [b"from 0", b"from 1"]
    finally:
        stranger.close()
        for m in meshes:
            m.close()


def test_a_peer_that_goes_away_is_peer_lost():
    meshes = _meshes(3)
    meshes[2].close()
    with pytest.raises(PeerLost, match="learner worker 2"):
        meshes[0].exchange([b"", b"x", b"y"])
    for m in meshes:
        m.close()


def test_a_peer_that_hangs_is_given_up_after_the_timeout():
    meshes = _meshes(2, timeout_s=0.5)
    t0 = time.perf_counter()
    with pytest.raises(PeerLost, match="did not answer for 0.5 s"):
        meshes[0].exchange([b"", b"x"])  # rank 1 never takes part
    assert time.perf_counter() - t0 < 10
    for m in meshes:
        m.close()


def test_a_survivors_peer_lost_is_a_lost_worker_and_other_errors_are_not():
    """Over the mesh a survivor often reports the death before Ray does: that must restart, not crash."""
    import ray.exceptions as rex

    from pipeline.learn.distributed import _lost

    assert _lost(rex.RayTaskError("run", "Traceback ...", PeerLost("learner worker 1 closed its connection")))
    assert not _lost(rex.RayTaskError("run", "Traceback ...", ValueError("a bug")))
