"""`python -m jobs.<stage> --config FILE.yaml`: thin, validates first, clear exit codes."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

import jobs._entry as entry
from pipeline.submit import stages
from tests.tokenize_support import V, grids, learn_vocab, write_grid_file

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
    generic = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run_stage"]
    if generic:  # the shared entry (jobs/_entry.py); train delegates to its own CLI instead
        assert [c.args[0].value for c in generic] == [name]


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
    assert entry.run_stage("tokenize", ["--config", "env:MY_CFG"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_written"] == 20
    monkeypatch.delenv("MY_CFG")
    assert entry.run_stage("tokenize", ["--config", "env:MY_CFG"]) == 2
    assert "MY_CFG is not set" in capsys.readouterr().err


def test_invalid_config_fails_before_any_work(tok_config, tmp_path, capsys):
    root, text = tok_config
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("out:", "output:").replace(str(root / "out"), str(tmp_path / "never")))
    assert entry.run_stage("tokenize", ["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "output: Extra inputs are not permitted" in err and "out: Field required" in err
    assert not os.path.exists(tmp_path / "never")


def test_missing_stage_code_is_a_clear_error(monkeypatch, tok_config, capsys):
    root, _ = tok_config
    ghost = stages.Stage("tokenize", "schemas.tokenize:TokenizeConfig", "pipeline.ghoststage.api:run")
    monkeypatch.setitem(stages.STAGES, "tokenize", ghost)
    assert entry.run_stage("tokenize", ["--config", str(root / "tokenize.yaml")]) == 2
    assert "stage 'tokenize' is not available in this build: no module pipeline.ghoststage.api" in capsys.readouterr().err
    absent = stages.Stage("x", "schemas.nothing_here:Cfg", "pipeline.tokenize.api:run")
    assert not absent.available()


def test_stage_with_failures_exits_3(tok_config, tmp_path, capsys):
    root, text = tok_config
    (tmp_path / "g").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["k"], "height": [1], "width": [1], "codes": ["x"]}), tmp_path / "g" / "broken.parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text.replace(f"[{root}/g]", f"[{tmp_path}/g]").replace(f"{root}/out", f"{tmp_path}/out"))
    assert entry.run_stage("tokenize", ["--config", str(cfg)]) == 3
    assert json.loads(capsys.readouterr().out)["failed"]


def test_learn_then_tokenize_jobs_chain(tmp_path, capsys):
    """The learner's own entrypoint writes a vocabulary the tokenize entrypoint accepts."""
    pytest.importorskip("schemas.learn")
    codes = grids(60, seed=7)
    write_grid_file(str(tmp_path / "g" / "a.parquet"), codes, "a")
    (tmp_path / "learn.yaml").write_text(f"inputs: [{tmp_path}/g]\nout: {tmp_path}/v.json\nmerges: 10\nprogress: false\n")
    assert entry.run_stage("learn", ["--config", str(tmp_path / "learn.yaml")]) == 0
    vocab = json.loads(capsys.readouterr().out)
    assert len(vocab["merges"]) == 10 and vocab["codebook_size"] == V
    (tmp_path / "tok.yaml").write_text(f"inputs: [{tmp_path}/g]\nvocab: {tmp_path}/v.json\nout: {tmp_path}/out\n")
    assert entry.run_stage("tokenize", ["--config", str(tmp_path / "tok.yaml")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_written"] == 60 and summary["tokens"] < summary["cells"]
