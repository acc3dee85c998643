"""`vbpe learn` as users run it: files in, vocabulary out, rejects, resume, CLI and config."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.bpe.encoder import BpeEncoder
from pipeline.bpe.vocab import Vocabulary
from pipeline.cli import main
from pipeline.codegrids import open_corpus, read_rows
from pipeline.learn.api import learn_vocabulary as run
from schemas.base import InputError
from schemas.learn import LearnConfig
from tests.helpers.grids import write_raw, write_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(tmp_path, name="vocab", **kw) -> LearnConfig:
    base = dict(inputs=[str(tmp_path / "grids")], out=str(tmp_path / f"{name}.json"), merges=60, progress=False,
                checkpoint_every=0)
    base.update(kw)
    return LearnConfig(**base)


@pytest.fixture
def grids_dir(tmp_path):
    (tmp_path / "grids").mkdir()
    write_synthetic(tmp_path / "grids", 80, parts=2, side=12, codebook_size=128)
    return tmp_path / "grids"


def test_vocabulary_file_is_complete_and_reproduces_the_segmentation(tmp_path, grids_dir):
    vocab = run(_cfg(tmp_path, alpha_rel=0.05, sigma=0.8))
    data = json.loads((tmp_path / "vocab.json").read_text())
    assert data["format"] == "vbpe-vocab" and data["version"] == 1
    assert data["codebook_size"] == 128 and data["sigma"] == 0.8 and data["alpha_rel"] == 0.05
    assert data["quantizer_fingerprint"] == "test-quantizer"
    assert data["corpus"]["grids"] == 80 and data["corpus"]["cells"] == 80 * 144
    assert data["corpus"]["shapes"] == [[12, 12, 80]]
    m = data["merges"][0]
    assert set(m) == {"id", "pair", "frequency", "consistency", "priority", "offset", "histogram", "merged"}
    assert m["frequency"] == sum(c for _, _, c in m["histogram"])
    assert m["priority"] == m["frequency"] + data["alpha"] * m["consistency"]
    assert Vocabulary.load(str(tmp_path / "vocab.json")).to_json() == vocab.to_json()
    # the learner's final token count equals what the encoder produces on the same grids
    corpus = open_corpus([str(grids_dir)])
    grids = read_rows(corpus, 0, corpus.rows)
    enc = BpeEncoder(vocab).encode(grids.codes, grids.heights, grids.widths)
    assert enc.tokens.shape[0] == vocab.corpus.tokens_after


def test_rejects_are_written_and_counted(tmp_path):
    (tmp_path / "grids").mkdir()
    write_synthetic(tmp_path / "grids", 30, parts=1, side=8, codebook_size=16)
    write_raw(tmp_path / "grids" / "bad.parquet", [
        {"key": "short", "height": 8, "width": 8, "codes": [0] * 10},
        {"key": "range", "height": 1, "width": 2, "codes": [0, 99]},
    ], codebook_size=16)
    vocab = run(_cfg(tmp_path, merges=5))
    assert vocab.corpus.grids == 30 and vocab.corpus.rejected == 2
    import pyarrow.parquet as pq

    rejects = pq.read_table(tmp_path / "vocab.rejects.parquet").to_pylist()
    assert sorted(r["key"] for r in rejects) == ["range", "short"]
    # a second run over the same directory skips the rejects file it wrote
    assert run(_cfg(tmp_path, merges=5)).merges == vocab.merges


def test_no_valid_grid_is_a_clear_error(tmp_path):
    (tmp_path / "grids").mkdir()
    write_raw(tmp_path / "grids" / "bad.parquet", [{"key": "x", "height": 2, "width": 2, "codes": [1]}], codebook_size=4)
    with pytest.raises(InputError, match="no valid grids"):
        run(_cfg(tmp_path))


def test_vocabulary_refuses_other_codebooks_and_tampering(tmp_path, grids_dir):
    vocab = run(_cfg(tmp_path, merges=10))
    with pytest.raises(InputError, match="codebook of 256"):
        vocab.check_codebook(256)
    data = json.loads((tmp_path / "vocab.json").read_text())
    data["merges"][3]["offset"] = [5, 5]
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="fingerprint"):
        Vocabulary.load(str(tmp_path / "edited.json"))


def test_extending_a_finished_run_equals_learning_at_once(tmp_path, grids_dir):
    at_once = run(_cfg(tmp_path, "once", merges=80))
    first = run(_cfg(tmp_path, "grown", merges=30, checkpoint_every=10))
    assert first.merges == at_once.merges[:30]
    grown = run(_cfg(tmp_path, "grown", merges=80, checkpoint_every=10, resume=True))
    assert grown.merges == at_once.merges and grown.corpus == at_once.corpus


def test_resume_refuses_changed_settings(tmp_path, grids_dir):
    run(_cfg(tmp_path, merges=10, checkpoint_every=5))
    with pytest.raises(InputError, match="sigma"):
        run(_cfg(tmp_path, merges=20, checkpoint_every=5, resume=True, sigma=2.0))


def test_killed_run_resumes_to_the_uninterrupted_vocabulary(tmp_path):
    (tmp_path / "grids").mkdir()
    write_synthetic(tmp_path / "grids", 400, parts=2, side=24, codebook_size=512)
    merges = 600
    cmd = [sys.executable, "-m", "pipeline.cli", "learn", str(tmp_path / "grids"), "--out", str(tmp_path / "killed.json"),
           "--merges", str(merges), "--checkpoint-every", "25", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "killed.checkpoint" / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and len(json.loads(pointer.read_text())["merges"]) >= 50:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads(pointer.read_text())["merges"])
    assert 0 < done_before < merges
    resumed = run(_cfg(tmp_path, "killed", merges=merges, checkpoint_every=25, resume=True))
    straight = run(_cfg(tmp_path, "straight", merges=merges))
    assert resumed.merges == straight.merges
    assert resumed.fingerprint() == straight.fingerprint()


def test_cli_config_file_and_flags(tmp_path, grids_dir, capsys):
    (tmp_path / "learn.yaml").write_text(f"inputs: [{grids_dir}]\nout: {tmp_path}/cli.json\nmerges: 5\nsigma: 2.0\n")
    assert main(["learn", "--config", str(tmp_path / "learn.yaml"), "--merges", "7", "--no-progress",
                 "--checkpoint-every", "0"]) == 0
    vocab = Vocabulary.load(str(tmp_path / "cli.json"))
    assert len(vocab.merges) == 7 and vocab.sigma == 2.0
    assert "wrote" in capsys.readouterr().out


def test_cli_reports_bad_config_fields(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("inputs: [x]\nout: v.json\nsigma: -1\nmerges_typo: 3\n")
    assert main(["learn", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "sigma" in err and "merges_typo" in err and "Traceback" not in err
    assert main(["learn", str(tmp_path / "missing"), "--out", str(tmp_path / "v.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_holdout_grids_are_left_out_and_counted(tmp_path, grids_dir):
    from pipeline.codegrids import holdout_mask

    from pipeline.runner import execute
    from pipeline.stage import get_stage

    vocab = execute(get_stage("learn"), _cfg(tmp_path, merges=20, holdout_fraction=0.25)).vocab  # as the CLI and jobs run it
    corpus = open_corpus([str(grids_dir)])
    keys = read_rows(corpus, 0, corpus.rows).keys
    held = int(holdout_mask(keys, 0.25, "vbpe-holdout").sum())
    assert 0 < held < 80 and vocab.corpus.held_out == held and vocab.corpus.grids == 80 - held
    assert vocab.holdout == {"fraction": 0.25, "salt": "vbpe-holdout"}
    metrics = json.loads((tmp_path / "vocab.metrics.json").read_text())
    assert metrics["rows_in"] == 80 and metrics["rows_out"] + metrics["rows_rejected"] == 80
    assert run(_cfg(tmp_path, "all", merges=20)).merges != vocab.merges
