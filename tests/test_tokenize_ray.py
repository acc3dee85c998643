"""Ray tasks (one per input file) write exactly what the in-process run writes, failures included."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.tokenize.api import run
from schemas.layout import IdLayout
from schemas.tokenize import TokenizeConfig
from tests.helpers.corpus import V, grids, learn_vocab, write_bad_rows, write_grid_file

pytestmark = pytest.mark.ray


def test_ray_tasks_match_local_run(ray_local, tmp_path):
    codes = grids(90, seed=11)
    learn_vocab(codes[:40]).save(str(tmp_path / "vocab.json"))
    for i in range(5):
        write_grid_file(str(tmp_path / "g" / f"part-{i}.parquet"), codes[40 + 10 * i: 50 + 10 * i], f"p{i}")
    write_bad_rows(str(tmp_path / "g" / "bad.parquet"))
    pq.write_table(pa.table({"key": ["x"], "height": [1], "width": [1], "codes": ["not a list"]}), tmp_path / "g" / "broken.parquet")
    base = dict(inputs=[str(tmp_path / "g")], vocab=str(tmp_path / "vocab.json"),
                layout=IdLayout(text_vocab_size=32, codebook_size=V, num_merges=12))

    local = run(TokenizeConfig(out=str(tmp_path / "local"), executor="local", **base))
    on_ray = run(TokenizeConfig(out=str(tmp_path / "ray"), executor="ray", workers=2, **base))

    assert on_ray.version == local.version
    assert (on_ray.done, on_ray.rows_in, on_ray.rows_written, on_ray.rows_rejected) == (6, 54, 51, 3)
    assert list(on_ray.failed) == list(local.failed) == [str(tmp_path / "g" / "broken.parquet")]
    assert "expected a list of integers" in on_ray.failed[str(tmp_path / "g" / "broken.parquet")]
    assert sorted(os.listdir(on_ray.data)) == sorted(os.listdir(local.data))
    for name in os.listdir(local.data):
        assert pq.read_table(os.path.join(on_ray.data, name)).equals(pq.read_table(os.path.join(local.data, name)))
    again = run(TokenizeConfig(out=str(tmp_path / "ray"), executor="ray", **base))
    assert (again.done, again.skipped, len(again.failed)) == (0, 6, 1)  # only the broken file is tried again
