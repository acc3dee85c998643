"""A real `ray start --head` cluster in a subprocess, for tests of what users run against a cluster."""
from __future__ import annotations

import os

from tests.helpers.ports import free_port


class LocalRayCluster:
    """`ray start --head --block` in its own process group, every port chosen free (other clusters may run here).

    Stopped by signalling that process group only: `ray stop` would kill every Ray process on the machine.
    """

    def __init__(self, temp_dir: str, num_cpus: int = 2, env: dict | None = None, inherit_env: bool = True):
        """`env` is added to this process's environment (auth disabled, the venv on PATH), or with
        `inherit_env=False` is the whole environment, as a user's shell would give it."""
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
        if inherit_env:
            full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
        else:
            full_env = dict(env or {})
        full_env.pop("RAY_ADDRESS", None)
        self.token = full_env.get("RAY_AUTH_TOKEN") if full_env.get("RAY_AUTH_MODE") == "token" else None
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
                request = urllib.request.Request(f"{self.address}/api/version")
                if self.token:
                    request.add_header("Authorization", f"Bearer {self.token}")
                with urllib.request.urlopen(request, timeout=5) as r:
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
