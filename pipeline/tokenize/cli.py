"""`vbpe tokenize INPUTS... --vocab VOCAB.json --out DIR [--layout layout.yaml] [--quantizer Q.yaml]` (or `--config`).

INPUTS are code-grid Parquet, or WebDataset tar shards (quantized on the fly with --quantizer).
"""
from __future__ import annotations

import argparse
import json
import sys

EXIT_FAILED_INPUTS = 3


FLAGS = {"inputs": "inputs", "vocab": "vocab", "out": "out", "layout": "layout", "input_kind": "input_kind",
         "executor": "executor", "workers": "workers", "ray_address": "ray_address"}
QUANTIZE_FLAGS = ("batch_size", "num_actors", "num_gpus")  # -> the config's `quantize` section


def _quantizer_section(path: str):
    """A YAML with the quantizer section (as for `vbpe quantize --quantizer`), or a whole quantize config."""
    import yaml

    from pipeline.storage import read_text
    from schemas.base import ConfigError

    try:
        q = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid quantizer config {path}: not valid YAML: {err}") from None
    return q.get("quantizer", q) if isinstance(q, dict) else q


def config_from_args(args: argparse.Namespace):
    """Flags override the config file; the result is validated before any work."""
    from pipeline.configargs import build_config
    from schemas.tokenize import TokenizeConfig

    quantize = {f: getattr(args, f) for f in QUANTIZE_FLAGS if getattr(args, f, None) is not None}
    if getattr(args, "quantizer", None):
        quantize["quantizer"] = _quantizer_section(args.quantizer)
    return build_config(TokenizeConfig, args, FLAGS, {"quantize": quantize})


def _run(args: argparse.Namespace) -> int:
    from pipeline.tokenize.api import run

    summary = run(config_from_args(args))
    for line in summary.lines():
        print(line, file=sys.stderr)
    if args.json:
        json.dump(summary.to_json(), sys.stdout, indent=1)
        print()
    return 0 if summary.ok else EXIT_FAILED_INPUTS


def register(subparsers) -> None:
    from pipeline.configargs import add_config_flag

    p = subparsers.add_parser(
        "tokenize", help="apply a vocabulary to code grids or image shards: versioned token corpus for trainers (Parquet)",
        description="Encode code-grid Parquet (or WebDataset image shards, quantized in the same Ray Data pass) with a "
        "learned vocabulary. Output: OUT/<version>/data/*.parquet, one version per (vocabulary, layout); re-runs "
        "process only inputs not yet done. Exit 3 if some inputs failed.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUTS",
                   help="code-grid Parquet or .tar shards: files, directories, globs, {a,b} lists or s3:// URLs")
    p.add_argument("--vocab", help="vocabulary JSON (vbpe learn)")
    p.add_argument("--out", help="corpus root directory (local or s3://)")
    p.add_argument("--layout", help="id layout YAML (schemas/layout.py): adds input_ids for the LLM")
    p.add_argument("--input-kind", choices=["auto", "grids", "shards"], default=None)
    p.add_argument("--quantizer", help="image shards: YAML with the quantizer section (as for vbpe quantize); "
                   "its fingerprint must be the vocabulary's")
    p.add_argument("--batch-size", type=int, default=None, help="image shards: images per encoder call")
    p.add_argument("--num-actors", type=int, default=None, help="image shards: encoder actors")
    p.add_argument("--num-gpus", type=float, default=None, help="image shards: GPUs per encoder actor")
    p.add_argument("--executor", choices=["auto", "local", "ray"], default=None)
    p.add_argument("--workers", type=int, default=None,
                   help="run on Ray with this many files (image shards: batches of grids) in flight")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS, else local)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    add_config_flag(p)
    p.set_defaults(handler=_run)
