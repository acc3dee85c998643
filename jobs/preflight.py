"""Before a job imports anything else: can this Python run vbpe at all? (standard library only)

Under `ray job submit` / `vbpe submit` the entrypoint's `python` is the first one on the PATH of the
cluster's job agent, which is not necessarily the environment vbpe is installed in. Without this
check such a job dies with a traceback deep inside an import; with it, one line says what to do.
"""
from __future__ import annotations

import importlib.util
import sys

REQUIRED = ("numpy", "pyarrow", "pydantic", "yaml", "fsspec", "s3fs", "ray", "pipeline")
EXIT_REFUSED = 2


def missing_modules(names: tuple[str, ...] = REQUIRED) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def check_environment(prog: str) -> None:
    missing = missing_modules()
    if missing:
        print(f"{prog}: error: this job's Python ({sys.executable}) cannot import {', '.join(missing)}: the job runs "
              "the first `python` on the cluster's PATH; start the Ray cluster from the environment vbpe is installed "
              "in (activate it first, see docs/cluster.md) or pass `vbpe submit --python /path/to/that/python`",
              file=sys.stderr)
        raise SystemExit(EXIT_REFUSED)
