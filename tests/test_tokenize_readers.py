"""A token corpus version is read without Ray by every reader users reach for (all pinned in the dev extra).

Every reader's rows are compared with rows computed independently of the writer: the contract's
reference encoder applied to the input codes, the layout's id formula, the input captions.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.bpe import reference
from pipeline.tokenize.api import run
from schemas.layout import IdLayout
from schemas.tokenize import TokenizeConfig
from tests.helpers.corpus import V, grids, learn_vocab, write_bad_rows, write_grid_file

LAYOUT = IdLayout(text_vocab_size=500, codebook_size=V, num_merges=12)


def _expected(codes, keys, vocab, captions) -> dict:
    merges = [(m.pair[0], m.pair[1], m.id, m.offset) for m in vocab.merges]
    rows = {"key": [], "tokens": [], "anchors": [], "input_ids": [], "n_tokens": [], "caption": []}
    for key, grid in sorted(zip(keys, codes)):
        tokens, anchors = reference.encode(grid, merges)
        rows["key"].append(key)
        rows["tokens"].append(tokens)
        rows["anchors"].append(anchors)
        rows["input_ids"].append([LAYOUT.begin_image_id] + [LAYOUT.code_offset + t for t in tokens] + [LAYOUT.end_image_id])
        rows["n_tokens"].append(len(tokens))
        rows["caption"].append(captions.get(key))
    rows["key"].append("good")  # the one good row of the bad-rows file: codes [[1, 1], [2, 2]]
    tokens, anchors = reference.encode(np.array([[1, 1], [2, 2]]), merges)
    for col, value in (("tokens", tokens), ("anchors", anchors), ("n_tokens", len(tokens)), ("caption", None),
                       ("input_ids", [LAYOUT.begin_image_id] + [LAYOUT.code_offset + t for t in tokens] + [LAYOUT.end_image_id])):
        rows[col].append(value)
    order = sorted(range(len(rows["key"])), key=lambda i: rows["key"][i])
    return {c: [v[i] for i in order] for c, v in rows.items()}


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    codes = grids(60, seed=5)
    vocab = learn_vocab(codes[:40])
    vocab.save(str(root / "vocab.json"))
    one = write_grid_file(str(root / "g" / "one.parquet"), codes[40:50], "one", captions=True)
    two = write_grid_file(str(root / "g" / "two.parquet"), codes[50:60], "two")
    write_bad_rows(str(root / "g" / "three.parquet"))  # also leaves a rejects file beside the data
    s = run(TokenizeConfig(inputs=[str(root / "g")], vocab=str(root / "vocab.json"), out=str(root / "out"), layout=LAYOUT))
    assert s.rows_written == 21
    expected = _expected(list(codes[40:60]), one + two, vocab, {k: f"caption of {k}" for k in one})
    assert any(n < 64 for n in expected["n_tokens"]), "the vocabulary never merged: the comparison would prove little"
    return s.data, expected


def _check(rows: dict, expected: dict) -> None:
    order = sorted(range(len(rows["key"])), key=lambda i: rows["key"][i])
    for col in ("key", "tokens", "anchors", "input_ids", "n_tokens", "caption"):
        got = [rows[col][i] for i in order]
        got = [list(v) if v is not None and not isinstance(v, (str, int)) else v for v in got]
        assert got == expected[col], col


def test_pyarrow_reads_the_directory(version):
    data, expected = version
    _check(pq.read_table(data).to_pydict(), expected)  # the data directory holds nothing but the Parquet files


def test_duckdb(version):
    import duckdb

    data, expected = version
    con = duckdb.connect()
    rel = con.execute(f"SELECT key, tokens, anchors, input_ids, n_tokens, caption FROM read_parquet('{data}/*.parquet')")
    cols = [d[0] for d in rel.description]
    rows = rel.fetchall()
    _check({c: [r[i] for r in rows] for i, c in enumerate(cols)}, expected)
    types = dict(con.execute(f"DESCRIBE SELECT tokens, input_ids FROM read_parquet('{data}/*.parquet')").fetchall()[i][:2]
                 for i in range(2))
    assert types == {"tokens": "INTEGER[]", "input_ids": "INTEGER[]"}


def test_polars(version):
    import polars as pl

    data, expected = version
    df = pl.read_parquet(os.path.join(data, "*.parquet"))
    assert df.schema["tokens"] == pl.List(pl.Int32) and df.schema["input_ids"] == pl.List(pl.Int32)
    _check(df.to_dict(as_series=False), expected)


def test_huggingface_datasets(version, tmp_path):
    import datasets

    data, expected = version
    files = sorted(os.path.join(data, n) for n in os.listdir(data))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.features["tokens"].feature.dtype == "int32"
    _check(ds.to_dict(), expected)
