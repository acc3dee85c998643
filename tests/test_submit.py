"""`vbpe submit` without a cluster: ids, config transport, upload contents, refusals."""
from __future__ import annotations

import datetime as dt
import os

import pytest

from pipeline.submit import ids
from pipeline.stage import get_stage
from pipeline.submit.submit import (
    CONFIG_ENV, DEFAULT_EXCLUDES, SubmitRequest, build_entrypoint, build_runtime_env, config_argument, read_and_validate,
)
from schemas.base import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = "inputs: [s3://b/grids]\nvocab: s3://b/vocab.json\nout: s3://b/tokens\n"


def test_scheduled_ids_are_deterministic_and_canonical():
    d = dt.date(2026, 3, 1)
    a = ids.scheduled_id("tokenize", ids.config_digest(CFG, ["tokenize", ""]), d)
    reordered = "# nightly\nout: s3://b/tokens\nvocab: s3://b/vocab.json\ninputs:\n  - s3://b/grids\n"
    assert a == ids.scheduled_id("tokenize", ids.config_digest(reordered, ["tokenize", ""]), d)
    assert a.startswith("vbpe-tokenize-") and a.endswith("-20260301") and ids.is_valid(a)
    assert a != ids.scheduled_id("tokenize", ids.config_digest(CFG.replace("tokens", "t2"), ["tokenize", ""]), d)
    assert a != ids.scheduled_id("tokenize", ids.config_digest(CFG, ["tokenize", ""]), dt.date(2026, 3, 2))
    assert ids.scheduled_id("tokenize", "abc", d, attempt=2) == "vbpe-tokenize-abc-20260301-a2"
    one, two = ids.adhoc_id("tokenize", "abc"), ids.adhoc_id("tokenize", "abc")
    assert one != two and ids.is_valid(one)
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        ids.parse_date("03/01/2026")


def _req(config: str, working_dir: str | None = REPO, **kw) -> SubmitRequest:
    return SubmitRequest(stage=get_stage("tokenize"), config=config, address="http://127.0.0.1:1", working_dir=working_dir, **kw)


def test_config_travels_inside_working_dir_by_url_or_in_the_environment(tmp_path):
    outside = tmp_path / "t.yaml"
    outside.write_text(CFG)
    arg, env = config_argument(_req(str(outside)), CFG)
    assert arg == f"env:{CONFIG_ENV}" and env == {CONFIG_ENV: CFG}
    wd = tmp_path / "wd"
    (wd / "conf").mkdir(parents=True)
    (wd / "conf" / "t.yaml").write_text(CFG)
    assert config_argument(_req(str(wd / "conf" / "t.yaml"), str(wd)), CFG) == ("conf/t.yaml", {})
    assert config_argument(_req("s3://b/t.yaml"), CFG) == ("s3://b/t.yaml", {})
    entry = build_entrypoint(_req(str(outside)), arg)
    assert entry == f"python -m jobs.tokenize --config env:{CONFIG_ENV}"


def test_runtime_env_uploads_code_not_data(tmp_path):
    renv = build_runtime_env(_req("x"), {CONFIG_ENV: CFG})
    assert renv["working_dir"] == REPO and renv["env_vars"] == {CONFIG_ENV: CFG}
    for pattern in ("/.venv/", ".git", "/data/", "/out/", "*.parquet"):
        assert pattern in renv["excludes"]
    assert renv["excludes"][: len(DEFAULT_EXCLUDES)] == DEFAULT_EXCLUDES
    with pytest.raises(ConfigError, match="has no jobs/tokenize.py"):
        build_runtime_env(_req("x", str(tmp_path)), {})
    assert "working_dir" not in build_runtime_env(_req("x", None), {})


def test_config_is_validated_and_relative_paths_refused_before_submitting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CFG + "wokers: 2\n")
    with pytest.raises(ConfigError, match="wokers"):
        read_and_validate(_req(str(bad)))
    rel = tmp_path / "rel.yaml"
    rel.write_text("inputs: [grids]\nvocab: /abs/vocab.json\nout: out\n")
    with pytest.raises(ConfigError, match=r"relative paths \['grids', 'out'\]"):
        read_and_validate(_req(str(rel)))
    read_and_validate(_req(str(rel), working_dir=None))  # --no-upload: the job runs where these paths mean something


def test_cli_needs_an_address(tmp_path, capsys, monkeypatch):
    from pipeline import cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "t.yaml").write_text(CFG)
    assert cli.main(["submit", "tokenize", "--config", str(tmp_path / "t.yaml")]) == 2
    assert "--address" in capsys.readouterr().err


def test_unreachable_cluster_is_one_clear_line(tmp_path, capsys):
    from pipeline import cli
    from tests.helpers.ports import free_port

    (tmp_path / "t.yaml").write_text(CFG)
    code = cli.main(["submit", "tokenize", "--config", str(tmp_path / "t.yaml"), "--address", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Ray job API" in err and "Traceback" not in err


class _EndedJobClient:
    """A job that ends after its first chunk while the log stream, like Ray's, stays open a while."""

    def __init__(self, stream_open_s: float, log_is_prefix: bool = True):
        import asyncio

        self.asyncio, self.stream_open_s, self.log_is_prefix = asyncio, stream_open_s, log_is_prefix
        self.status_calls = 0

    async def tail_job_logs(self, sid):
        yield "line 1\n"
        await self.asyncio.sleep(self.stream_open_s)
        yield "line 2\nline 3: the end\n"

    def get_job_info(self, sid):
        from types import SimpleNamespace

        self.status_calls += 1
        return SimpleNamespace(status="SUCCEEDED")

    def get_job_logs(self, sid):
        return ("line 1\n" if self.log_is_prefix else "other 1\n") + "line 2\nline 3: the end\n"


@pytest.mark.parametrize("log_is_prefix", [True, False])
def test_following_a_job_returns_when_it_ends_with_all_of_its_log(log_is_prefix):
    """Ray's log stream closes seconds after the job's end: follow must not wait for it, and must
    still print every line (read in one piece once the job is over)."""
    import io
    import time

    from pipeline.submit.submit import follow

    client, out = _EndedJobClient(stream_open_s=30.0, log_is_prefix=log_is_prefix), io.StringIO()
    t0 = time.monotonic()
    info = follow(client, "job-1", out=out, poll_seconds=0.05)
    assert str(info.status) == "SUCCEEDED" and time.monotonic() - t0 < 5
    assert out.getvalue().endswith("line 2\nline 3: the end\n") and out.getvalue().startswith("line 1\n")
    if log_is_prefix:
        assert out.getvalue() == "line 1\nline 2\nline 3: the end\n"


def test_following_a_job_whose_stream_ends_by_itself_prints_it_once():
    import io

    from pipeline.submit.submit import follow

    client, out = _EndedJobClient(stream_open_s=0.0), io.StringIO()
    follow(client, "job-1", out=out, poll_seconds=0.5)
    assert out.getvalue() == "line 1\nline 2\nline 3: the end\n"
