"""Base for every config: unknown fields are errors, YAML in, messages that name the bad field.

Pure data: nothing here reads files (`pipeline.configargs.load_config` does), so the storage layer
can import these classes without a cycle.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

T = TypeVar("T", bound="Config")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and every bad field."""


class InputError(ValueError):
    """Input that cannot be used as a whole (wrong codebook, empty corpus, ...): a clear message, no traceback."""


class RunInterrupted(RuntimeError):
    """The run stopped partway for a cause outside its input (e.g. lost workers); a re-run continues it.

    Reported as one line with exit status 3, like an unreachable store."""


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

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class StorageOptions(Config):
    """Where remote paths live and how hard to try. Empty fields fall back to the usual AWS_* variables.

    Every S3 request gets `connect_timeout` / `read_timeout` seconds and at most `max_attempts` tries
    (each retry is logged); a store that stays unreachable fails the affected inputs, never hangs a run.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    max_attempts: int = Field(4, ge=1, le=20, description="tries per S3 request (botocore standard retries)")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to establish a connection")
    read_timeout: float = Field(30.0, gt=0, description="seconds to wait for data on an open connection")

    @property
    def fs_retries(self) -> int:
        """s3fs retries timeouts and throttling on top of botocore's attempts: keep the product bounded."""
        return 2

    def fsspec_kwargs(self) -> dict[str, Any]:
        client: dict[str, Any] = {}
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client["endpoint_url"] = endpoint
        if self.region:
            client["region_name"] = self.region
        config = {"retries": {"max_attempts": self.max_attempts, "mode": "standard"},
                  "connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout}
        kw: dict[str, Any] = {"anon": self.anon, "config_kwargs": config}
        if client:
            kw["client_kwargs"] = client
        return kw


Executor = Literal["auto", "local", "ray"]
# Old spellings of the execution fields, still accepted in YAML.
_EXECUTION_ALIASES = {"cpus_per_task": "cpus", "actor_cpus": "cpus"}


class ExecutionOptions(Config):
    """Where a stage runs; the same four fields with the same meaning in every stage's config.

    executor: `local` (this process), `ray`, or `auto` = Ray when `workers` > 0 or a cluster is named
    (`ray_address`, or RAY_ADDRESS as under `ray job submit` / `vbpe submit`).
    workers: the stage's Ray workers at once (tasks in flight or actors); 0 = as many as the cluster's
    CPUs hold at `cpus` each. cpus: CPUs each worker reserves. ray_address: the cluster to join
    (default RAY_ADDRESS; with neither, a private local Ray is started).
    """

    executor: Executor = Field("auto", description="local | ray | auto (Ray when workers > 0 or a cluster is named)")
    workers: int = Field(0, ge=0, description="Ray workers at once (tasks or actors); 0: as many as the cluster's CPUs hold")
    cpus: float = Field(1.0, gt=0, description="CPUs each Ray worker reserves")
    ray_address: str | None = Field(None, description="Ray cluster to join (default: RAY_ADDRESS, else a private local one)")

    renamed: ClassVar[dict[str, str]] = _EXECUTION_ALIASES  # old name -> field; a subclass may name its own

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return cls.canonical(data)

    @classmethod
    def canonical(cls, data: Any) -> Any:
        """`data` with the old names of fields replaced by the fields' names (both given: an error)."""
        if isinstance(data, dict):
            for old, new in cls.renamed.items():
                if old in data and old not in cls.model_fields:
                    if new in data:
                        raise ValueError(f"{old} is the old name of {new}: give one of them")
                    data = {**data, new: data[old]}
                    del data[old]
        return data


class JobConfig(ExecutionOptions):
    """Base of every stage config (quantize, learn, tokenize, ...): the execution fields plus storage."""

    storage: StorageOptions = StorageOptions()
