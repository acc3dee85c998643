"""The scenes corpus: deterministic, answers grounded in the pixels, readable by the pipeline, a CLI that refuses bad input."""
from __future__ import annotations

import collections
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.scenes.corpus import generate, make_scene, read_scenes
from pipeline.scenes.dialogues import WORDS
from pipeline.scenes.render import render
from pipeline.scenes.scene import COLOURS, NUMBERS, PLURALS
from schemas.scenes import ScenesConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(out, **kw) -> ScenesConfig:
    return ScenesConfig(out=str(out), **{"images": 40, "shards": 2, **kw})


def _files(d) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            if n != "metrics.json":  # run timings differ
                p = os.path.join(root, n)
                out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def test_same_config_gives_byte_identical_corpus(tmp_path):
    generate(_cfg(tmp_path / "a"))
    generate(_cfg(tmp_path / "b"))
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) >= {"shards/scenes-000.tar", "shards/scenes-001.tar", "conversations.jsonl", "scenes.jsonl", "manifest.json"}
    assert a == b
    generate(_cfg(tmp_path / "c", seed=1))
    assert _files(tmp_path / "c")["conversations.jsonl"] != a["conversations.jsonl"]


def test_image_i_does_not_depend_on_corpus_size(tmp_path):
    small, big = _cfg(tmp_path / "s", images=10, shards=1), _cfg(tmp_path / "b", images=30, shards=3)
    for i in range(10):
        assert make_scene(small, i) == make_scene(big, i)


def _colour_components(pixels: np.ndarray, colour: str) -> int:
    mask = np.all(pixels == np.array(COLOURS[colour], np.uint8), axis=2)
    return int(ndimage.label(mask)[1])


def test_answers_are_read_off_the_pixels(tmp_path):
    """Counting answers checked against connected components of each colour in the rendered image."""
    cfg = _cfg(tmp_path, images=300, shards=1)
    checked = collections.Counter()
    for i in range(cfg.images):
        scene, records = make_scene(cfg, i)
        pixels = np.asarray(render(scene))
        assert pixels.shape == (cfg.image_size, cfg.image_size, 3)
        for s in scene.shapes:  # every shape is drawn where the scene says, in its colour
            assert tuple(pixels[s.cy, s.cx]) == COLOURS[s.colour]
        for rec in records:
            turns = rec["conversations"]
            for q, a in zip(turns[::2], turns[1::2]):
                m = re.fullmatch(r"(?:<image>\n)?how many (" + "|".join(COLOURS) + r") objects are there \?", q["value"])
                if m:
                    assert a["value"] == f"{NUMBERS[_colour_components(pixels, m.group(1))]} ."
                    checked["colour count"] += 1
                if q["value"].endswith("how many objects are there ?"):
                    total = sum(_colour_components(pixels, c) for c in COLOURS)
                    assert a["value"] == f"{NUMBERS[total]} ."
                    checked["count"] += 1
                m = re.search(r"what color is the object at the ([a-z ]+) \?", q["value"])
                if m:
                    shape = next(s for s in scene.shapes if s.position == m.group(1))
                    assert tuple(pixels[shape.cy, shape.cx]) == COLOURS[a["value"].removesuffix(" .")]
                    checked["colour"] += 1
    assert min(checked.values()) >= 10, checked


def test_vocabulary_covers_all_text_and_answers_vary(tmp_path):
    cfg = _cfg(tmp_path, images=500, shards=1)
    answers = collections.defaultdict(collections.Counter)
    types = collections.Counter()
    captions = set()
    words = set(WORDS)
    for i in range(cfg.images):
        _, records = make_scene(cfg, i)
        for rec in records:
            types[rec["category"]] += 1
            turns = rec["conversations"]
            if rec["category"] == "foundation":
                captions.add(turns[1]["value"])
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert turns[0]["value"].startswith("<image>\n")
            for t in turns:
                text = t["value"].replace("<image>\n", "")
                assert set(text.split()) <= words, set(text.split()) - words
            for q, a in zip(turns[::2], turns[1::2]):
                template = re.sub(r"\b(" + "|".join(list(COLOURS) + list(PLURALS) + list(PLURALS.values())) + r")\b", "X", q["value"])
                answers[template][a["value"]] += 1
    assert types == {"foundation": 500, "perception": 1000, "reasoning": 1000, "instruction": 500}
    yes_no = [c for c in answers.values() if set(c) == {"yes .", "no ."} and sum(c.values()) >= 50]
    assert yes_no, "some yes/no question should be frequent"
    for c in yes_no:  # neither answer dominates: the image decides
        assert 0.15 < c["yes ."] / sum(c.values()) < 0.85, c
    assert len(captions) > 450  # captions differ from image to image


def test_shards_are_webdataset_samples_and_records_point_at_them(tmp_path):
    cfg = _cfg(tmp_path)
    m = generate(cfg)
    keys = []
    for shard in m["shards"]:
        with tarfile.open(shard) as tf:
            names = tf.getnames()
            for n in names[::2]:
                key = n.rsplit(".", 1)[0]
                assert names[names.index(n) + 1] == f"{key}.txt"  # members of a sample are contiguous
                im = Image.open(io.BytesIO(tf.extractfile(n).read()))
                assert im.size == (cfg.image_size, cfg.image_size) and im.mode == "RGB"
                keys.append(key)
    assert keys == [f"scene-{i:06d}" for i in range(cfg.images)]
    records = [json.loads(line) for line in open(m["conversations"])]
    assert {r["image"] for r in records} == set(keys)
    assert len({r["id"] for r in records}) == len(records) == sum(m["records_per_type"].values())
    scenes = read_scenes(m["scenes"])
    assert list(scenes) == keys and scenes[keys[3]] == make_scene(cfg, 3)[0]


def _vbpe(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_generates_reuses_and_refuses(tmp_path):
    out = str(tmp_path / "c")
    r = _vbpe("scenes", "--out", out, "--images", "12", "--shards", "2")
    assert r.returncode == 0, r.stderr
    assert "12 images in 2 shards" in r.stdout
    r = _vbpe("scenes", "--out", out, "--images", "12", "--shards", "2")
    assert r.returncode == 0 and "up to date" in r.stdout
    r = _vbpe("scenes", "--out", out, "--images", "13", "--shards", "2")
    assert r.returncode == 2 and "another config" in r.stderr and "Traceback" not in r.stderr
    r = _vbpe("scenes", "--out", str(tmp_path / "d"), "--image-size", "50")
    assert r.returncode == 2 and "divisible by 3" in r.stderr and len(r.stderr.strip().splitlines()) <= 3
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"out: {tmp_path / 'e'}\nimages: 6\nshards: 1\nconversations: {{foundation: 1, perception: 0, reasoning: 0, instruction: 0}}\n")
    r = _vbpe("scenes", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "foundation 6, perception 0" in r.stdout
    cfg.write_text("out: x\ncolours: 3\n")
    r = _vbpe("scenes", "--config", str(cfg))
    assert r.returncode == 2 and "colours" in r.stderr
