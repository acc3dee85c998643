"""A token corpus version is read without Ray by every reader users reach for (each one installed here)."""
from __future__ import annotations

import importlib.util
import os

import pyarrow.parquet as pq
import pytest

from pipeline.tokenize.api import run
from schemas.layout import IdLayout
from schemas.tokenize import TokenizeConfig
from tests.tokenize_support import V, grids, learn_vocab, write_bad_rows, write_grid_file

LAYOUT = IdLayout(text_vocab_size=500, codebook_size=V, num_merges=12)


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    codes = grids(60, seed=5)
    learn_vocab(codes[:40]).save(str(root / "vocab.json"))
    write_grid_file(str(root / "g" / "one.parquet"), codes[40:50], "one", captions=True)
    write_grid_file(str(root / "g" / "two.parquet"), codes[50:60], "two")
    write_bad_rows(str(root / "g" / "three.parquet"))  # also leaves a rejects file beside the data
    s = run(TokenizeConfig(inputs=[str(root / "g")], vocab=str(root / "vocab.json"), out=str(root / "out"), layout=LAYOUT))
    assert s.rows_written == 21
    expected = pq.read_table(s.data).sort_by("key").to_pydict()
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


@pytest.mark.skipif(importlib.util.find_spec("duckdb") is None, reason="duckdb not installed")
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


@pytest.mark.skipif(importlib.util.find_spec("polars") is None, reason="polars not installed")
def test_polars(version):
    import polars as pl

    data, expected = version
    df = pl.read_parquet(os.path.join(data, "*.parquet"))
    assert df.schema["tokens"] == pl.List(pl.Int32) and df.schema["input_ids"] == pl.List(pl.Int32)
    _check(df.to_dict(as_series=False), expected)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets not installed")
def test_huggingface_datasets(version, tmp_path):
    import datasets

    data, expected = version
    files = sorted(os.path.join(data, n) for n in os.listdir(data))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.features["tokens"].feature.dtype == "int32"
    _check(ds.to_dict(), expected)
