"""Write a scenes corpus: WebDataset shards of the images, LLaVA-style records, and the scenes themselves.

  <out>/shards/scenes-000.tar ...  samples `<key>.png` + `<key>.txt` (the caption): what quantize and
                                   tokenize read
  <out>/conversations.jsonl        {"id", "image": key, "category", "conversations"}: what `vbpe train
                                   prepare` reads (`image_key: exact`)
  <out>/scenes.jsonl               {"key", "scene"}: the ground truth behind every answer
  <out>/manifest.json              written last: config, counts, vocabulary words; a finished corpus
                                   with the same config is reused, not rewritten

Image i and its conversations come from `np.random.default_rng([seed, i])` alone, so a corpus is
byte-identical across runs and machines, and a larger corpus extends a smaller one.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import logging

import numpy as np

from pipeline import storage
from pipeline.ingest.writer import write_shard
from pipeline.metrics import StageMetrics, progress
from pipeline.scenes.dialogues import TYPES, WORDS, caption, llava_turns
from pipeline.scenes.render import render
from pipeline.scenes.scene import Scene, sample_scene
from schemas.base import ConfigError
from schemas.scenes import ScenesConfig

log = logging.getLogger(__name__)
FORMAT = "vbpe.scenes.v1"


def key_of(cfg: ScenesConfig, i: int) -> str:
    return f"{cfg.key_prefix}{i:06d}"


def make_scene(cfg: ScenesConfig, i: int) -> tuple[Scene, list[dict]]:
    """Image i's scene and its conversation records."""
    rng = np.random.default_rng([cfg.seed, i])
    scene = sample_scene(rng, cfg.image_size, cfg.min_objects, cfg.max_objects)
    key = key_of(cfg, i)
    records = []
    for category, fn in TYPES.items():
        for j in range(getattr(cfg.conversations, category)):
            records.append({"id": f"{key}-{category}-{j}", "image": key, "category": category,
                            "conversations": llava_turns(fn(scene, rng))})
    return scene, records


def encode_image(scene: Scene, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        render(scene).save(buf, format="PNG", optimize=False)
    else:
        render(scene).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def config_fingerprint(cfg: ScenesConfig) -> str:
    blob = json.dumps([FORMAT, cfg.model_dump(mode="json", exclude={"out", "storage"})], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_names(cfg: ScenesConfig) -> list[str]:
    return [f"shards/scenes-{s:03d}.tar" for s in range(cfg.shards)]


def _with_paths(manifest: dict, out: str) -> dict:
    """The manifest names files relative to the corpus directory; callers get full paths."""
    return {**manifest, "out": out, "shards": [storage.join(out, n) for n in manifest["shards"]],
            "conversations": storage.join(out, manifest["conversations"]),
            "scenes": storage.join(out, manifest["scenes"])}


def _bounds(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def generate(cfg: ScenesConfig) -> dict:
    """Write the corpus (or reuse a finished one with the same config); returns the manifest."""
    manifest_path = storage.join(cfg.out, "manifest.json")
    fingerprint = config_fingerprint(cfg)
    opts = cfg.storage
    if storage.exists(manifest_path, opts):
        old = json.loads(storage.read_text(manifest_path, opts))
        if old.get("fingerprint") == fingerprint:
            log.info("scenes corpus in %s is up to date (%d images)", cfg.out, old["images"])
            return {**_with_paths(old, cfg.out), "reused": True}
        raise ConfigError(f"{cfg.out} holds a scenes corpus made with another config ({old.get('fingerprint')} != "
                          f"{fingerprint}); use a new --out")

    per_type: collections.Counter[str] = collections.Counter()
    turns: collections.Counter[str] = collections.Counter()
    shapes = 0
    paths = [storage.join(cfg.out, n) for n in shard_names(cfg)]
    with StageMetrics("scenes", storage.join(cfg.out, "metrics.json")) as metrics, \
            storage.open_file(storage.join(cfg.out, "conversations.jsonl"), "wb", opts) as conv_f, \
            storage.open_file(storage.join(cfg.out, "scenes.jsonl"), "wb", opts) as scene_f:
        for path, (lo, hi) in progress(list(zip(paths, _bounds(cfg.images, cfg.shards))), "scene shards", stage="scenes",
                                       unit="shard"):
            samples = []
            for i in range(lo, hi):
                scene, records = make_scene(cfg, i)
                key = key_of(cfg, i)
                samples.append((key, {cfg.image_format: encode_image(scene, cfg.image_format),
                                      "txt": caption(scene).encode()}))
                scene_f.write((json.dumps({"key": key, "scene": scene.to_json()}) + "\n").encode())
                for rec in records:
                    conv_f.write((json.dumps(rec) + "\n").encode())
                    per_type[rec["category"]] += 1
                    turns[rec["category"]] += len(rec["conversations"]) // 2
                shapes += len(scene.shapes)
            write_shard(path, samples, opts)
        metrics.add(rows_out=cfg.images)
        metrics.set(conversations=sum(per_type.values()))
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "config": cfg.model_dump(mode="json", exclude={"out", "storage"}),
        "images": cfg.images,
        "shapes": shapes,
        "shards": shard_names(cfg),
        "conversations": "conversations.jsonl",
        "scenes": "scenes.jsonl",
        "records_per_type": {c: per_type[c] for c in TYPES},
        "answers_per_type": {c: turns[c] for c in TYPES},
        "words": WORDS,
    }
    storage.write_text(manifest_path, json.dumps(manifest, indent=1) + "\n", opts)
    log.info("wrote %d scenes in %d shards and %d conversations to %s", cfg.images, cfg.shards,
             sum(per_type.values()), cfg.out)
    return _with_paths(manifest, cfg.out)


def read_scenes(path: str, options=None) -> dict[str, Scene]:
    """scenes.jsonl -> {key: Scene}."""
    out = {}
    for line in storage.read_text(path, options).splitlines():
        if line.strip():
            d = json.loads(line)
            out[d["key"]] = Scene.from_json(d["scene"])
    return out
