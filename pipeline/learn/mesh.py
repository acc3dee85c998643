"""Direct links between the learner's actors, for the merge loop's two exchanges per merge.

A merge needs two all-to-all exchanges: every worker's deltas cut by partition, then every
partition's candidate. Through Ray each exchange is a task or channel hop via the driver's
process and the object store or shared-memory channels (1.4-5 ms per merge measured); over one
TCP connection per pair of actors it is a write and a read (docs/learn.md has the figures). So
each actor listens on one port of its node, the driver hands every actor the others' addresses,
and every pair connects once, authenticated by a per-run token.

Frames are an 8-byte length and raw bytes; nothing is unpickled. A peer that dies closes its
sockets, so the others fail their next read at once with `PeerLost`; one that hangs is given up
after `timeout_s`.
"""
from __future__ import annotations

import hmac
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.bpe.shard import Deltas

_LEN = struct.Struct("<Q")
_HELLO = struct.Struct("<I32s")  # rank, token
# A frame this small fits the (empty) socket buffers, so it can be written before the peer reads;
# bigger ones are written by a thread while this one reads, or two peers writing to each other stall.
_INLINE_BYTES = 64 * 1024


class PeerLost(ConnectionError):
    """A peer actor closed its connection or stopped answering: its grids and partition are gone."""


class Mesh:
    """This actor's end of the links: `listen`, then `connect` with everyone's addresses, then `exchange`."""

    def __init__(self, rank: int, size: int, token: bytes, timeout_s: float):
        if len(token) != 32:
            raise ValueError("the mesh token is 32 bytes")
        self.rank, self.size, self.token, self.timeout_s = rank, size, token, timeout_s
        self.peers: dict[int, socket.socket] = {}
        self.sent_bytes = 0
        self._server: socket.socket | None = None
        self._writer: ThreadPoolExecutor | None = None

    def listen(self, host: str) -> tuple[str, int]:
        self._server = socket.create_server((host, 0), backlog=max(1, self.size))
        self._server.settimeout(self.timeout_s)
        return host, self._server.getsockname()[1]

    def connect(self, addresses: list[tuple[str, int]]) -> None:
        """Connect to every lower rank, then accept every higher one (no cycle, so no deadlock)."""
        for peer in range(self.rank):
            s = socket.create_connection(tuple(addresses[peer]), timeout=self.timeout_s)
            s.sendall(_HELLO.pack(self.rank, self.token))
            self._add(peer, s)
        while len(self.peers) < self.size - 1:
            s, _ = self._server.accept()
            s.settimeout(self.timeout_s)
            peer, token = _HELLO.unpack(self._read(s, _HELLO.size, "a new peer"))
            if not hmac.compare_digest(token, self.token) or not self.rank < peer < self.size or peer in self.peers:
                s.close()
                continue  # not one of this run's actors
            self._add(peer, s)
        self._server.close()
        self._server = None
        if self.size > 1:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="vbpe-mesh")

    def _add(self, peer: int, s: socket.socket) -> None:
        s.settimeout(self.timeout_s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames are small and latency is the cost
        self.peers[peer] = s

    def exchange(self, frames: list[bytes | memoryview]) -> list[bytes | memoryview]:
        """Send frames[j] to peer j, return what each peer sent here (frames[rank] stays: it is ours)."""
        out: list[bytes | memoryview] = [b""] * self.size
        out[self.rank] = frames[self.rank]
        big = [j for j in self.peers if len(frames[j]) > _INLINE_BYTES]
        for j, s in self.peers.items():
            if j not in big:
                self._write(s, frames[j], j)
        pending = self._writer.submit(self._write_all, {j: frames[j] for j in big}) if big else None
        for j, s in sorted(self.peers.items()):
            (n,) = _LEN.unpack(self._read(s, _LEN.size, j))
            out[j] = self._read(s, n, j)
        if pending is not None:
            pending.result()
        return out

    def _write_all(self, frames: dict[int, bytes | memoryview]) -> None:
        for j, frame in frames.items():
            self._write(self.peers[j], frame, j)

    def _write(self, s: socket.socket, frame: bytes | memoryview, peer: int) -> None:
        try:
            s.sendall(_LEN.pack(len(frame)))
            s.sendall(frame)
        except OSError as err:
            raise PeerLost(f"learner worker {peer} is gone ({type(err).__name__}: {err})") from None
        self.sent_bytes += _LEN.size + len(frame)

    def _read(self, s: socket.socket, n: int, peer) -> memoryview:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        try:
            while got < n:
                k = s.recv_into(view[got:])
                if k == 0:
                    raise PeerLost(f"learner worker {peer} closed its connection")
                got += k
        except socket.timeout:
            raise PeerLost(f"learner worker {peer} did not answer for {self.timeout_s:g} s") from None
        except OSError as err:
            raise PeerLost(f"learner worker {peer} is gone ({type(err).__name__}: {err})") from None
        return view

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=False)
        for s in [*self.peers.values(), *([self._server] if self._server else [])]:
            s.close()
        self.peers, self._server = {}, None


def deltas_frame(d: Deltas) -> memoryview:
    """keys then changes, both int64, as one frame."""
    return memoryview(np.concatenate([d.keys, d.d]).view(np.uint8))


def frame_deltas(frame) -> Deltas:
    both = np.frombuffer(frame, np.int64) if len(frame) else np.empty(0, np.int64)
    n = both.shape[0] // 2
    return Deltas(both[:n], both[n:])
