"""CLI flags and YAML configs are one thing: flags given on the command line override the file."""
from __future__ import annotations

import argparse
from typing import Any, TypeVar

from pipeline import storage
from schemas.base import Config, parse_yaml_mapping

T = TypeVar("T", bound=Config)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML config; flags given here override it")


def build_config(cls: type[T], args: argparse.Namespace, fields: dict[str, str]) -> T:
    """`fields` maps argparse dest -> config field; only flags the user gave (not None) override."""
    data: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        source = args.config
        data.update(parse_yaml_mapping(storage.read_text(args.config), args.config))
    for dest, field in fields.items():
        value = getattr(args, dest, None)
        if value is not None and value != []:
            data[field] = value
    return cls.from_dict(data, source=source)
