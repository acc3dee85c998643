"""`vbpe quantize SHARDS... --quantizer CONFIG --out DIR` (and `vbpe convert-checkpoint`)."""
from __future__ import annotations

import argparse
from typing import Any

# Flag -> config field; a flag overrides the same field from --config.
_FLAGS = {
    "out": "out",
    "batch_size": "batch_size",
    "num_actors": "num_actors",
    "max_actors": "max_actors",
    "num_gpus": "num_gpus",
    "cpus_per_actor": "cpus_per_actor",
    "cpus_per_reader": "cpus_per_reader",
    "torch_threads": "torch_threads",
    "precision": "precision",
    "ray_address": "ray_address",
}


EXIT_FAILED_SHARDS = 3  # finished, but some shards could not be read (see the manifest); a re-run retries them


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quantize", help="WebDataset shards -> code-grid Parquet (Ray)",
                              description="Encode WebDataset tar shards (local, globs, {a,b}, s3://) into code grids.")
    p.add_argument("shards", nargs="*", help="shard files, directories, globs, brace lists or s3:// URLs")
    p.add_argument("--config", help="QuantizeConfig YAML (flags override it)")
    p.add_argument("--quantizer", help="YAML with the quantizer section (kind: kmeans | taming | chameleon)")
    p.add_argument("--out", help="output directory (local or s3://)")
    p.add_argument("--fit-kmeans", action="store_true", help="fit the k-means codebook on a sample first (kept if it exists)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-actors", type=int)
    p.add_argument("--max-actors", type=int, help="autoscale the actor pool up to this many")
    p.add_argument("--num-gpus", type=float, help="GPUs per actor (default: 1 if the cluster has GPUs)")
    p.add_argument("--cpus-per-actor", type=float)
    p.add_argument("--cpus-per-reader", type=float)
    p.add_argument("--torch-threads", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--max-pixels", type=int, help="reject images with more pixels (decompression bombs)")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto, ...)")
    p.add_argument("--ray-address", help="existing Ray cluster (default: RAY_ADDRESS, else a local one)")
    p.set_defaults(handler=handle)

    c = subparsers.add_parser("convert-checkpoint", help="Lightning/torch checkpoint -> safetensors (encoder, codebook, decoder)")
    c.add_argument("checkpoint")
    c.add_argument("output")
    c.set_defaults(handler=handle_convert)


def config_from_args(args: argparse.Namespace):
    import yaml

    from pipeline.storage import read_text
    from schemas.base import ConfigError
    from schemas.quantize import QuantizeConfig

    data: dict[str, Any] = {}
    if args.config:
        try:
            data = yaml.safe_load(read_text(args.config)) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"invalid config {args.config}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"invalid config {args.config}: expected a mapping")
    if args.shards:
        data["inputs"] = list(args.shards)
    if args.quantizer:
        try:
            q = yaml.safe_load(read_text(args.quantizer)) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"invalid quantizer config {args.quantizer}: {err}") from None
        data["quantizer"] = q.get("quantizer", q) if isinstance(q, dict) else q
    for flag, field in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[field] = value
    if args.fit_kmeans:
        data["fit_kmeans"] = True
    if args.max_pixels is not None:
        data.setdefault("ingest", {})["max_pixels"] = args.max_pixels
    if args.endpoint_url:
        data.setdefault("storage", {})["endpoint_url"] = args.endpoint_url
    return QuantizeConfig.from_dict(data, source=args.config or "command line")


def handle(args: argparse.Namespace) -> int:
    from pipeline.quantize.api import run as run_quantize

    cfg = config_from_args(args)
    summary = run_quantize(cfg)
    print("\n".join(summary.lines()))
    return 0 if summary.ok else EXIT_FAILED_SHARDS


def handle_convert(args: argparse.Namespace) -> int:
    from pipeline.quantize.checkpoints import convert_to_safetensors

    n = convert_to_safetensors(args.checkpoint, args.output)
    print(f"wrote {n} tensors (encoder, codebook, decoder) to {args.output}")
    return 0
