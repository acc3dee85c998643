"""`python -m jobs.<stage> --config FILE.yaml`: thin, validates first, clear exit codes."""
from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys

import pytest

from pipeline import stage as stages
from pipeline.runner import job_main
from tests.helpers.corpus import V, grids, learn_vocab, write_grid_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_AUTH_MODE": "disabled", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def tok_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    codes = grids(60, seed=2)
    learn_vocab(codes[:40]).save(str(root / "vocab.json"))
    write_grid_file(str(root / "g" / "a.parquet"), codes[40:60], "a")
    text = (f"inputs: [{root}/g]\nvocab: {root}/vocab.json\nout: {root}/out\n"
            f"layout: {{text_vocab_size: 16, codebook_size: {V}, num_merges: 12}}\n")
    (root / "tokenize.yaml").write_text(text)
    return root, text


@pytest.mark.parametrize("name", sorted(stages.STAGES))
def test_every_stage_has_a_thin_entrypoint(name):
    path = os.path.join(REPO, "jobs", f"{name}.py")
    tree = ast.parse(open(path).read())
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert [d.name for d in defs] == ["main"] and isinstance(defs[0], ast.FunctionDef), "logic belongs in pipeline/"
    assert len(defs[0].body) <= 8, "an entrypoint parses and delegates, nothing more"
    generic = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "job_main"]
    assert [c.args[0].value for c in generic] == [name]  # the shared runner (pipeline/runner.py)


def test_tokenize_job_runs_and_reports_json(tok_config):
    root, _ = tok_config
    p = subprocess.run([sys.executable, "-m", "jobs.tokenize", "--config", str(root / "tokenize.yaml")], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["ok"] and summary["rows_written"] == 20 and os.path.isdir(summary["data"])


def test_config_from_environment_variable(tok_config, tmp_path, capsys, monkeypatch):
    _, text = tok_config
    monkeypatch.setenv("MY_CFG", text.replace("/out\n", "/out-env\n"))
    assert job_main("tokenize", ["--config", "env:MY_CFG"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_written"] == 20
    monkeypatch.delenv("MY_CFG")
    assert job_main("tokenize", ["--config", "env:MY_CFG"]) == 2
    assert "MY_CFG is not set" in capsys.readouterr().err


def test_invalid_config_fails_before_any_work(tok_config, tmp_path, capsys):
    root, text = tok_config
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("out:", "output:").replace(str(root / "out"), str(tmp_path / "never")))
    assert job_main("tokenize", ["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "output: Extra inputs are not permitted" in err and "out: Field required" in err
    assert not os.path.exists(tmp_path / "never")


@pytest.mark.parametrize("name", sorted(stages.STAGES))
def test_the_registry_names_only_code_that_exists(name):
    stage = stages.STAGES[name]
    assert isinstance(stage.config_class(), type)
    if stage.run is not None:
        assert callable(stage.run_function())
    assert importlib.import_module(stage.entry_module).main


def test_a_summary_that_is_not_json_safe_is_made_safe(monkeypatch, tok_config, capsys):
    """The job prints the summary as JSON whatever the stage put in it (counters keyed by tuples, numpy, NaN)."""
    import collections

    import numpy as np

    from pipeline import runner

    class Odd:
        ok = True

        def to_json(self):
            return {"reasons": collections.Counter({("decode", "corrupt"): 2}), "n": np.int64(3), "x": float("nan")}

        def lines(self):
            return ["odd"]

        def metrics(self):
            return {"rows_in": 3, "rows_out": 3}

    root, _ = tok_config
    monkeypatch.setitem(stages.STAGES, "tokenize", stages.Stage("tokenize", "schemas.tokenize:TokenizeConfig",
                                                                "tests.test_jobs:_odd_run"))
    monkeypatch.setattr(sys.modules[__name__], "_odd_run", lambda cfg: Odd(), raising=False)
    assert job_main("tokenize", ["--config", str(root / "tokenize.yaml")]) == 0
    assert json.loads(capsys.readouterr().out) == {"reasons": {"decode|corrupt": 2}, "n": 3, "x": None}
    assert runner.summary_json(Odd())["n"] == 3


def test_stage_with_failures_exits_3(tok_config, tmp_path, capsys):
    root, text = tok_config
    (tmp_path / "g").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["k"], "height": [1], "width": [1], "codes": ["x"]}), tmp_path / "g" / "broken.parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text.replace(f"[{root}/g]", f"[{tmp_path}/g]").replace(f"{root}/out", f"{tmp_path}/out"))
    assert job_main("tokenize", ["--config", str(cfg)]) == 3
    assert json.loads(capsys.readouterr().out)["failed"]


def test_learn_then_tokenize_jobs_chain(tmp_path, capsys):
    """The learner's own entrypoint writes a vocabulary the tokenize entrypoint accepts."""
    pytest.importorskip("schemas.learn")
    codes = grids(60, seed=7)
    write_grid_file(str(tmp_path / "g" / "a.parquet"), codes, "a")
    (tmp_path / "learn.yaml").write_text(f"inputs: [{tmp_path}/g]\nout: {tmp_path}/v.json\nmerges: 10\nprogress: false\n")
    assert job_main("learn", ["--config", str(tmp_path / "learn.yaml")]) == 0
    vocab = json.loads(capsys.readouterr().out)
    assert len(vocab["merges"]) == 10 and vocab["codebook_size"] == V
    (tmp_path / "tok.yaml").write_text(f"inputs: [{tmp_path}/g]\nvocab: {tmp_path}/v.json\nout: {tmp_path}/out\n")
    assert job_main("tokenize", ["--config", str(tmp_path / "tok.yaml")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_written"] == 60 and summary["tokens"] < summary["cells"]


def test_ablation_job_refuses_a_bad_config_with_one_line(tmp_path):
    """The ablation runs through the shared runner like every stage: a refused config is exit 2, one line, no output."""
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"out: {tmp_path / 'o'}\nmerges: [0]\n")
    p = subprocess.run([sys.executable, "-m", "jobs.ablation", "--config", str(cfg)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "merges > 0" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert p.stdout == "" and not (tmp_path / "o").exists()
