"""Reading code-grid Parquet: every row accepted or rejected with a reason; codebooks must agree."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.codegrids import open_corpus, read_rows, write_rejects
from schemas.base import InputError
from tests.helpers.grids import write_raw, write_synthetic


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    good = list(range(16))
    rows = [
        {"key": "ok", "height": 4, "width": 4, "codes": good},
        {"key": "short", "height": 4, "width": 4, "codes": good[:15]},
        {"key": "big-code", "height": 2, "width": 2, "codes": [0, 1, 2, 16]},
        {"key": "negative", "height": 2, "width": 2, "codes": [0, -1, 2, 3]},
        {"key": "no-codes", "height": 2, "width": 2, "codes": None},
        {"key": None, "height": 2, "width": 2, "codes": [0, 1, 2, 3]},
        {"key": "zero", "height": 0, "width": 4, "codes": []},
        {"key": "null-code", "height": 1, "width": 2, "codes": [1, None]},
        {"key": "ok2", "height": 1, "width": 3, "codes": [15, 0, 7]},
    ]
    write_raw(tmp_path / "g.parquet", rows)
    corpus = open_corpus([str(tmp_path)])
    grids = read_rows(corpus, 0, corpus.rows)
    assert grids.keys == ["ok", "ok2"]
    assert grids.rows.tolist() == [0, 8]
    assert grids.grid(1).tolist() == [[15, 0, 7]]
    reasons = {r.key: r.reason for r in grids.rejects}
    assert len(grids) + len(grids.rejects) == len(rows)
    assert "expected height*width = 16" in reasons["short"]
    assert "code 16 outside [0, 16)" in reasons["big-code"]
    assert "code -1 outside" in reasons["negative"]
    assert reasons["no-codes"] == "missing codes"
    assert reasons[None] == "missing key"
    assert "shape 0x4" in reasons["zero"]
    assert reasons["null-code"] == "null code"
    write_rejects(str(tmp_path / "r.rejects.parquet"), grids.rejects, "learn")
    table = pq.read_table(tmp_path / "r.rejects.parquet")
    assert table.num_rows == 7 and set(table.column("stage").to_pylist()) == {"learn"}


@pytest.mark.parametrize("codes_type", [pa.list_(pa.int64()), pa.list_(pa.uint16()), pa.large_list(pa.int8())])
def test_any_integer_list_type(tmp_path, codes_type):
    write_raw(tmp_path / "g.parquet", [{"key": "a", "height": 2, "width": 2, "codes": [1, 2, 3, 4]}], codes_type=codes_type)
    grids = read_rows(open_corpus([str(tmp_path / "g.parquet")]), 0, 1)
    assert grids.grid(0).tolist() == [[1, 2], [3, 4]] and grids.codes.dtype == np.int32


def test_row_slices_cover_the_corpus(tmp_path):
    write_synthetic(tmp_path, 50, parts=3)
    corpus = open_corpus([str(tmp_path / "*.parquet")])
    whole = read_rows(corpus, 0, corpus.rows)
    parts = [read_rows(corpus, a, b) for a, b in corpus.row_ranges(4)]
    assert sum(len(p) for p in parts) == 50
    assert [k for p in parts for k in p.keys] == whole.keys
    assert np.array_equal(np.concatenate([p.codes for p in parts]), whole.codes)
    assert sum(p.fingerprint_sum() for p in parts) % (1 << 64) == whole.fingerprint_sum()


def test_codebook_must_be_known_and_agree(tmp_path):
    write_raw(tmp_path / "a.parquet", [{"key": "a", "height": 1, "width": 2, "codes": [1, 2]}], codebook_size=16)
    write_raw(tmp_path / "b.parquet", [{"key": "b", "height": 1, "width": 2, "codes": [1, 2]}], codebook_size=32)
    with pytest.raises(InputError, match="different codebook sizes"):
        open_corpus([str(tmp_path)])
    assert open_corpus([str(tmp_path)], codebook_size=64).codebook_size == 64
    write_raw(tmp_path / "c.parquet", [{"key": "c", "height": 1, "width": 2, "codes": [1, 2]}], codebook_size=None)
    with pytest.raises(InputError, match="do not declare"):
        open_corpus([str(tmp_path / "c.parquet")])


def test_missing_inputs_and_foreign_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_corpus([str(tmp_path / "nope.parquet")])
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match="missing column"):
        open_corpus([str(tmp_path)])
