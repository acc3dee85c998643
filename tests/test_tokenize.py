"""`vbpe tokenize` over code-grid Parquet: contract equality, layout, rejects, versions, incremental runs, CLI."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.bpe import reference
from pipeline.configargs import load_config
from pipeline.tokenize.api import run
from schemas.base import ConfigError, InputError
from schemas.layout import IdLayout
from schemas.tokenize import TokenizeConfig
from schemas.tokens import LAYOUT_FINGERPRINT_KEY, VOCAB_FINGERPRINT_KEY
from tests.helpers.corpus import V, grids, learn_vocab, write_bad_rows, write_grid_file

LAYOUT = IdLayout(text_vocab_size=1000, codebook_size=V, num_merges=20)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    codes = grids(100, seed=3)
    vocab = learn_vocab(codes[:40])
    vocab.save(str(root / "vocab.json"))
    other = learn_vocab(codes[:40], num_merges=8)
    other.save(str(root / "vocab8.json"))
    layout_path = root / "layout.yaml"
    layout_path.write_text(LAYOUT.to_yaml())
    files = {
        "a": write_grid_file(str(root / "grids" / "a.parquet"), codes[40:70], "a", captions=True),
        "b": write_grid_file(str(root / "grids" / "b.parquet"), codes[70:90], "b"),
    }
    return {"root": root, "codes": codes, "vocab": vocab, "files": files, "layout": str(layout_path),
            "extra": codes[90:100]}


def cfg_for(corpus, out, **kw) -> TokenizeConfig:
    base = {"inputs": [str(corpus["root"] / "grids")], "vocab": str(corpus["root"] / "vocab.json"), "out": str(out),
            "layout": corpus["layout"]}
    base.update(kw)
    return TokenizeConfig.from_dict(base)


def read_version(summary) -> pa.Table:
    return pq.read_table(summary.data).sort_by("key")


def test_rows_equal_the_contracts_sequential_merges(corpus, tmp_path):
    s = run(cfg_for(corpus, tmp_path / "out"))
    assert s.ok and s.done == 2 and s.rows_in == 50 == s.rows_written
    table = read_version(s)
    codes = dict(zip([f"a-{i:04d}" for i in range(30)] + [f"b-{i:04d}" for i in range(20)], corpus["codes"][40:90]))
    merges = [(m.pair[0], m.pair[1], m.id, m.offset) for m in corpus["vocab"].merges]
    merged_any = False
    for row in table.to_pylist():
        tokens, anchors = reference.encode(codes[row["key"]], merges)
        assert row["tokens"] == tokens and row["anchors"] == anchors, row["key"]
        assert row["n_tokens"] == len(tokens) and (row["height"], row["width"]) == (8, 8)
        assert row["input_ids"] == [LAYOUT.begin_image_id] + [LAYOUT.code_offset + t for t in tokens] + [LAYOUT.end_image_id]
        merged_any |= len(tokens) < 64
    assert merged_any, "vocabulary never applied: the test would prove nothing"
    assert s.tokens == sum(table.column("n_tokens").to_pylist()) and s.cells == 50 * 64


def test_plain_arrow_schema_metadata_and_captions(corpus, tmp_path):
    s = run(cfg_for(corpus, tmp_path / "out"))
    for name in os.listdir(s.data):
        schema = pq.read_schema(os.path.join(s.data, name))
        for col in ("tokens", "anchors", "input_ids"):
            assert schema.field(col).type == pa.list_(pa.int32())
        assert schema.field("n_tokens").type == pa.int32()
        assert schema.metadata[VOCAB_FINGERPRINT_KEY].decode() == corpus["vocab"].fingerprint()
        assert schema.metadata[LAYOUT_FINGERPRINT_KEY].decode() == LAYOUT.fingerprint()
    table = read_version(s)
    caps = dict(zip(table.column("key").to_pylist(), table.column("caption").to_pylist()))
    assert caps["a-0003"] == "caption of a-0003" and caps["b-0003"] is None
    # The layout and vocabulary travel with the corpus.
    assert load_config(IdLayout, os.path.join(s.root, "layout.yaml")) == LAYOUT
    assert json.load(open(os.path.join(s.root, "vocab.json")))["fingerprint"] == corpus["vocab"].fingerprint()


def test_without_layout_writes_vocabulary_ids_only(corpus, tmp_path):
    s = run(cfg_for(corpus, tmp_path / "out", layout=None))
    assert s.version.endswith("-nolayout") and "input_ids" not in pq.read_schema(os.path.join(s.data, os.listdir(s.data)[0])).names
    assert not os.path.exists(os.path.join(s.root, "layout.yaml"))


def test_bad_rows_are_rejected_and_counted(corpus, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    expected = write_bad_rows(str(bad_dir / "c.parquet"))
    s = run(cfg_for(corpus, tmp_path / "out", inputs=[str(bad_dir)]))
    assert (s.rows_in, s.rows_written, s.rows_rejected) == (4, 1, 3)
    rejects = pq.read_table(os.path.join(s.root, "rejects")).to_pylist()
    assert {r["key"] for r in rejects} == set(expected)
    for r in rejects:
        assert r["reason"].startswith(expected[r["key"]]) and r["stage"] == "tokenize"
        assert r["source"].endswith("c.parquet") and r["row"] in (0, 1, 2)
    entry = next(iter(json.load(open(os.path.join(s.root, "manifest.json")))["inputs"].values()))
    assert entry["rows_in"] == entry["rows_written"] + entry["rows_rejected"] == 4 and entry["rejects"]


def test_other_codebook_is_refused_before_any_work(corpus, tmp_path):
    write_grid_file(str(tmp_path / "g" / "big.parquet"), grids(3, seed=1, codebook_size=128), "x", codebook_size=128)
    with pytest.raises(InputError, match="codebook of 128 codes but the vocabulary was learned on 64"):
        run(cfg_for(corpus, tmp_path / "out", inputs=[str(corpus["root"] / "grids"), str(tmp_path / "g")]))
    assert not os.path.exists(tmp_path / "out")


def test_other_quantizer_is_refused(corpus, tmp_path):
    vocab = learn_vocab(corpus["codes"][:40], num_merges=4, quantizer_fingerprint="q-aaaa")
    vocab.save(str(tmp_path / "vq.json"))
    write_grid_file(str(tmp_path / "g" / "x.parquet"), corpus["codes"][:2], "x", quantizer_fingerprint="q-bbbb")
    with pytest.raises(InputError, match="quantizer q-bbbb"):
        run(cfg_for(corpus, tmp_path / "out", inputs=[str(tmp_path / "g")], vocab=str(tmp_path / "vq.json")))


@pytest.mark.parametrize("change, message", [
    ({"codebook_size": 128}, "codebook_size 128 != the vocabulary's V = 64"),
    ({"num_merges": 5}, "num_merges 5 < the vocabulary's 12 merges"),
])
def test_layout_that_does_not_fit_the_vocabulary_is_refused(corpus, tmp_path, change, message):
    layout = IdLayout(**{**LAYOUT.model_dump(), **change})
    with pytest.raises(ConfigError, match=message):
        run(cfg_for(corpus, tmp_path / "out", layout=layout.model_dump()))


def test_incremental_runs_process_only_new_or_changed_inputs(corpus, tmp_path):
    out = tmp_path / "out"
    grid_dir = tmp_path / "grids"
    write_grid_file(str(grid_dir / "a.parquet"), corpus["codes"][40:50], "a")
    first = run(cfg_for(corpus, out, inputs=[str(grid_dir)]))
    a_out = os.path.join(first.data, os.listdir(first.data)[0])
    stamp = os.stat(a_out).st_mtime_ns

    write_grid_file(str(grid_dir / "sub" / "a.parquet"), corpus["extra"], "new")  # same name, other directory
    second = run(cfg_for(corpus, out, inputs=[str(grid_dir)]))
    assert (second.skipped, second.done, second.rows_in) == (1, 1, 10)
    assert os.stat(a_out).st_mtime_ns == stamp, "a done input must not be rewritten"
    assert len(os.listdir(second.data)) == 2 and second.totals["rows_written"] == 20

    third = run(cfg_for(corpus, out, inputs=[str(grid_dir)]))
    assert (third.skipped, third.done) == (2, 0)

    write_grid_file(str(grid_dir / "a.parquet"), corpus["codes"][40:45], "a")  # rewritten input: redone
    fourth = run(cfg_for(corpus, out, inputs=[str(grid_dir)]))
    assert (fourth.skipped, fourth.done, fourth.rows_in) == (1, 1, 5)
    assert pq.read_table(second.data).num_rows == 15 == fourth.totals["rows_written"]


def test_new_vocabulary_writes_a_new_version_and_never_mixes(corpus, tmp_path):
    out = tmp_path / "out"
    v12 = run(cfg_for(corpus, out))
    before = sorted(os.listdir(v12.data))
    v8 = run(cfg_for(corpus, out, vocab=str(corpus["root"] / "vocab8.json"), layout=None))
    assert v8.version != v12.version and v8.done == 2 and v8.skipped == 0
    assert sorted(os.listdir(v12.data)) == before
    assert max(max(t) for t in pq.read_table(v8.data).column("tokens").to_pylist()) < V + 8
    index = json.load(open(out / "manifest.json"))
    assert set(index["versions"]) == {v12.version, v8.version}
    assert index["versions"][v8.version]["vocab_fingerprint"] != index["versions"][v12.version]["vocab_fingerprint"]


def test_a_version_directory_of_another_vocabulary_is_refused(corpus, tmp_path):
    out = tmp_path / "out"
    s = run(cfg_for(corpus, out))
    m = json.load(open(os.path.join(s.root, "manifest.json")))
    m["vocab"]["fingerprint"] = "0" * 16
    json.dump(m, open(os.path.join(s.root, "manifest.json"), "w"))
    with pytest.raises(InputError, match="refusing to mix versions"):
        run(cfg_for(corpus, out))


def test_a_failing_input_is_recorded_and_retried_without_stopping_others(corpus, tmp_path):
    grid_dir = tmp_path / "g"
    write_grid_file(str(grid_dir / "ok.parquet"), corpus["codes"][40:45], "ok")
    bad = pa.table({"key": ["k"], "height": pa.array([1], pa.int32()), "width": pa.array([1], pa.int32()), "codes": ["x"]})
    pq.write_table(bad.replace_schema_metadata({b"vbpe.codebook_size": b"64"}), grid_dir / "bad.parquet")
    out = tmp_path / "out"
    s = run(cfg_for(corpus, out, inputs=[str(grid_dir)]))
    assert not s.ok and s.done == 1 and list(s.failed) == [str(grid_dir / "bad.parquet")]
    assert "expected a list of integers" in s.failed[str(grid_dir / "bad.parquet")]
    assert [n for n in os.listdir(s.data) if not n.startswith(".")] == [n for n in os.listdir(s.data)]  # no temp left
    write_grid_file(str(grid_dir / "bad.parquet"), corpus["codes"][45:47], "fixed")
    again = run(cfg_for(corpus, out, inputs=[str(grid_dir)]))
    assert again.ok and (again.done, again.skipped) == (1, 1) and again.totals["rows_written"] == 7


def test_empty_input_file_is_accounted_for(corpus, tmp_path):
    write_grid_file(str(tmp_path / "g" / "empty.parquet"), np.zeros((0, 8, 8), np.int32), "e")
    s = run(cfg_for(corpus, tmp_path / "out", inputs=[str(tmp_path / "g")]))
    assert s.ok and s.done == 1 and pq.read_table(s.data).num_rows == 0


def test_cli_round_trip_and_one_line_errors(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["tokenize", str(corpus["root"] / "grids" / "*.parquet"), "--vocab", str(corpus["root"] / "vocab.json"),
                     "--out", str(out), "--layout", corpus["layout"], "--json"])
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads(captured.out)
    assert summary["rows_written"] == 50 and summary["ok"]
    assert "rows in 50 = written 50 + rejected 0" in captured.err

    missing = cli.main(["tokenize", str(tmp_path / "nope.parquet"), "--vocab", str(corpus["root"] / "vocab.json"),
                        "--out", str(out)])
    err = capsys.readouterr().err
    assert missing == 2 and "no such file" in err and "Traceback" not in err

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"inputs: [{corpus['root']}/grids]\nvocab: x.json\nout: o\nworkers: -1\n")
    assert cli.main(["tokenize", "--config", str(bad)]) == 2
    assert "workers" in capsys.readouterr().err


def test_overlapping_runs_of_one_version_keep_each_others_entries(corpus, tmp_path):
    from pipeline.tokenize import versions

    out = tmp_path / "out"
    s = run(cfg_for(corpus, out))
    paths = versions.VersionPaths(str(out), s.version)
    meta = json.load(open(paths.manifest))
    first = versions.open_manifest(paths, meta["vocab"], LAYOUT)  # a run that opened the manifest earlier ...
    other = versions.open_manifest(paths, meta["vocab"], LAYOUT)  # ... and another run of the same version
    other.commit("/elsewhere/c.parquet", "failed", identity={}, error="x")
    first.save()
    merged = json.load(open(paths.manifest))["inputs"]
    assert set(merged) == set(meta["inputs"]) | {"/elsewhere/c.parquet"}


def test_image_shards_need_a_quantizer(corpus, tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "s-000.tar").write_bytes(b"")
    with pytest.raises(ConfigError, match="image-shard input needs the quantizer"):
        run(cfg_for(corpus, tmp_path / "out", inputs=[str(tmp_path / "shards")]))
    with pytest.raises(InputError, match="mix image shards and code-grid Parquet"):
        run(cfg_for(corpus, tmp_path / "out", inputs=[str(tmp_path / "shards"), str(corpus["root"] / "grids")]))
    with pytest.raises(ConfigError, match="image-shard input needs the quantizer"):
        cfg_for(corpus, tmp_path / "out", input_kind="shards")
    assert not os.path.exists(tmp_path / "out")


def test_the_trainer_reads_the_corpus(corpus, tmp_path):
    """The train stage's corpus loader accepts a version and gets the same ids (layout checked by fingerprint)."""
    train_corpus = pytest.importorskip("pipeline.train.corpus")
    s = run(cfg_for(corpus, tmp_path / "out"))
    table = read_version(s)
    keys = set(table.column("key").to_pylist())
    found, stats = train_corpus.load_images([s.data], keys, LAYOUT)
    assert set(found) == keys and stats["corpus_rows"] == 50
    for key, ids in zip(table.column("key").to_pylist(), table.column("input_ids").to_pylist()):
        assert found[key].tolist() == ids and train_corpus.check_ids(found[key], LAYOUT) is None
    other = IdLayout(**{**LAYOUT.model_dump(), "text_vocab_size": 999})
    with pytest.raises(InputError, match="tokenized with layout"):
        train_corpus.load_images([s.data], keys, other)


def test_tokenize_writes_run_metrics(tmp_path):
    import json

    from pipeline.tokenize.api import run
    from schemas.tokenize import TokenizeConfig
    from tests.helpers.grids import write_synthetic
    from pipeline.learn.api import learn_vocabulary as learn
    from schemas.learn import LearnConfig

    (tmp_path / "g").mkdir()
    write_synthetic(tmp_path / "g", 20, parts=1, side=8, codebook_size=32)
    learn(LearnConfig(inputs=[str(tmp_path / "g")], out=str(tmp_path / "v.json"), merges=10, progress=False,
                      checkpoint_every=0))
    from pipeline.runner import execute
    from pipeline.stage import get_stage

    summary = execute(get_stage("tokenize"), TokenizeConfig(inputs=[str(tmp_path / "g")], vocab=str(tmp_path / "v.json"),
                                                            out=str(tmp_path / "t")))
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert m["stage"] == "tokenize" and m["status"] == "ok" and m["rows_accounted"]
    assert m["rows_in"] == 20 == m["rows_out"] + m["rows_rejected"] and m["tokens"] == summary.tokens


def test_an_unreadable_grid_file_fails_alone_and_the_run_exits_3(corpus, tmp_path, capsys):
    """docs/tokenize.md: a bad input is recorded as failed, the others go on, the run exits 3."""
    grid_dir = tmp_path / "g"
    write_grid_file(str(grid_dir / "ok.parquet"), corpus["codes"][40:45], "ok")
    (grid_dir / "corrupt.parquet").write_bytes(b"PAR1 but not really" * 10)
    out = tmp_path / "out"
    code = cli.main(["tokenize", str(grid_dir), "--vocab", str(corpus["root"] / "vocab.json"), "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 3 and summary["done"] == 1 and summary["rows_written"] == 5
    assert list(summary["failed"]) == [str(grid_dir / "corrupt.parquet")]
    assert "not a readable Parquet file" in summary["failed"][str(grid_dir / "corrupt.parquet")]
    entries = json.load(open(os.path.join(summary["root"], "manifest.json")))["inputs"]
    assert entries[str(grid_dir / "corrupt.parquet")]["status"] == "failed"
    write_grid_file(str(grid_dir / "corrupt.parquet"), corpus["codes"][45:47], "fixed")
    again = run(cfg_for(corpus, out, inputs=[str(grid_dir)], layout=None))
    assert again.ok and (again.done, again.skipped) == (1, 1)


def test_non_integer_codebook_metadata_is_one_line(corpus, tmp_path, capsys):
    t = pa.table({"key": ["k"], "height": pa.array([1], pa.int32()), "width": pa.array([1], pa.int32()),
                  "codes": pa.array([[1]], pa.list_(pa.int32()))})
    (tmp_path / "g").mkdir()
    pq.write_table(t.replace_schema_metadata({b"vbpe.codebook_size": b"many"}), tmp_path / "g" / "x.parquet")
    code = cli.main(["tokenize", str(tmp_path / "g"), "--vocab", str(corpus["root"] / "vocab.json"), "--out",
                     str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "vbpe.codebook_size is 'many', not an integer" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_duplicate_keys_and_unstamped_grids_are_counted_and_warned(corpus, tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    vocab = learn_vocab(corpus["codes"][:40], num_merges=4, quantizer_fingerprint="q-aaaa")
    vocab.save(str(tmp_path / "vq.json"))
    write_grid_file(str(tmp_path / "g" / "a.parquet"), corpus["codes"][40:46], "dup")
    write_grid_file(str(tmp_path / "g" / "b.parquet"), corpus["codes"][46:50], "dup")  # keys dup-0000..0003 again
    s = run(cfg_for(corpus, tmp_path / "out", inputs=[str(tmp_path / "g")], vocab=str(tmp_path / "vq.json"), layout=None))
    assert s.ok and s.rows_written == 10 and s.duplicate_keys == 4 and s.without_quantizer == 2
    assert any("repeat another row's key" in line for line in s.lines())
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "4 rows written in this run repeat the key" in warned
    assert "do not say which quantizer made them" in warned and "q-aaaa" in warned


def test_stale_temp_files_of_dead_runs_are_removed_live_ones_kept(corpus, tmp_path):
    import socket
    import subprocess

    from pipeline import storage

    out = tmp_path / "out"
    s = run(cfg_for(corpus, out))
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = storage._HOST
    stale = os.path.join(s.data, f".part-0-abc.parquet.tmp-{host}-{dead.pid}-0a1b2c3d")
    live = os.path.join(s.data, f".part-1-abc.parquet.tmp-{host}-{os.getpid()}-0a1b2c3d")
    other_host = os.path.join(s.data, f".part-2-abc.parquet.tmp-elsewhere-{dead.pid}-0a1b2c3d")
    for p in (stale, live, other_host):
        open(p, "wb").close()
    assert socket.gethostname()
    run(cfg_for(corpus, out))
    assert not os.path.exists(stale) and os.path.exists(live) and os.path.exists(other_host)
    os.utime(other_host, (0, 0))  # an hour-old temp of another host is stale too
    run(cfg_for(corpus, out))
    assert not os.path.exists(other_host) and os.path.exists(live)


def test_a_killed_run_redoes_nothing_it_committed(corpus, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    grid_dir = tmp_path / "many"
    for i in range(60):
        write_grid_file(str(grid_dir / f"p-{i:03d}.parquet"), grids(30, seed=100 + i), f"p{i}")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "tokenize", str(grid_dir), "--vocab", str(corpus["root"] / "vocab.json"),
           "--out", str(out), "--executor", "local"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed: dict = {}
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        committed = _committed(out)
        if committed:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    committed = _committed(out)
    assert 1 <= len(committed) < 60, f"run was not caught mid-way ({len(committed)} inputs committed)"
    outputs = {url: os.stat(os.path.join(str(next(out.glob("v1-*"))), e["output"])).st_mtime_ns for url, e in committed.items()}
    again = run(cfg_for(corpus, out, inputs=[str(grid_dir)], layout=None))
    assert again.ok and again.skipped == len(committed) and again.done == 60 - len(committed)
    root = str(next(out.glob("v1-*")))
    assert {u: os.stat(os.path.join(root, committed[u]["output"])).st_mtime_ns for u in committed} == outputs
    assert pq.read_table(os.path.join(root, "data")).num_rows == 60 * 30
    assert not [n for n in os.listdir(os.path.join(root, "data")) if n.startswith(".")]


def _committed(out) -> dict:
    """Inputs whose entry file says done: what a run committed, even if it was killed before rewriting manifest.json."""
    found = {}
    for f in out.glob("v1-*/manifest.d/*.json"):
        try:
            e = json.loads(f.read_text())
        except ValueError:
            continue
        if e["status"] == "done":
            found[e["input"]] = e
    return found
