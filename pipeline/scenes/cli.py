"""`vbpe scenes --out DIR [--images N]`: generate the scenes corpus (shards + conversation records)."""
from __future__ import annotations

import argparse

from pipeline.configargs import add_config_flag, build_config

FLAGS = {"out": "out", "images": "images", "seed": "seed", "image_size": "image_size", "shards": "shards",
         "min_objects": "min_objects", "max_objects": "max_objects"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scenes", help="generate a corpus of shape scenes with grounded conversations (no downloads)",
                       description="Generate images of coloured shapes on textured backgrounds as WebDataset shards, "
                                   "plus foundation/perception/reasoning/instruction conversations about them.")
    p.add_argument("--out", help="output directory (local or s3://)")
    p.add_argument("--images", type=int, help="number of images (default 2000)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--image-size", dest="image_size", type=int, help="canvas side in pixels, divisible by 3 (default 48)")
    p.add_argument("--shards", type=int, help="number of tar shards (default 4)")
    p.add_argument("--min-objects", dest="min_objects", type=int, help="default 1")
    p.add_argument("--max-objects", dest="max_objects", type=int, help="default 4")
    add_config_flag(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pipeline.scenes.corpus import generate
    from schemas.scenes import ScenesConfig

    cfg = build_config(ScenesConfig, args, FLAGS)
    m = generate(cfg)
    state = "up to date" if m.get("reused") else "wrote"
    counts = ", ".join(f"{k} {v}" for k, v in m["records_per_type"].items())
    print(f"{state} {cfg.out}: {m['images']} images in {len(m['shards'])} shards; conversations: {counts}")
    return 0
