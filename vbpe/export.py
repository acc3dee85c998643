"""`vbpe export --vocab V.json --quantizer Q.yaml [--layout L.yaml] --out DIR`: write a tokenizer directory."""
from __future__ import annotations

import argparse
from typing import Any

from schemas.base import Config, ConfigError


def quantizer_config(q: Any):
    """A quantizer config from a pydantic config, a mapping (bare or under `quantizer:`) or a YAML path."""
    from pydantic import TypeAdapter, ValidationError

    from pipeline import storage
    from schemas.base import describe_validation_error, parse_yaml_mapping
    from schemas.quantize import QuantizerConfig

    if isinstance(q, Config):
        return q
    source = "quantizer"
    if isinstance(q, str):
        source, q = q, parse_yaml_mapping(storage.read_text(q), q)
    if isinstance(q, dict) and isinstance(q.get("quantizer"), dict):
        q = q["quantizer"]
    try:
        return TypeAdapter(QuantizerConfig).validate_python(q)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source)) from None


def export(cfg) -> "VisualTokenizer":  # noqa: F821
    """Build the tokenizer from its sources, check it, write it to `cfg.out`."""
    from vbpe import directory
    from vbpe.tokenizer import VisualTokenizer

    parts = directory.from_sources(cfg.vocab, cfg.quantizer, cfg.layout, cfg.storage)
    directory.save(parts, cfg.out, cfg.storage)
    return VisualTokenizer(parts)


def handle(args: argparse.Namespace) -> int:
    from pipeline.configargs import config_from_args

    cfg = config_from_args(args)
    tok = export(cfg)
    fp = tok.fingerprints
    print(f"wrote {cfg.out}: {tok!r}")
    print(f"  fingerprints: vocabulary {fp['vocab']}, quantizer {fp['quantizer']}, decoder {fp['decoder'] or 'none'}, "
          f"layout {fp['layout']}")
    print(f"  load it with: vbpe.VisualTokenizer.from_pretrained({cfg.out!r})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.configargs import add_config_arguments
    from schemas.export import ExportConfig

    p = subparsers.add_parser(
        "export", help="vocabulary + quantizer + id layout -> a tokenizer directory (vbpe.VisualTokenizer)",
        description="Write one directory holding the vocabulary, the quantizer (config, encoder and decoder weights) "
        "and the id layout, with fingerprints checked on load: vbpe.VisualTokenizer.from_pretrained(DIR).")
    # One flag per config field (--quantizer takes the YAML with the quantizer section); flags override --config.
    add_config_arguments(p, ExportConfig, aliases={"--endpoint-url": "storage.endpoint_url"})
    p.set_defaults(handler=handle)
