"""Run metrics: the file a stage leaves next to its outputs, and its structured log lines."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from pipeline.metrics import StageMetrics, log_event, metrics_path, progress


def _events(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "vbpe.metrics"]


class FakeClock:
    """Time that moves only when the test says so: no sleeps, no bounds on how fast the machine is."""

    def __init__(self, start: float = 100.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_metrics_file_and_log_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vbpe.metrics")
    path = str(tmp_path / "out" / "metrics.json")
    wall, cpu = FakeClock(), FakeClock(5.0)
    with StageMetrics("learn", path, sample_interval=3600, codebook=512, clock=wall, cpu_clock=cpu) as m:
        m.add(rows_in=1000, rows_out=990)
        m.add(rows_rejected=10)
        block = np.ones(80 << 20, np.uint8)  # 80 MB, touched
        block[::4096] = 2
        m.sample_memory()  # the peak is taken while the block lives
        del block
        wall.now += 2.5
        cpu.now += 1.25
        m.set(merges=50, shards=3)
        m.event("merge", k=49, pair=[1, 2])
    doc = json.loads(open(path).read())
    assert doc == m.result
    assert doc["stage"] == "learn" and doc["status"] == "ok" and doc["error"] is None
    assert (doc["rows_in"], doc["rows_out"], doc["rows_rejected"], doc["rows_accounted"]) == (1000, 990, 10, True)
    assert doc["wall_s"] == 2.5 and doc["cpu_s"] == 1.25
    assert doc["rows_per_s"] == 400.0 and doc["merges"] == 50 and doc["merges_per_s"] == 20.0
    assert doc["peak_rss_bytes"] - doc["rss_start_bytes"] >= 60 << 20  # the sample saw the 80 MB block
    assert doc["process_peak_rss_bytes"] >= doc["peak_rss_bytes"] - (8 << 20)
    assert doc["codebook"] == 512 and doc["shards"] == 3
    events = _events(caplog)
    assert [e["event"] for e in events] == ["stage_start", "merge", "stage_end"]
    assert all(e["stage"] == "learn" for e in events)
    assert events[1]["pair"] == [1, 2] and events[1]["elapsed_s"] == 2.5
    assert events[2]["path"] == path and events[2]["status"] == "ok"


def test_a_refused_run_writes_no_file_unless_it_recorded_something(tmp_path):
    from pipeline.metrics import current
    from schemas.base import InputError

    path = tmp_path / "metrics.json"
    with pytest.raises(InputError):
        with StageMetrics("tokenize", str(path), refusals=(InputError,)):
            raise InputError("wrong codebook")
    assert not path.exists()
    with pytest.raises(InputError):
        with StageMetrics("learn", str(path), refusals=(InputError,)):
            current().add(rows_in=4, rows_rejected=4)  # counted before the refusal: they must reach the file
            raise InputError("every row rejected")
    doc = json.loads(path.read_text())
    assert doc["status"] == "failed" and (doc["rows_in"], doc["rows_rejected"]) == (4, 4)
    assert current().stage == "detached"  # outside of a run, counts go nowhere


def test_failure_is_recorded_and_reraised(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vbpe.metrics")
    path = str(tmp_path / "x.parquet.metrics.json")
    with pytest.raises(ValueError, match="boom"):
        with StageMetrics("tokenize", path) as m:
            m.add(rows_in=5, rows_out=3)
            raise ValueError("boom")
    doc = json.loads(open(path).read())
    assert doc["status"] == "failed" and doc["error"] == "ValueError: boom"
    assert doc["rows_accounted"] is False and doc["merges"] is None and doc["merges_per_s"] is None
    assert _events(caplog)[-1]["status"] == "failed"


def test_unwritable_path_does_not_hide_the_outcome(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with StageMetrics("s", str(blocker / "metrics.json")):
        pass
    assert any(e["event"] == "metrics_write_failed" for e in _events(caplog))


def test_metrics_path(tmp_path):
    d = tmp_path / "outdir"
    d.mkdir()
    assert metrics_path(str(d)) == str(d / "metrics.json")
    assert metrics_path("s3://b/run/") == "s3://b/run/metrics.json"
    assert metrics_path("s3://b/run") == "s3://b/run/metrics.json"
    assert metrics_path("/data/vocab.json") == "/data/vocab.metrics.json"
    assert metrics_path("s3://b/x/part-0.parquet") == "s3://b/x/part-0.metrics.json"


def test_log_event_is_one_json_line(caplog):
    caplog.set_level(logging.INFO, logger="vbpe.metrics")
    rec = log_event("thing", rows=np.int64(3), arr=np.arange(2), nan=float("nan"))
    line = caplog.records[-1].getMessage()
    assert "\n" not in line and json.loads(line) == rec
    assert rec["rows"] == 3 and rec["arr"] == [0, 1] and rec["nan"] is None


def test_progress_yields_everything_and_logs(caplog):
    caplog.set_level(logging.INFO, logger="vbpe.metrics")
    assert list(progress(iter(range(7)), "things", total=7, stage="s", every_s=0.0)) == list(range(7))
    lines = [e for e in _events(caplog) if e["event"] == "progress"]
    assert lines[-1]["done"] == 7 and lines[-1]["total"] == 7 and "seconds" in lines[-1]
    assert len(lines) == 8  # one per item (every_s=0) and the final line
