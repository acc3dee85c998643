"""Grids, vocabulary, layout and corpus all on S3 (a real S3 API: moto's server on loopback)."""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from pipeline import codegrids
from pipeline.tokenize.api import run
from schemas.base import StorageOptions
from tests.helpers.s3 import moto_s3
from schemas.layout import IdLayout
from schemas.tokenize import TokenizeConfig
from tests.helpers.corpus import V, grids, learn_vocab

BUCKET = "corpus"


@pytest.fixture(scope="module")
def s3():
    import s3fs

    with moto_s3(BUCKET) as endpoint:
        yield s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True), \
            StorageOptions(endpoint_url=endpoint)

def put_grids(fs, key: str, codes, prefix: str) -> None:
    n, h, w = codes.shape
    import numpy as np

    g = codegrids.Grids([f"{prefix}-{i}" for i in range(n)], np.full(n, h, np.int32), np.full(n, w, np.int32),
                        codes.reshape(-1).astype(np.int32), [None] * n, [None] * n)
    buf = io.BytesIO()
    import pyarrow as pa
    from schemas.grids import code_grid_schema

    offsets = pa.array(g.offsets.astype(np.int32))
    table = pa.table({"key": g.keys, "height": g.heights, "width": g.widths,
                      "codes": pa.ListArray.from_arrays(offsets, pa.array(g.codes, pa.int32())), "source": [None] * n},
                     schema=code_grid_schema(V))
    pq.write_table(table, buf)
    fs.pipe(f"{BUCKET}/{key}", buf.getvalue())


def test_s3_in_s3_out_incremental(s3):
    fs, options = s3
    codes = grids(70, seed=9)
    vocab = learn_vocab(codes[:40])
    fs.pipe(f"{BUCKET}/vocab.json", json.dumps(vocab.to_json()).encode())
    fs.pipe(f"{BUCKET}/layout.yaml", IdLayout(text_vocab_size=10, codebook_size=V, num_merges=12).to_yaml().encode())
    put_grids(fs, "grids/part-000.parquet", codes[40:55], "p0")
    cfg = TokenizeConfig(inputs=[f"s3://{BUCKET}/grids/"], vocab=f"s3://{BUCKET}/vocab.json", out=f"s3://{BUCKET}/tokens",
                         layout=f"s3://{BUCKET}/layout.yaml", storage=options)
    first = run(cfg)
    assert first.ok and first.rows_written == 15 and first.data.startswith("s3://")

    put_grids(fs, "grids/part-001.parquet", codes[55:70], "p1")
    second = run(cfg)
    assert (second.done, second.skipped, second.rows_written) == (1, 1, 15)

    data_keys = fs.ls(f"{BUCKET}/tokens/{first.version}/data")
    assert len(data_keys) == 2 and all(k.endswith(".parquet") for k in data_keys)
    table = pq.read_table(f"{BUCKET}/tokens/{first.version}/data", filesystem=fs)
    assert table.num_rows == 30 and table.column("input_ids")[0].as_py()[0] == 10 + 4  # <boi> is the 5th special
    manifest = json.loads(fs.cat(f"{BUCKET}/tokens/{first.version}/manifest.json"))
    assert manifest["totals"]["rows_written"] == 30 and all(k.startswith("s3://") for k in manifest["inputs"])
    index = json.loads(fs.cat(f"{BUCKET}/tokens/manifest.json"))
    assert list(index["versions"]) == [first.version]
