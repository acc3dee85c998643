"""What every `python -m jobs.<stage>` does: parse, validate the config, call the stage, report.

`--config` is a path (local or s3://) or `env:NAME` (YAML text in an environment variable, how
`vbpe submit` ships a config that lives outside the uploaded working directory). The config is
validated before the stage's run function is even imported. Exit codes: 0 done, 2 bad config or
input (one line on stderr), 3 the stage finished but reported failures (e.g. some inputs failed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_FAILURES = 3


def load_config(spec: str, cls: type) -> Any:
    from schemas.base import ConfigError

    if not spec.startswith("env:"):
        return cls.from_yaml(spec)
    name = spec[4:]
    text = os.environ.get(name)
    if text is None:
        raise ConfigError(f"--config {spec}: environment variable {name} is not set")
    return cls.from_yaml_text(text, spec)


MAX_LIST = 50


def _compact(value: Any) -> Any:
    """Long lists (a vocabulary's merges, say) become their length: the full result is in the stage's files."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return f"<{len(value)} items>" if len(value) > MAX_LIST else [_compact(v) for v in value]
    return value


def _report(result: Any) -> Any:
    if hasattr(result, "to_json"):
        return _compact(result.to_json())
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return _compact(dataclasses.asdict(result))
    return _compact(result)


def run_stage(stage_name: str, argv: list[str] | None = None) -> int:
    from pipeline.submit.stages import get_stage
    from schemas.base import ConfigError, InputError

    stage = get_stage(stage_name)
    parser = argparse.ArgumentParser(prog=f"python -m {stage.entry_module}", description=f"run the {stage.name} stage")
    parser.add_argument("--config", required=True, help="config YAML: a path, s3:// URL or env:VARIABLE")
    if stage.takes_step:
        parser.add_argument("--stage", default=stage.default_step, help=f"which step (default {stage.default_step})")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, stage.config_class())
        run = stage.run_function()
        result = run(cfg, args.stage) if stage.takes_step else run(cfg)
    except (ConfigError, InputError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"{stage.entry_module}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if hasattr(result, "lines"):
        for line in result.lines():
            print(line, file=sys.stderr)
    json.dump(_report(result), sys.stdout, indent=1, default=str)
    print()
    return 0 if getattr(result, "ok", True) else EXIT_FAILURES
