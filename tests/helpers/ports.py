"""Free TCP ports on loopback: tests never assume a fixed port (other clusters and servers run here)."""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
