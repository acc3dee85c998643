"""Small real inputs for tokenize / submit / jobs tests: code-grid files and a vocabulary learned on them.

The vocabulary comes from the contract's reference learner (pipeline.bpe.reference), so tests
depend on nothing but the contract.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import codegrids
from pipeline.bpe import reference
from pipeline.bpe.vocab import CorpusStats, Merge, Vocabulary
from pipeline.synthetic import synthetic_grids
from schemas.grids import code_grid_schema

V = 64


def grids(n: int, seed: int, h: int = 8, w: int = 8, codebook_size: int = V) -> np.ndarray:
    return synthetic_grids(n, h, w, codebook_size, seed=seed, n_motifs=6, n_textures=2, noise=0.05).codes


def learn_vocab(train: np.ndarray, num_merges: int = 12, codebook_size: int = V, alpha: float = 0.5,
                quantizer_fingerprint: str | None = None) -> Vocabulary:
    merges, _, eff_alpha = reference.learn(list(train), codebook_size, num_merges, alpha=alpha, sigma=1.0)
    vocab = Vocabulary(
        codebook_size=codebook_size, sigma=1.0, min_frequency=2, alpha=eff_alpha, requested_merges=num_merges,
        merges=[Merge(m.id, m.pair, m.frequency, m.consistency, m.priority, m.offset, m.histogram) for m in merges],
        corpus=CorpusStats(grids=len(train), cells=int(train.size)), quantizer_fingerprint=quantizer_fingerprint,
    )
    assert len(vocab.merges) == num_merges, "tiny corpus ran out of pairs; use more grids"
    return vocab


def write_grid_file(path: str, codes: np.ndarray, prefix: str, codebook_size: int = V, captions: bool = False,
                    quantizer_fingerprint: str | None = None) -> list[str]:
    """Write (n, h, w) grids as code-grid Parquet; returns the keys."""
    n, h, w = codes.shape
    keys = [f"{prefix}-{i:04d}" for i in range(n)]
    g = codegrids.Grids(keys, np.full(n, h, np.int32), np.full(n, w, np.int32), codes.reshape(-1).astype(np.int32),
                        [None] * n, [f"caption of {k}" for k in keys] if captions else [None] * n)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    codegrids.write_grids(path, g, codebook_size, quantizer_fingerprint)
    return keys


def write_bad_rows(path: str, codebook_size: int = V) -> dict[str, str]:
    """Three good-schema rows that must be rejected, plus one good row; returns key -> expected reason start."""
    rows = {
        "key": ["bad-range", "bad-len", "bad-shape", "good"],
        "height": [2, 2, 0, 2],
        "width": [2, 2, 3, 2],
        "codes": [[0, 1, 2, codebook_size], [0, 1, 2], [], [1, 1, 2, 2]],
        "source": [None] * 4,
    }
    pq.write_table(pa.table(rows, schema=code_grid_schema(codebook_size)), path)
    return {"bad-range": "code", "bad-len": "codes has 3 values", "bad-shape": "shape 0x3"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """`ray start --head --block` in its own process group, every port chosen free (other clusters may run here).

    Stopped by signalling that process group only: `ray stop` would kill every Ray process on the machine.
    """

    def __init__(self, temp_dir: str, num_cpus: int = 2, env: dict | None = None):
        import subprocess
        import sys

        self.temp_dir = temp_dir
        self.dashboard_port = free_port()
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        ports = {
            "--port": free_port(), "--dashboard-port": self.dashboard_port, "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(), "--ray-client-server-port": free_port(),
            "--node-manager-port": free_port(), "--object-manager-port": free_port(),
        }
        cmd = [ray_bin, "start", "--head", "--block", f"--num-cpus={num_cpus}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
               "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]]
        full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
        full_env.pop("RAY_ADDRESS", None)
        self.log = open(os.path.join(temp_dir, "ray-start.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        """The job API answers and an agent can take jobs (a fresh head needs a few seconds)."""
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"Ray dashboard at {self.address} not up after {timeout} s; see {self.log.name}")

    def stop(self, grace: float = 5.0) -> None:
        import signal
        import time

        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.5)
            if not _group_alive(pgid):
                break
        self.proc.wait(timeout=10)
        self.log.close()


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group?"""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
