"""CLI flags and YAML configs are one thing: flags given on the command line override the file."""
from __future__ import annotations

import argparse
from typing import Any, TypeVar

from pipeline import storage
from schemas.base import Config, parse_yaml_mapping

T = TypeVar("T", bound=Config)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML config; flags given here override it")


def build_config(cls: type[T], args: argparse.Namespace, fields: dict[str, str],
                 sections: dict[str, dict[str, Any]] | None = None) -> T:
    """`fields` maps argparse dest -> config field; only flags the user gave (not None) override.

    `sections` are flag values for nested mappings (e.g. {"quantize": {"batch_size": 64}}): merged
    into the file's section key by key, so a flag overrides one field without dropping the others.
    """
    data: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        source = args.config
        data.update(parse_yaml_mapping(storage.read_text(args.config), args.config))
    for dest, field in fields.items():
        value = getattr(args, dest, None)
        if value is not None and value != []:
            data[field] = value
    for name, values in (sections or {}).items():
        if values:
            base = data.get(name)
            data[name] = {**(base if isinstance(base, dict) else {}), **values}
    return cls.from_dict(data, source=source)
