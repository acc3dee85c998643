"""Base for every config: unknown fields are errors, YAML in, messages that name the bad field."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound="Config")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and every bad field."""


class InputError(ValueError):
    """Input that cannot be used as a whole (wrong codebook, empty corpus, ...): a clear message, no traceback."""


def describe_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def parse_yaml_mapping(text: str, source: str) -> dict[str, Any]:
    """A config file's text -> its top-level mapping, or a ConfigError naming the source."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid config {source}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level")
    return data


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, source)) from None

    @classmethod
    def from_yaml_text(cls: type[T], text: str, source: str) -> T:
        return cls.from_dict(parse_yaml_mapping(text, source), source=source)

    @classmethod
    def from_yaml(cls: type[T], path: str | Path) -> T:
        from pipeline.storage import read_text

        return cls.from_yaml_text(read_text(str(path)), str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class StorageOptions(Config):
    """Where remote paths live. Empty fields fall back to the usual AWS_* environment variables."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    max_attempts: int = 5

    def fsspec_kwargs(self) -> dict[str, Any]:
        client: dict[str, Any] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        kw: dict[str, Any] = {"anon": self.anon, "config_kwargs": {"retries": {"max_attempts": self.max_attempts, "mode": "adaptive"}}}
        if client:
            kw["client_kwargs"] = client
        return kw
