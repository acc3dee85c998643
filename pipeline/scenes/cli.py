"""`vbpe scenes --out DIR [--images N]`: generate the scenes corpus (shards + conversation records)."""
from __future__ import annotations

import argparse



def register(sub: argparse._SubParsersAction) -> None:
    from pipeline.configargs import add_config_arguments
    from schemas.scenes import ScenesConfig

    p = sub.add_parser("scenes", help="generate a corpus of shape scenes with grounded conversations (no downloads)",
                       description="Generate images of coloured shapes on textured backgrounds as WebDataset shards, "
                                   "plus foundation/perception/reasoning/instruction conversations about them.")
    add_config_arguments(p, ScenesConfig, aliases={"--endpoint-url": "storage.endpoint_url"})
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pipeline.configargs import config_from_args
    from pipeline.scenes.corpus import generate

    cfg = config_from_args(args)
    m = generate(cfg)
    state = "up to date" if m.get("reused") else "wrote"
    counts = ", ".join(f"{k} {v}" for k, v in m["records_per_type"].items())
    print(f"{state} {cfg.out}: {m['images']} images in {len(m['shards'])} shards; conversations: {counts}")
    return 0
