"""Configs in: one loader for the CLI, the jobs and `vbpe submit`; CLI flags derived from the config's fields.

`load_config(cls, spec)` reads a YAML config from a path, an s3:// URL or `env:NAME` (YAML text in
an environment variable) and validates it. `add_config_arguments(parser, cls)` gives a command one
flag per field (`--field-name`; `--section-field` for the scalar fields of a nested section such
as `storage`; `--section FILE.yaml` for a whole nested section; `--name`, `--no-name` and
`--name-WORD` for a `bool | Literal["WORD"]` field), typed and documented from the pydantic field; `config_from_args(args)` then merges: the `--config` file, then the flags given.
"""
from __future__ import annotations

import argparse
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline import storage
from schemas.base import Config, ConfigError, StorageOptions, parse_yaml_mapping

T = TypeVar("T", bound=Config)
_DEST = "cfg:"


def read_config_text(spec: str, options: StorageOptions | None = None) -> str:
    """The YAML text named by `spec`: a path, an s3:// URL, or env:NAME."""
    if spec.startswith("env:"):
        name = spec[4:]
        text = os.environ.get(name)
        if text is None:
            raise ConfigError(f"--config {spec}: environment variable {name} is not set")
        return text
    return storage.read_text(spec, options)


def load_config(cls: type[T], spec: str, options: StorageOptions | None = None) -> T:
    return cls.from_yaml_text(read_config_text(str(spec), options), str(spec))


@dataclass(frozen=True)
class _Flag:
    dest: str
    path: tuple[str, ...]  # field names from the top-level config down
    section_file: bool = False  # the value is a YAML file holding the whole section


def _strip(annotation: Any) -> tuple[Any, bool]:
    """(type without Optional/Annotated, was optional)."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(annotation))
            if len(args) == 1:
                annotation = args[0]
                continue
            return tuple(args), optional
        return annotation, optional


def _is_config(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, Config)


def _kind(annotation: Any) -> tuple[str, dict[str, Any]]:
    """How a field becomes a flag: ("value", argparse kwargs), ("switch", {"words": ...}), ("section", {}),
    ("file", {}) or ("skip", {})."""
    t, _ = _strip(annotation)
    if isinstance(t, tuple):  # a union
        words = [w for a in t if typing.get_origin(a) is typing.Literal for w in typing.get_args(a)]
        if bool in t and words and len(words) == sum(len(typing.get_args(a)) for a in t if a is not bool):
            return "switch", {"words": words}  # e.g. `bool | Literal["auto"]`: --resume, --no-resume, --resume-auto
        if str in t:
            return "value", {"type": str}  # e.g. `IdLayout | str`: a path on the command line
        if all(_is_config(a) for a in t):
            return "file", {}
        return "skip", {}
    if _is_config(t):
        return "section", {}
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        choices = list(typing.get_args(t))
        return "value", {"choices": choices, "type": type(choices[0])}
    if t is bool:
        return "value", {"action": argparse.BooleanOptionalAction}
    if t in (int, float, str):
        return "value", {"type": t}
    if origin in (list, tuple):
        args = [a for a in typing.get_args(t) if a is not Ellipsis]
        inner, _ = _strip(args[0]) if args else (str, False)
        if inner in (int, float, str):
            nargs: Any = len(args) if origin is tuple and Ellipsis not in typing.get_args(t) else "+"
            return "value", {"type": inner, "nargs": nargs}
    return "skip", {}


def _flag_name(*parts: str) -> str:
    return "--" + "-".join(p.replace("_", "-") for p in parts)


def _field_at(cls: type[Config], path: tuple[str, ...]) -> Any:
    annotation: Any = cls
    for name in path:
        t, _ = _strip(annotation)
        if not _is_config(t) or name not in t.model_fields:
            raise KeyError(".".join(path))
        annotation = t.model_fields[name].annotation
    return annotation


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[Config], positional: str | None = None,
                         metavar: str | None = None, aliases: dict[str, str] | None = None,
                         exclude: tuple[str, ...] = ()) -> None:
    """`--config FILE.yaml` plus one flag per field of `cls` (see the module docstring).

    `positional`: the list field taken from positional arguments (e.g. inputs). `aliases`: extra flag
    names for (possibly nested) fields, e.g. {"--endpoint-url": "storage.endpoint_url"}.
    """
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML config (path, s3:// URL or env:VARIABLE); flags given here override it")
    flags: list[_Flag] = []
    taken = {"--config", "--help", "-h"} | {a for action in parser._actions for a in action.option_strings}

    def add(names: list[str], path: tuple[str, ...], annotation: Any, help_text: str | None) -> None:
        kind, kwargs = _kind(annotation)
        names = [n for n in names if n not in taken]
        if kind == "skip" or not names:
            return
        dest = _DEST + ".".join(path)
        if kind == "section":  # its scalar fields get their own flags
            return
        if kind == "switch":
            for name, value in ((names[0], True), ("--no-" + names[0][2:], False),
                                *((f"{names[0]}-{w}", w) for w in kwargs["words"])):
                if name not in taken:
                    parser.add_argument(name, dest=dest, action="store_const", const=value, default=None,
                                        help=help_text if value is True else f"{path[-1]}: {str(value).lower()}")
                    taken.add(name)
            flags.append(_Flag(dest, path))
            return
        if kind == "file":
            parser.add_argument(*names, dest=dest + "#file", metavar="FILE.yaml", default=None,
                                help=(help_text or f"the `{path[-1]}` section") + " (a YAML file)")
            flags.append(_Flag(dest + "#file", path, section_file=True))
        else:
            if kwargs.get("action") is None and "choices" not in kwargs:
                kwargs = {"metavar": path[-1].upper(), **kwargs}
            parser.add_argument(*names, dest=dest, default=None, help=help_text, **kwargs)
            flags.append(_Flag(dest, path))
        taken.update(names)

    from schemas.base import JobConfig

    common = set(JobConfig.model_fields)  # the execution and storage fields, listed after the stage's own
    ordered = sorted(cls.model_fields.items(), key=lambda kv: kv[0] in common)
    for name, info in ordered:
        if name in exclude:
            continue
        if name == positional:
            _, kwargs = _kind(info.annotation)
            parser.add_argument(name, nargs="*", metavar=metavar or name.upper(), help=info.description,
                                type=kwargs.get("type", str))
            flags.append(_Flag(name, (name,)))
            continue
        add([_flag_name(name)], (name,), info.annotation, info.description)
        kind, _ = _kind(info.annotation)
        if kind == "section":
            section, _ = _strip(info.annotation)
            for sub, sinfo in section.model_fields.items():
                if _kind(sinfo.annotation)[0] == "value":
                    add([_flag_name(name, sub)], (name, sub), sinfo.annotation, sinfo.description)
    for flag, target in (aliases or {}).items():
        path = tuple(target.split("."))
        annotation = _field_at(cls, path)
        existing = next((f for f in flags if f.path == path), None)
        if existing is not None and flag not in taken:  # a second name for a flag that exists
            kind, kwargs = _kind(annotation)
            extra = {} if existing.section_file else kwargs
            if not existing.section_file and extra.get("action") is None and "choices" not in extra:
                extra = {"metavar": path[-1].upper(), **extra}
            parser.add_argument(flag, dest=existing.dest, default=None, help=f"same as --{'-'.join(path).replace('_', '-')}",
                                **extra)
            taken.add(flag)
        else:
            add([flag], path, annotation, f"the config's {target}")
    parser.set_defaults(_config_class=cls, _config_flags=tuple(flags))


def _section_from_file(path: str, name: str) -> Any:
    """The file is the section itself, or a mapping holding it under its name (e.g. a whole stage config)."""
    data = parse_yaml_mapping(storage.read_text(path), path)
    return data[name] if isinstance(data.get(name), dict) else data


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        inner = data.get(name)
        data[name] = inner = dict(inner) if isinstance(inner, dict) else {}
        data = inner
    data[path[-1]] = value


def config_from_args(args: argparse.Namespace, cls: type[T] | None = None) -> T:
    """The `--config` file (if any) with every flag the user gave on top, validated."""
    cls = cls or args._config_class
    data: dict[str, Any] = {}
    source = "command line"
    if getattr(args, "config", None):
        source = args.config
        data = parse_yaml_mapping(read_config_text(args.config), args.config)
    flags = sorted(args._config_flags, key=lambda f: (not f.section_file, len(f.path)))  # sections, then fields
    for flag in flags:
        value = getattr(args, flag.dest, None)
        if value is None or value == []:
            continue
        if flag.section_file:
            value = _section_from_file(value, flag.path[-1])
        _set(data, flag.path, value)
    return cls.from_dict(data, source=source)
