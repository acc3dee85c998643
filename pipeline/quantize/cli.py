"""`vbpe convert-checkpoint` (`vbpe quantize` itself is the shared stage command, pipeline/stage.py)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    c = subparsers.add_parser("convert-checkpoint", help="Lightning/torch checkpoint -> safetensors (encoder, codebook, decoder)")
    c.add_argument("checkpoint")
    c.add_argument("output")
    c.set_defaults(handler=handle_convert)


def handle_convert(args: argparse.Namespace) -> int:
    from pipeline.quantize.checkpoints import convert_to_safetensors

    n = convert_to_safetensors(args.checkpoint, args.output)
    print(f"wrote {n} tensors (encoder, codebook, decoder) to {args.output}")
    return 0
