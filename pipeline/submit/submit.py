"""`vbpe submit`: run a stage on a Ray cluster through the job submission API.

The config is validated here first (a typo should not cost a cluster round trip), then shipped:
a config inside the working directory travels with it, an s3:// config is read by the job, any
other local config goes as YAML text in an environment variable. The working directory is
uploaded without data, venvs, VCS files or outputs. Scheduled runs reuse a deterministic id
(see ids.py): an id that already ran is reported, not run again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from pipeline import storage
from pipeline.submit import ids
from pipeline.stage import Stage
from schemas.base import ConfigError

log = logging.getLogger(__name__)

CONFIG_ENV = "VBPE_JOB_CONFIG"
# Never uploaded: environments, VCS, caches, and anything that looks like data or outputs.
# Patterns are gitwildmatch, relative to the working directory; a leading "/" anchors at its root.
DEFAULT_EXCLUDES = [
    "/.venv/", "/venv/", ".git", "__pycache__/", "*.pyc", ".pytest_cache/", ".hypothesis/", ".numba_cache/",
    "*.egg-info/", "/build/", "/data/", "/out/", "/outputs/", "/demo-out/", "/bench-out/", "*.parquet", "*.tar",
    "*.tar.gz", "*.safetensors", "*.ckpt", "*.pt", "*.bin",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class SubmitRequest:
    stage: Stage
    config: str
    address: str
    working_dir: str | None = "."
    step: str | None = None
    schedule_date: str | None = None  # YYYY-MM-DD: scheduled run with a deterministic id
    retry_failed: bool = False
    wait: bool = True
    env: dict[str, str] = field(default_factory=dict)
    excludes: list[str] = field(default_factory=list)
    python: str = "python"
    entrypoint_num_cpus: float | None = None


@dataclass
class SubmitResult:
    submission_id: str
    submitted: bool  # False when a scheduled id had already run (or is running)
    status: str
    exit_code: int
    message: str = ""


def read_and_validate(req: SubmitRequest) -> tuple[str, Any]:
    """The config's text, validated with the stage's schema; relative local paths are refused."""
    from pipeline.configargs import read_config_text

    text = read_config_text(req.config)
    cfg = req.stage.config_class().from_yaml_text(text, req.config)
    relative = cfg.local_relative_paths() if hasattr(cfg, "local_relative_paths") else []
    if relative and req.working_dir is not None:
        raise ConfigError(
            f"{req.config}: relative paths {relative} would resolve inside the job's temporary copy of the working "
            "directory on the cluster; use absolute paths the cluster can see, or s3:// URLs"
        )
    return text, cfg


def config_argument(req: SubmitRequest, text: str) -> tuple[str, dict[str, str]]:
    """How the job finds its config: a path relative to the working dir, a URL, or env:VBPE_JOB_CONFIG."""
    if storage.is_remote(req.config):
        return req.config, {}
    if req.working_dir is not None:
        wd = os.path.realpath(req.working_dir)
        cfg = os.path.realpath(req.config)
        if os.path.commonpath([wd, cfg]) == wd:
            return os.path.relpath(cfg, wd), {}
    return f"env:{CONFIG_ENV}", {CONFIG_ENV: text}


def build_entrypoint(req: SubmitRequest, config_arg: str) -> str:
    import shlex

    parts = [req.python, "-m", req.stage.entry_module, "--config", config_arg]
    if req.stage.steps and req.step:
        parts += ["--stage", req.step]
    return " ".join(shlex.quote(p) for p in parts)


def build_runtime_env(req: SubmitRequest, env: dict[str, str]) -> dict[str, Any]:
    runtime_env: dict[str, Any] = {}
    if req.working_dir is not None:
        wd = os.path.abspath(req.working_dir)
        entry = os.path.join(wd, *req.stage.entry_module.split(".")) + ".py"
        if not os.path.exists(entry):
            raise ConfigError(f"working directory {wd} has no {os.path.relpath(entry, wd)}: run from the vbpe checkout "
                              "or pass --working-dir (or --no-upload when the cluster image has vbpe installed)")
        runtime_env["working_dir"] = wd
        runtime_env["excludes"] = DEFAULT_EXCLUDES + list(req.excludes)
    all_env = {**env, **req.env}
    if all_env:
        runtime_env["env_vars"] = all_env
    return runtime_env


def _exit_code(info: Any) -> int:
    status = str(info.status)
    code = getattr(info, "driver_exit_code", None)
    if status == "SUCCEEDED":
        return 0
    if status == "FAILED":
        return code if code else 1
    return 1


def _job_info(client: Any, submission_id: str) -> Any | None:
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            return None
        raise


async def _tail(client: Any, submission_id: str, out: TextIO, poll_seconds: float) -> None:
    """Stream the logs while watching the status: Ray's stream closes only a few seconds after the
    job has ended (it sleeps between polls of its own), so once the job is over the stream gets
    one more poll to finish and the rest of the log is then read in one piece."""
    printed: list[str] = []

    async def stream() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()
            printed.append(chunk)

    task = asyncio.ensure_future(stream())
    while not task.done():
        await asyncio.wait({task}, timeout=poll_seconds)
        if task.done() or str(client.get_job_info(submission_id).status) not in TERMINAL:
            continue
        await asyncio.wait({task}, timeout=poll_seconds)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            out.write(_rest_of_log(client, submission_id, "".join(printed)))
            out.flush()
            return
    task.result()  # a stream that broke raises here (follow falls back to polling)


def _rest_of_log(client: Any, submission_id: str, printed: str) -> str:
    try:
        logs = client.get_job_logs(submission_id)
    except Exception as err:  # noqa: BLE001 - the status, not the log, is the outcome
        return f"(the rest of the job's log could not be read: {err})\n"
    if logs.startswith(printed):
        return logs[len(printed):]
    return "\n(the job's log, in full)\n" + logs  # not what was streamed: nothing is left out


def follow(client: Any, submission_id: str, out: TextIO | None = None, poll_seconds: float = 0.5,
           timeout: float | None = None) -> Any:
    """Stream the job's logs until it ends; return its final info."""
    started = time.monotonic()
    try:
        asyncio.run(_tail(client, submission_id, out or sys.stdout, poll_seconds))
    except RuntimeError as err:  # the log stream can close early (e.g. a dashboard restart): fall back to polling
        log.warning("log stream ended: %s; polling the job status", err)
    while True:
        info = client.get_job_info(submission_id)
        if str(info.status) in TERMINAL:
            return info
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"job {submission_id} still {info.status} after {timeout:.0f} s")
        time.sleep(poll_seconds)


_ERROR_LINE = re.compile(r"^(?:python -m )?(?:jobs\.\w+|vbpe \w+): error: .*")


def job_error_line(client: Any, submission_id: str) -> str | None:
    """The one-line error the job printed (every entrypoint prints one before exiting 2 or 3), if any."""
    try:
        logs = client.get_job_logs(submission_id)
    except Exception:  # the logs are a courtesy; the exit status is what counts
        return None
    found = [line.strip() for line in logs.splitlines() if _ERROR_LINE.match(line.strip())]
    return found[-1] if found else None


def _outcome(client: Any, sid: str, info: Any, submitted: bool, what: str) -> SubmitResult:
    status = str(info.status)
    code = _exit_code(info)
    message = f"{what}: {status}"
    if status == "FAILED":
        line = job_error_line(client, sid)
        if line is None and code == 127:
            line = ("the job's command was not found on the cluster (its `python` is the first on the PATH of the "
                    "cluster's job agent): start the cluster from the environment vbpe is installed in, or pass --python")
        message = f"{what}: FAILED (exit {code})" + (f": {line}" if line else "")
    return SubmitResult(sid, submitted, status, code, message)


def _existing_attempt(client: Any, req: SubmitRequest, digest: str) -> tuple[str, Any | None]:
    """The id to use for this scheduled run and, if it already exists, its info."""
    date = ids.parse_date(req.schedule_date)
    attempt = 1
    while True:
        sid = ids.scheduled_id(req.stage.name, digest, date, attempt)
        info = _job_info(client, sid)
        if info is None:
            return sid, None
        if str(info.status) in ("FAILED", "STOPPED") and req.retry_failed:
            attempt += 1
            continue
        return sid, info


def _submit_with_retry(client: Any, agent_wait_seconds: float = 60.0, **kwargs: Any) -> None:
    """A head that just started answers "No available agent" for a few seconds: wait for it, briefly."""
    deadline = time.monotonic() + agent_wait_seconds
    delay = 0.5
    while True:
        try:
            client.submit_job(**kwargs)
            return
        except RuntimeError as err:
            if "no available agent" not in str(err).lower() or time.monotonic() + delay > deadline:
                raise
            log.info("cluster has no job agent ready yet; retrying in %.1f s", delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def submit(req: SubmitRequest, client: Any = None, out: TextIO | None = None) -> SubmitResult:
    text, _ = read_and_validate(req)
    config_arg, env = config_argument(req, text)
    entrypoint = build_entrypoint(req, config_arg)
    runtime_env = build_runtime_env(req, env)
    digest = ids.config_digest(text, [req.stage.name, req.step or ""])
    if client is None:
        from ray.job_submission import JobSubmissionClient

        try:
            client = JobSubmissionClient(req.address)
        except ConnectionError as err:
            raise ConfigError(f"cannot reach the Ray job API at {req.address} (the dashboard, port 8265 by default): {err}") from None

    if req.schedule_date:
        sid, info = _existing_attempt(client, req, digest)
        if info is not None:
            status = str(info.status)
            if status in TERMINAL:
                hint = "" if status == "SUCCEEDED" else " (pass --retry-failed to run another attempt)"
                return SubmitResult(sid, False, status, _exit_code(info), f"{sid} already ran: {status}{hint}")
            log.info("%s is already %s; not submitting again", sid, status)
            if not req.wait:
                return SubmitResult(sid, False, status, 0, f"{sid} is already {status}")
            info = follow(client, sid, out)
            return _outcome(client, sid, info, False, f"{sid} (already submitted)")
    else:
        sid = ids.adhoc_id(req.stage.name, digest)

    try:
        _submit_with_retry(client, entrypoint=entrypoint, submission_id=sid, runtime_env=runtime_env,
                           entrypoint_num_cpus=req.entrypoint_num_cpus,
                           metadata={"vbpe_stage": req.stage.name, "vbpe_config_digest": digest,
                                     "vbpe_schedule_date": req.schedule_date or ""})
    except RuntimeError as err:
        if req.schedule_date and "already" in str(err).lower():  # another scheduler won the race for this id
            info = follow(client, sid, out) if req.wait else client.get_job_info(sid)
            return SubmitResult(sid, False, str(info.status), _exit_code(info) if str(info.status) in TERMINAL else 0,
                                f"{sid} was submitted concurrently: {info.status}")
        raise
    log.info("submitted %s: %s", sid, entrypoint)
    if not req.wait:
        return SubmitResult(sid, True, "PENDING", 0, f"submitted {sid}")
    info = follow(client, sid, out)
    return _outcome(client, sid, info, True, sid)
