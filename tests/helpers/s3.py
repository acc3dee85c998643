"""A real S3 API on loopback (moto's server mode), with the AWS_* variables Ray workers inherit."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from tests.helpers.ports import free_port


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """Start the server, export credentials + endpoint, create `bucket`; yields the endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class MotoProcess:
    """moto's S3 server in a child process (its own process group), so a test can hang it (SIGSTOP) or kill it.

    The state lives in that process: `pause()` / `resume()` keep it, a restart would not.
    """

    def __init__(self, bucket: str):
        import subprocess
        import sys

        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, **self.env})
        self._wait_ready()
        self.client().create_bucket(Bucket=bucket)

    def _wait_ready(self, timeout: float = 60.0) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"moto server on {self.endpoint} did not start")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **{k.lower(): v for k, v in self.env.items()
                                                                  if k != "AWS_DEFAULT_REGION"},
                            region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def pause(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        import signal

        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
        self.proc.wait(timeout=10)
