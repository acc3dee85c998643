"""`vbpe tokenize` on image shards: quantize + vocabulary in one Ray Data pass, same outputs as via code grids."""
from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import cli
from pipeline.bpe.encoder import BpeEncoder
from pipeline.ingest.reader import Decoded, iter_shard
from pipeline.ingest.stream_rows import ENCODED_SCHEMA, END, IMAGE, REJECT
from pipeline.ingest.writer import write_shard
from pipeline.quantize.fit import ensure_codebook
from pipeline.quantize.kmeans import KMeansEncoder, load_codebook
from pipeline.tokenize.api import run
from schemas.base import ConfigError, InputError
from schemas.layout import IdLayout
from schemas.quantize import IngestOptions, KMeansQuantizerConfig
from schemas.tokenize import TokenizeConfig
from tests.helpers.shards import good_samples, write_bad_corpus
from tests.helpers.corpus import grids, learn_vocab

MAX_PIXELS = 1_000_000
V = 16
LAYOUT = IdLayout(text_vocab_size=100, codebook_size=V, num_merges=16)
QUANTIZER = {"kind": "kmeans", "image_size": 64, "patch_size": 8, "codebook_size": V, "fit_patches": 3000}
# 2 CPUs: reader tasks, one encoder actor and the tokenize tasks must all fit at once.
RESOURCES = {"batch_size": 8, "cpus_per_actor": 0.5, "cpus_per_reader": 0.5, "ingest": {"max_pixels": MAX_PIXELS}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three caption-carrying shards, a k-means codebook, and a vocabulary learned on that quantizer's codes."""
    root = tmp_path_factory.mktemp("tshards")
    for i in range(3):
        write_shard(str(root / "shards" / f"s-{i}.tar"), good_samples(f"s{i}_", 5 + i, seed=i))
    write_shard(str(root / "train.tar"), good_samples("train", 30, seed=50, caption=False))
    q = KMeansQuantizerConfig(codebook=str(root / "cb.safetensors"), **{k: v for k, v in QUANTIZER.items() if k != "kind"})
    assert ensure_codebook(q, [str(root / "train.tar")], IngestOptions(), None)
    cb = load_codebook(q.codebook)
    kmeans = KMeansEncoder(cb.spec(), {"centroids": cb.centroids})
    train = [d.pixels for d in iter_shard(str(root / "train.tar"), cb.spec().image, IngestOptions()) if isinstance(d, Decoded)]
    vocab = learn_vocab(kmeans.encode(np.stack(train)), num_merges=12, codebook_size=V, quantizer_fingerprint=cb.fingerprint)
    vocab.save(str(root / "vocab.json"))
    (root / "layout.yaml").write_text(LAYOUT.to_yaml())
    quantizer = {**QUANTIZER, "codebook": q.codebook}
    (root / "q.yaml").write_text(yaml.safe_dump(quantizer))
    (root / "resources.yaml").write_text(yaml.safe_dump({"quantize": RESOURCES, "cpus_per_task": 0.5}))
    return {"root": root, "vocab": vocab, "kmeans": kmeans, "spec": cb.spec(), "quantizer": quantizer}


def shard_cfg(setup, inputs, out, **kw) -> TokenizeConfig:
    base = {"inputs": inputs, "vocab": str(setup["root"] / "vocab.json"), "out": str(out), "layout": LAYOUT.model_dump(),
            "quantize": {"quantizer": setup["quantizer"], **RESOURCES}, "cpus_per_task": 0.5}
    base.update(kw)
    return TokenizeConfig.from_dict(base)


def version_manifest(summary) -> dict:
    with open(os.path.join(summary.root, "manifest.json")) as f:
        return json.load(f)


def expected_tokens(setup, url: str) -> dict[str, list[int]]:
    """key -> tokens, computed here without Ray: decode, k-means codes, then the vocabulary."""
    enc = BpeEncoder(setup["vocab"])
    out = {}
    for d in iter_shard(url, setup["spec"].image, IngestOptions(max_pixels=MAX_PIXELS)):
        if isinstance(d, Decoded):
            out[d.key] = enc.encode_grid(setup["kmeans"].encode(d.pixels[None])[0])[0].tolist()
    return out


def test_stream_step_encodes_images_and_turns_invalid_grids_into_rejects(setup):
    """The map_batches step alone: image rows -> tokens, a bad grid -> a tokenize reject, other rows untouched."""
    from pipeline.tokenize.stream import TOKEN_STREAM_SCHEMA, encode_rows

    g = grids(2, seed=4, codebook_size=V)
    rows = [
        {"shard": 0, "row": 0, "kind": IMAGE, "key": "a", "caption": "cap a", "height": 8, "width": 8, "codes": g[0].ravel().tolist()},
        {"shard": 0, "row": 1, "kind": REJECT, "key": "b", "stage": "decode", "reason": "corrupt image: x"},
        {"shard": 1, "row": 0, "kind": IMAGE, "key": "c", "height": 2, "width": 2, "codes": [0, 1, 2, V]},
        {"shard": 0, "row": 2, "kind": IMAGE, "key": "d", "height": 8, "width": 8, "codes": g[1].ravel().tolist()},
        {"shard": 0, "row": -1, "kind": END, "key": "s0", "count": 3, "seconds": 0.1},
    ]
    batch = pa.Table.from_pylist(rows, schema=ENCODED_SCHEMA)
    out = encode_rows(batch, BpeEncoder(setup["vocab"]), LAYOUT)
    assert out.schema == TOKEN_STREAM_SCHEMA and out.num_rows == 5
    got = out.to_pylist()
    enc = BpeEncoder(setup["vocab"])
    for i, grid in ((0, g[0]), (3, g[1])):
        tokens, anchors = enc.encode_grid(grid)
        assert got[i]["kind"] == IMAGE and got[i]["tokens"] == tokens.tolist() and got[i]["anchors"] == anchors.tolist()
        assert got[i]["n_tokens"] == len(tokens)
        assert got[i]["input_ids"] == [LAYOUT.begin_image_id, *(LAYOUT.code_offset + tokens).tolist(), LAYOUT.end_image_id]
    assert any(r["n_tokens"] < 64 for r in (got[0], got[3])), "vocabulary never applied: the test would prove nothing"
    assert (got[2]["kind"], got[2]["stage"], got[2]["reason"]) == (REJECT, "tokenize", f"code {V} outside [0, {V})")
    assert got[2]["tokens"] is None and got[1] == {**got[1], "kind": REJECT, "stage": "decode", "tokens": None}
    assert got[4]["kind"] == END and got[4]["count"] == 3 and got[0]["caption"] == "cap a"


def test_refused_before_any_work(setup, tmp_path, capsys):
    """Another quantizer (same codebook size), another codebook size, no quantizer, executor local."""
    root = setup["root"]
    other = KMeansQuantizerConfig(codebook=str(tmp_path / "other.safetensors"), seed=9,
                                  **{k: v for k, v in QUANTIZER.items() if k != "kind"})
    ensure_codebook(other, [str(root / "train.tar")], IngestOptions(), None)
    shards = [str(root / "shards")]
    with pytest.raises(InputError, match=f"were made by quantizer {load_codebook(other.codebook).fingerprint} but the "
                                         f"vocabulary was learned on codes of quantizer {setup['vocab'].quantizer_fingerprint}"):
        run(shard_cfg(setup, shards, tmp_path / "out", quantize={"quantizer": {**setup["quantizer"], "codebook": other.codebook}}))
    learn_vocab(grids(40, seed=3), num_merges=4).save(str(tmp_path / "v64.json"))  # V = 64
    with pytest.raises(InputError, match="codebook of 16 codes but the vocabulary was learned on 64"):
        run(shard_cfg(setup, shards, tmp_path / "out", vocab=str(tmp_path / "v64.json"), layout=None))
    with pytest.raises(ConfigError, match="executor: local only applies to code-grid input"):
        run(shard_cfg(setup, shards, tmp_path / "out", executor="local"))
    code = cli.main(["tokenize", str(root / "shards"), "--vocab", str(root / "vocab.json"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "needs the quantizer" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.ray
def test_shards_give_the_tokens_of_quantize_then_tokenize(ray_local, setup, tmp_path, capsys):
    from pipeline.quantize.api import run as run_quantize
    from schemas.quantize import QuantizeConfig

    root = setup["root"]
    qout = str(tmp_path / "codes")
    q = run_quantize(QuantizeConfig.from_dict({"inputs": [str(root / "shards")], "out": qout,
                                               "quantizer": setup["quantizer"], **RESOURCES}))
    assert q.ok and q.rows_written == 18
    via_grids = run(TokenizeConfig(inputs=[os.path.join(qout, "grids")], vocab=str(root / "vocab.json"),
                                   out=str(tmp_path / "via-grids"), layout=LAYOUT, executor="local"))
    code = cli.main(["tokenize", str(root / "shards" / "s-{0..2}.tar"), "--vocab", str(root / "vocab.json"),
                     "--out", str(tmp_path / "direct"), "--layout", str(root / "layout.yaml"),
                     "--quantizer", str(root / "q.yaml"), "--config", str(root / "resources.yaml"), "--json"])
    direct = json.loads(capsys.readouterr().out)
    assert code == 0 and direct["ok"] and direct["input_kind"] == "shards" and direct["version"] == via_grids.version
    assert (direct["done"], direct["rows_in"], direct["rows_written"], direct["rows_rejected"]) == (3, 18, 18, 0)

    quantized = json.load(open(os.path.join(qout, "manifest.json")))["inputs"]
    grid_entries = version_manifest(via_grids)["inputs"]
    shard_entries = json.load(open(os.path.join(direct["root"], "manifest.json")))["inputs"]
    assert set(shard_entries) == set(quantized) == {str(root / "shards" / f"s-{i}.tar") for i in range(3)}
    merged_any = False
    for url, entry in shard_entries.items():
        grid_file = os.path.join(qout, quantized[url]["output"])
        want = pq.read_table(os.path.join(via_grids.root, grid_entries[grid_file]["output"]))
        got = pq.read_table(os.path.join(direct["root"], entry["output"]))
        assert got.schema.equals(want.schema, check_metadata=True)
        assert got.to_pylist() == want.to_pylist()  # row by row: keys, tokens, anchors, input_ids, caption, source
        assert got.column("source").to_pylist() == [url] * got.num_rows
        assert {k: v for k, v in entry.items() if k in ("rows_in", "rows_written", "tokens", "cells")} == \
               {k: v for k, v in grid_entries[grid_file].items() if k in ("rows_in", "rows_written", "tokens", "cells")}
        merged_any |= any(n < 64 for n in got.column("n_tokens").to_pylist())
    assert merged_any, "vocabulary never applied: the comparison would prove nothing"
    table = pq.read_table(os.path.join(direct["root"], "data"))
    assert dict(zip(table.column("key").to_pylist(), table.column("caption").to_pylist()))["s1_0002"] == "sample s1_2"


@pytest.mark.ray
def test_bad_images_and_truncated_tar_are_accounted_for_and_a_failed_shard_is_retried(ray_local, setup, tmp_path, capsys):
    from jobs.tokenize import main as job

    exp = write_bad_corpus(str(tmp_path / "bad"), MAX_PIXELS)
    config = tmp_path / "tok.yaml"
    config.write_text(yaml.safe_dump({
        "inputs": [str(tmp_path / "bad")], "vocab": str(setup["root"] / "vocab.json"), "out": str(tmp_path / "out"),
        "layout": LAYOUT.model_dump(), "quantize": {"quantizer": setup["quantizer"], **RESOURCES}, "cpus_per_task": 0.5}))
    assert job(["--config", str(config)]) == 3
    report = json.loads(capsys.readouterr().out)
    unreadable = exp["unreadable_shard"]
    assert report["done"] == 3 and list(report["failed"]) == [unreadable] and "not a readable tar" in report["failed"][unreadable]
    root = os.path.join(str(tmp_path / "out"), report["version"])
    entries = json.load(open(os.path.join(root, "manifest.json")))["inputs"]
    assert entries[unreadable]["status"] == "failed"
    done = {u: e for u, e in entries.items() if e["status"] == "done"}
    rows_written = rows_rejected = 0
    for url, e in done.items():
        assert e["rows_in"] == e["rows_written"] + e["rows_rejected"]
        table = pq.read_table(os.path.join(root, e["output"]))
        assert table.num_rows == e["rows_written"]
        rejects = pq.read_table(os.path.join(root, e["rejects"])).to_pylist() if e["rejects"] else []
        assert len(rejects) == e["rows_rejected"] and all(r["source"] == url for r in rejects)
        # Every good sample is encoded, with the tokens of decode -> k-means -> vocabulary done here by hand.
        assert dict(zip(table.column("key").to_pylist(), table.column("tokens").to_pylist())) == expected_tokens(setup, url)
        rows_written += e["rows_written"]
        rows_rejected += e["rows_rejected"]
    assert (report["rows_written"], report["rows_rejected"]) == (rows_written, rows_rejected)
    assert report["rows_in"] == rows_written + rows_rejected
    all_rejects = [r for f in glob.glob(os.path.join(root, "rejects", "*.rejects.parquet")) for r in pq.read_table(f).to_pylist()]
    by_key = {(r["key"], r["reason"].split(":")[0]) for r in all_rejects}
    assert all((k, why) in by_key for k, why in exp["bad_reasons"].items())
    truncated = [r for r in all_rejects if r["source"] == exp["truncated_shard"]]
    assert len(truncated) == 1 and truncated[0]["reason"].startswith("truncated or corrupt tar")
    assert done[exp["truncated_shard"]]["rows_written"] >= 1
    written = {k for url in done for k in pq.read_table(os.path.join(root, done[url]["output"])).column("key").to_pylist()}
    assert exp["good_keys"] <= written

    write_shard(unreadable, good_samples("fixed", 4))  # the retry picks it up; nothing else is redone
    assert job(["--config", str(config)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["done"], again["skipped"], again["rows_written"], again["failed"]) == (1, 3, 4, {})
    assert again["totals"]["inputs_done"] == 4 and again["totals"]["inputs_failed"] == 0


@pytest.mark.ray
def test_an_added_shard_is_the_only_one_processed(ray_local, setup, tmp_path):
    src, shards = setup["root"] / "shards", tmp_path / "shards"
    shards.mkdir()
    for i in (0, 1):
        shutil.copy(src / f"s-{i}.tar", shards / f"s-{i}.tar")
    first = run(shard_cfg(setup, [str(shards)], tmp_path / "out"))
    assert first.ok and (first.done, first.rows_written) == (2, 11)
    stamps = {f: os.stat(f).st_mtime_ns for f in glob.glob(os.path.join(first.data, "*.parquet"))}

    shutil.copy(src / "s-2.tar", shards / "s-2.tar")
    second = run(shard_cfg(setup, [str(shards)], tmp_path / "out"))
    assert (second.done, second.skipped, second.rows_in, second.rows_written) == (1, 2, 7, 7)
    assert {f: os.stat(f).st_mtime_ns for f in stamps} == stamps, "a done shard must not be rewritten"
    assert second.totals["rows_written"] == 18 == pq.read_table(second.data).num_rows
    assert set(version_manifest(second)["inputs"]) == {str(shards / f"s-{i}.tar") for i in range(3)}

    third = run(shard_cfg(setup, [str(shards)], tmp_path / "out"))
    assert (third.done, third.skipped) == (0, 3)


def test_submit_sees_the_quantizer_files_as_paths_to_check(setup):
    """`vbpe submit` refuses relative paths (they break in a job's working dir): the quantizer's files count too."""
    cfg = shard_cfg(setup, ["s3://b/shards/"], "s3://b/out", vocab="s3://b/vocab.json", layout=None,
                    quantize={"quantizer": {**setup["quantizer"], "codebook": "models/cb.safetensors"}})
    assert cfg.local_relative_paths() == ["models/cb.safetensors"]
