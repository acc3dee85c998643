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
    assert "rows in 42 = written 40 + rejected 2" in text and "[6/6]" in text
    figures = json.load(open(os.path.join(out, "summary.json")))
    down = figures["downstream"]
    assert down["grids_learned"] + down["grids_held_out"] == 40 and down["grids_held_out"] > 0
    assert down["merges"] > 0 and down["tokens_per_image_after"] < down["tokens_per_image_before"] == 64
    assert down["tokens"]["rows_written"] == 40 and down["tokens"]["rows_rejected"] == 0
    assert os.path.getsize(down["report"]) > 10_000 and "report.html" in text
    assert figures["quantize"]["rejects_by_reason"] == {"corrupt image": 1, "empty image member": 1}
    assert set(figures["seconds"]) == {"shards", "fit", "quantize", "learn", "tokenize", "report"}
    assert main(args) == 0  # re-run: resumes, nothing redone
    assert "0 done now, 2 already done" in capsys.readouterr().out
