"""`vbpe learn` as users run it: files in, vocabulary out, rejects, resume, CLI and config."""
from __future__ import annotations

import json
import logging
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
    assert data["format"] == "vbpe-vocab" and data["version"] == 2
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


def test_more_token_ids_than_the_pair_table_packs_for_these_grids_is_a_clear_error(tmp_path):
    """2^20 ids fit a word with the offsets of grids up to 256 rows, not 257 (pair_table.py)."""
    (tmp_path / "grids").mkdir()
    write_raw(tmp_path / "grids" / "tall.parquet", [{"key": "t", "height": 257, "width": 1, "codes": [1] * 257}],
              codebook_size=16)
    with pytest.raises(InputError, match="do not fit the pair table"):
        run(_cfg(tmp_path, merges=2**20 - 16))
    write_raw(tmp_path / "grids" / "tall.parquet", [{"key": "t", "height": 256, "width": 1, "codes": [1] * 256}],
              codebook_size=16)
    assert len(run(_cfg(tmp_path, merges=2**20 - 16)).merges) > 0


def test_vocabulary_refuses_other_codebooks_and_tampering(tmp_path, grids_dir):
    vocab = run(_cfg(tmp_path, merges=10))
    with pytest.raises(InputError, match="codebook of 256"):
        vocab.check_codebook(256)
    data = json.loads((tmp_path / "vocab.json").read_text())
    data["merges"][3]["offset"] = [5, 5]
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="fingerprint"):
        Vocabulary.load(str(tmp_path / "edited.json"))


@pytest.mark.parametrize("edit", [
    lambda d: d.pop("fingerprint"),
    lambda d: d.update(fingerprint=""),
    lambda d: d.update(fingerprint=None),
    lambda d: d.update(quantizer_fingerprint="another-quantizer"),
    lambda d: d.update(quantizer_fingerprint=None),
    lambda d: d["merges"][2].update(offset=[5000, -5000]),
    lambda d: d["merges"][0].update(frequency=d["merges"][0]["frequency"] + 1),
    lambda d: d.update(alpha=d["alpha"] * 2),
    lambda d: d.update(sigma=3.0),
    lambda d: d["corpus"].update(grids=1),
    lambda d: d.update(holdout={"fraction": 0.5, "salt": "x"}),
])
def test_any_edit_or_a_missing_fingerprint_is_refused(tmp_path, grids_dir, edit):
    run(_cfg(tmp_path, merges=10))
    data = json.loads((tmp_path / "vocab.json").read_text())
    edit(data)
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="fingerprint"):
        Vocabulary.load(str(tmp_path / "edited.json"))


def test_software_versions_are_not_part_of_the_identity(tmp_path, grids_dir):
    vocab = run(_cfg(tmp_path, merges=10))
    data = json.loads((tmp_path / "vocab.json").read_text())
    data["software"]["numpy"] = "0.0.1"
    (tmp_path / "other-env.json").write_text(json.dumps(data))
    assert Vocabulary.load(str(tmp_path / "other-env.json")).fingerprint() == vocab.fingerprint()


def test_version_1_files_are_still_read_with_their_own_fingerprint(tmp_path, grids_dir):
    from pipeline.bpe.vocab import _merge_table_fingerprint_v1

    vocab = run(_cfg(tmp_path, merges=10))
    data = json.loads((tmp_path / "vocab.json").read_text())
    data["version"] = 1
    data["fingerprint"] = _merge_table_fingerprint_v1(vocab.codebook_size, vocab.merge_table())
    (tmp_path / "v1.json").write_text(json.dumps(data))
    assert Vocabulary.load(str(tmp_path / "v1.json")).merges == vocab.merges
    data["merges"][1]["pair"] = [0, 0]
    (tmp_path / "v1-edited.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="fingerprint"):
        Vocabulary.load(str(tmp_path / "v1-edited.json"))


@pytest.mark.parametrize("text, message", [
    ("[1, 2, 3]", "JSON list, not an object"),
    ('"vbpe-vocab"', "JSON str, not an object"),
    ('{"format": "vbpe-vocab", "version": 2, "fingerprint": "x"', "not valid JSON"),
])
def test_a_file_that_is_not_a_vocabulary_object_is_one_line(tmp_path, capsys, grids_dir, text, message):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(InputError, match=message):
        Vocabulary.load(str(tmp_path / "bad.json"))
    code = main(["report", "--vocab", str(tmp_path / "bad.json"), "--grids", str(grids_dir), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


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


@pytest.mark.parametrize("field, value", [("alpha", ".inf"), ("alpha", ".nan"), ("alpha_rel", ".inf"),
                                          ("alpha_rel", ".nan"), ("sigma", ".inf"), ("sigma", ".nan")])
def test_non_finite_settings_are_refused_up_front(tmp_path, grids_dir, capsys, field, value):
    (tmp_path / "learn.yaml").write_text(f"inputs: [{grids_dir}]\nout: {tmp_path}/v.json\n{field}: {value}\n")
    assert main(["learn", "--config", str(tmp_path / "learn.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert field in err and "finite" in err and "Traceback" not in err
    assert not (tmp_path / "v.json").exists() and not (tmp_path / "v.metrics.json").exists()
    assert main(["learn", str(grids_dir), "--out", str(tmp_path / "v.json"), f"--{field.replace('_', '-')}", "inf"]) == 2


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


def test_resume_with_fewer_merges_writes_exactly_that_prefix(tmp_path, grids_dir):
    at_once = run(_cfg(tmp_path, "once", merges=12))
    run(_cfg(tmp_path, "long", merges=40, checkpoint_every=10))
    short = run(_cfg(tmp_path, "long", merges=12, checkpoint_every=10, resume=True))
    assert short.merges == at_once.merges and short.corpus == at_once.corpus
    data = json.loads((tmp_path / "long.json").read_text())
    assert len(data["merges"]) == data["requested_merges"] == 12 and data["stopped"] == "requested merges reached"
    assert Vocabulary.load(str(tmp_path / "long.json")).fingerprint() == at_once.fingerprint()
    # the checkpoint still holds the longer run: growing again continues it
    assert len(json.loads((tmp_path / "long.checkpoint" / "checkpoint.json").read_text())["merges"]) == 40
    assert run(_cfg(tmp_path, "long", merges=40, checkpoint_every=10, resume=True)).merges[:12] == at_once.merges


def test_resume_refuses_an_input_rewritten_with_other_grids_of_the_same_size(tmp_path, grids_dir, capsys):
    run(_cfg(tmp_path, merges=10, checkpoint_every=5))
    # same file name, same row count, other grids
    write_synthetic(grids_dir, 80, parts=2, side=12, codebook_size=128, seed=9)
    assert main(["learn", str(grids_dir), "--out", str(tmp_path / "vocab.json"), "--merges", "20",
                 "--checkpoint-every", "5", "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "inputs changed" in err and "part-0.parquet" in err and len(err.splitlines()) == 1


def test_resume_refuses_grids_changed_behind_an_unchanged_identity(tmp_path, grids_dir):
    """A store whose size and stamp did not change (coarse mtime, say): the grids' fingerprint still tells."""
    from pipeline.learn.api import _settings

    run(_cfg(tmp_path, merges=10, checkpoint_every=5))
    write_synthetic(grids_dir, 80, parts=2, side=12, codebook_size=128, seed=9)
    pointer = tmp_path / "vocab.checkpoint" / "checkpoint.json"
    body = json.loads(pointer.read_text())
    body["settings"]["inputs"] = _settings(_cfg(tmp_path), open_corpus([str(grids_dir)]))["inputs"]
    pointer.write_text(json.dumps(body))
    with pytest.raises(InputError, match="contents changed"):
        run(_cfg(tmp_path, merges=20, checkpoint_every=5, resume=True))


def test_scheduled_learn_with_the_shipped_config_learns_afresh_when_grids_arrive(tmp_path):
    """infra/k8s/configs.yaml's learn.yaml, pointed at local paths, run as a schedule would: again and again."""
    import re

    import yaml

    with open(os.path.join(ROOT, "infra", "k8s", "configs.yaml")) as f:
        shipped = next(d for d in yaml.safe_load_all(f) if d and "learn.yaml" in d.get("data", {}))
    learn = yaml.safe_load(re.sub(r"\$\{[^}]*\}", "x", shipped["data"]["learn.yaml"]))
    (tmp_path / "grids").mkdir()
    write_synthetic(tmp_path / "grids", 40, parts=1, side=12, codebook_size=128)
    learn.update(inputs=[str(tmp_path / "grids")], out=str(tmp_path / "vocab" / "vocab.json"), workers=0, merges=30,
                 checkpoint_every=10, storage={})
    (tmp_path / "learn.yaml").write_text(yaml.safe_dump(learn))
    cmd = [sys.executable, "-m", "jobs.learn", "--config", str(tmp_path / "learn.yaml")]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)  # nothing new: the finished run is reused
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "vocab" / "vocab.metrics.json").read_text())["merges"] == 0
    (tmp_path / "arriving").mkdir()
    write_synthetic(tmp_path / "arriving", 20, parts=1, side=12, codebook_size=128, seed=5)
    (tmp_path / "arriving" / "part-0.parquet").rename(tmp_path / "grids" / "new-0.parquet")  # new grids arrive
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert "learning afresh" in third.stderr
    assert Vocabulary.load(str(tmp_path / "vocab" / "vocab.json")).corpus.grids == 60


def test_every_row_rejected_is_counted_in_the_metrics(tmp_path, capsys):
    (tmp_path / "grids").mkdir()
    write_raw(tmp_path / "grids" / "bad.parquet", [{"key": f"k{i}", "height": 2, "width": 2, "codes": [1]}
                                                    for i in range(5)], codebook_size=4)
    assert main(["learn", str(tmp_path / "grids"), "--out", str(tmp_path / "v.json"), "--no-progress"]) == 2
    assert "no valid grids" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "v.metrics.json").read_text())
    assert metrics["rows_in"] == 5 and metrics["rows_rejected"] == 5 and metrics["rows_out"] == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "v.rejects.parquet").num_rows == 5


def test_duplicate_keys_and_unstamped_grids_are_counted_and_warned(tmp_path, caplog):
    import shutil

    (tmp_path / "grids").mkdir()
    (tmp_path / "other").mkdir()
    write_synthetic(tmp_path / "grids", 30, parts=1, side=8, codebook_size=16)
    shutil.copy(tmp_path / "grids" / "part-0.parquet", tmp_path / "grids" / "copy.parquet")  # every key twice
    write_synthetic(tmp_path / "other", 10, parts=1, side=8, codebook_size=16, seed=3, fingerprint=None)
    (tmp_path / "other" / "part-0.parquet").rename(tmp_path / "grids" / "unstamped.parquet")
    from pipeline.runner import execute
    from pipeline.stage import get_stage

    with caplog.at_level(logging.WARNING):
        vocab = execute(get_stage("learn"), _cfg(tmp_path, merges=5)).vocab  # as the CLI and jobs run it
    assert vocab.corpus.grids == 70
    assert json.loads((tmp_path / "vocab.metrics.json").read_text())["duplicate_keys"] == 30
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "30 grids have a key another grid already has" in messages
    assert "1 of 3 input files carry no quantizer fingerprint" in messages


@pytest.mark.parametrize("damage", ["truncate_pointer", "corrupt_state", "empty_state"])
def test_a_damaged_checkpoint_is_one_line(tmp_path, grids_dir, capsys, damage):
    run(_cfg(tmp_path, merges=10, checkpoint_every=5))
    ckpt = tmp_path / "vocab.checkpoint"
    if damage == "truncate_pointer":
        text = (ckpt / "checkpoint.json").read_text()
        (ckpt / "checkpoint.json").write_text(text[: len(text) // 2])
    else:
        state = next(ckpt.glob("state-*/state-*.npz"))
        state.write_bytes(b"" if damage == "empty_state" else state.read_bytes()[:200] + b"garbage" * 20)
    code = main(["learn", str(grids_dir), "--out", str(tmp_path / "vocab.json"), "--merges", "20",
                 "--checkpoint-every", "5", "--resume", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "checkpoint" in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_non_integer_codebook_size_metadata_is_one_line(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "grids").mkdir()
    schema = pa.schema([("key", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
                        ("codes", pa.list_(pa.int32()))]).with_metadata({b"vbpe.codebook_size": b"lots"})
    pq.write_table(pa.table({"key": ["a"], "height": [1], "width": [2], "codes": [[0, 1]]}, schema=schema),
                   str(tmp_path / "grids" / "g.parquet"))
    assert main(["learn", str(tmp_path / "grids"), "--out", str(tmp_path / "v.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "codebook_size" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_resume_flags_set_true_false_or_auto(tmp_path):
    from pipeline.cli import build_parser
    from pipeline.configargs import config_from_args

    (tmp_path / "learn.yaml").write_text("inputs: [g]\nout: v.json\nresume: auto\n")

    def resume(*flags):
        return config_from_args(build_parser().parse_args(["learn", "--config", str(tmp_path / "learn.yaml"), *flags])).resume

    assert resume() == "auto"  # the file's value stands unless a flag is given
    assert resume("--resume") is True and resume("--no-resume") is False and resume("--resume-auto") == "auto"


def test_lost_workers_after_the_restarts_are_one_line_and_exit_3(tmp_path, grids_dir, monkeypatch, capsys):
    from pipeline.learn import api
    from pipeline.learn.distributed import WorkerLost

    def lose(*args, **kwargs):
        raise WorkerLost("a learner worker was lost: ActorDiedError; gave up after 2 restart(s): run again with --resume")

    monkeypatch.setattr(api, "_learn_with_restarts", lose)
    assert main(["learn", str(grids_dir), "--out", str(tmp_path / "v.json"), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run again with --resume" in err and "Traceback" not in err
