"""`vbpe demo`: bundled photos -> deterministic shards -> k-means -> grids, on a real local Ray."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from pipeline.demo.photos import build_demo_shards, load_photos


def digest(paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def test_bundled_photos_load_offline():
    photos, missing = load_photos()
    assert len(photos) >= 20, missing
    assert all(p.pixels.dtype.name == "uint8" and min(p.pixels.shape[:2]) >= 100 for p in photos)


def test_demo_shards_are_deterministic_from_the_seed(tmp_path):
    a = build_demo_shards(str(tmp_path / "a"), samples=30, shards=2, seed=1)
    b = build_demo_shards(str(tmp_path / "b"), samples=30, shards=2, seed=1)
    c = build_demo_shards(str(tmp_path / "c"), samples=30, shards=2, seed=2)
    assert digest(a.shards) == digest(b.shards) != digest(c.shards)
    assert a.samples == 32 and a.planted_bad == 2


@pytest.mark.ray
def test_demo_end_to_end(ray_local, tmp_path, capsys):
    from pipeline.cli import main

    out = str(tmp_path / "demo")
    args = ["demo", "--out", out, "--samples", "40", "--shards", "2", "--image-size", "64", "--patch-size", "8",
            "--codebook-size", "32"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "rows in 42 = written 40 + rejected 2" in text and "[7/7]" in text
    figures = json.load(open(os.path.join(out, "summary.json")))
    down = figures["downstream"]
    assert down["grids_learned"] + down["grids_held_out"] == 40 and down["grids_held_out"] > 0
    assert down["merges"] > 0 and down["tokens_per_image_after"] < down["tokens_per_image_before"] == 64
    assert down["tokens"]["rows_written"] == 40 and down["tokens"]["rows_rejected"] == 0
    assert os.path.getsize(down["report"]) > 10_000 and "report.html" in text
    assert figures["quantize"]["rejects_by_reason"] == {"corrupt image": 1, "empty image member": 1}
    assert set(figures["seconds"]) == {"shards", "fit", "quantize", "learn", "tokenize", "export", "report"}
    _tokenizer_matches_the_corpus(out, figures)
    _readme_python_runs(out, tmp_path)
    assert main(args) == 0  # re-run: resumes, nothing redone
    again = capsys.readouterr().out
    assert "0 done now, 3 already done" in again
    # ... and its summary still tells the truth about what is on disk
    assert "rows in 42 = written 40 + rejected 2" in again
    assert "corrupt image 1, empty image member 1" in again and "rejects: none" not in again
    assert "40 rows with input_ids (0 rejected)" in again and "None cells per token" not in again
    second = json.load(open(os.path.join(out, "summary.json")))
    assert second["quantize"]["rejects_by_reason"] == figures["quantize"]["rejects_by_reason"]
    assert second["downstream"]["tokens"] == figures["downstream"]["tokens"]


def _tokenizer_matches_the_corpus(out, figures):
    """demo-out/tokenizer encodes every image of the shards to exactly its `vbpe tokenize` row."""
    import glob
    import tarfile

    import numpy as np
    import pyarrow.parquet as pq

    import vbpe

    tok = vbpe.VisualTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
    rows = {}
    for f in glob.glob(os.path.join(figures["downstream"]["tokens"]["data"], "*.parquet")):
        rows.update({r["key"]: r["input_ids"] for r in pq.read_table(f, columns=["key", "input_ids"]).to_pylist()})
    images = {}
    for shard in figures["shards"]:
        with tarfile.open(shard) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                if ext in ("jpg", "png") and key in rows:
                    images[key] = tar.extractfile(m).read()
    assert len(images) == len(rows) == 40
    keys = sorted(images)
    assert tok.encode_batch([images[k] for k in keys]) == [rows[k] for k in keys]
    enc = tok.encode(images[keys[0]], return_encoding=True)
    assert np.array_equal(tok.decode_grid(enc), tok.quantize(images[keys[0]]))
    assert tok.decode(enc).size == (64, 64)


def _readme_python_runs(out, tmp_path):
    """README's "Use it from Python" block, as a newcomer runs it after `make demo`."""
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme[readme.index("## Use it from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code.replace('"demo-out/tokenizer"', repr(os.path.join(out, "tokenizer"))), "README.md", "exec"), {})
    finally:
        os.chdir(here)
    from PIL import Image

    assert Image.open(tmp_path / "roundtrip.png").size == Image.open(tmp_path / "from_ids.png").size == (64, 64)
