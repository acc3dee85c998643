"""Submission ids. Scheduled runs get a deterministic one, so a retried schedule finds its earlier job.

    vbpe-<stage>-<config hash>-<YYYYMMDD>        first attempt of a scheduled run
    vbpe-<stage>-<config hash>-<YYYYMMDD>-a<k>   k-th attempt (only after the earlier ones failed,
                                                 and only when retrying failures was asked for)

The config hash is over the parsed YAML (canonical JSON), so comments and key order do not
matter, plus the stage's step (train). Ids use [a-z0-9-] only: valid as Kubernetes names too.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
from typing import Any

import yaml

from schemas.base import ConfigError


def config_digest(config_text: str, extra: list[str] | None = None) -> str:
    try:
        data: Any = yaml.safe_load(config_text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config is not valid YAML: {err}") from None
    blob = json.dumps({"config": data, "extra": extra or []}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"schedule date {text!r} is not YYYY-MM-DD") from None


def scheduled_id(stage: str, digest: str, date: dt.date, attempt: int = 1) -> str:
    base = f"vbpe-{stage}-{digest}-{date:%Y%m%d}"
    return base if attempt == 1 else f"{base}-a{attempt}"


def adhoc_id(stage: str, digest: str) -> str:
    """Unscheduled runs: readable in `ray job list`, unique per submission."""
    now = dt.datetime.now(dt.timezone.utc)
    return f"vbpe-{stage}-{digest}-{now:%Y%m%dt%H%M%S}-{secrets.token_hex(2)}"


def is_valid(submission_id: str) -> bool:
    return re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", submission_id) is not None
