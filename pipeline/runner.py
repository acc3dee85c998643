"""Runs a stage the same way for `vbpe <stage>`, `python -m jobs.<stage>` and `vbpe submit`.

Around `run(config) -> summary` (pipeline/stage.py) the runner applies, once for every stage:
- the metrics file (`pipeline.metrics.StageMetrics`, next to the stage's output), fed from the summary;
- the exit status: 0 ok; 2 refused (bad config or input, nothing done); 3 the run ended with some
  inputs failed, the store became unreachable or the run was interrupted (recorded; a re-run
  retries or continues them); 1 a bug;
- errors users can act on as one line on stderr, never a traceback (`-v` shows it).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, TextIO

from pipeline import metrics as run_metrics
from pipeline import storage
from pipeline.stage import Stage, Summary, get_stage
from schemas.base import ConfigError, InputError, RunInterrupted

EXIT_OK, EXIT_BUG, EXIT_REFUSED, EXIT_FAILURES = 0, 1, 2, 3
REFUSALS = (ConfigError, InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
MAX_LIST = 50

log = logging.getLogger("vbpe.runner")


def _counts(summary: Summary) -> dict[str, Any]:
    figures = summary.metrics() if hasattr(summary, "metrics") else {}
    return run_metrics.jsonable(figures)


def execute(stage: Stage, cfg: Any, step: str | None = None, **options: Any) -> Summary:
    """Run the stage with its metrics file; a refusal before any work writes none. Errors propagate.

    `options` go to the stage's run as keywords (a command's own flags, e.g. `vbpe train init --force`).
    """
    run = stage.run_function()
    output = stage.output(cfg)
    path = run_metrics.metrics_path(output) if output else None
    with run_metrics.StageMetrics(stage.name, path, refusals=REFUSALS, storage_options=getattr(cfg, "storage", None)) as m:
        summary = run(cfg, step, **options) if stage.steps else run(cfg, **options)
        figures = _counts(summary)
        m.add(rows_in=figures.pop("rows_in", 0), rows_out=figures.pop("rows_out", 0),
              rows_rejected=figures.pop("rows_rejected", 0))
        m.set(merges=figures.pop("merges", None), ok=bool(getattr(summary, "ok", True)), **figures)
    return summary


def compact(value: Any) -> Any:
    """Long lists (a vocabulary's merges, say) become their length: the full result is in the stage's files."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return f"<{len(value)} items>" if len(value) > MAX_LIST else [compact(v) for v in value]
    return value


def summary_json(summary: Summary) -> dict[str, Any]:
    data = summary.to_json() if hasattr(summary, "to_json") else summary
    return compact(run_metrics.jsonable(data))


def error_line(err: BaseException) -> tuple[int, str] | None:
    """(exit status, message) for errors a user can act on; None for bugs (they keep their traceback)."""
    if isinstance(err, REFUSALS):
        return EXIT_REFUSED, str(err) or type(err).__name__
    if isinstance(err, RunInterrupted):
        return EXIT_FAILURES, str(err)
    cause = storage.unavailable_cause(err)
    if cause is not None:
        return EXIT_FAILURES, f"storage unreachable: {type(cause).__name__}: {cause}; a re-run resumes where this one stopped"
    return None


def report_error(err: Exception, prog: str, verbose: bool = False) -> int:
    """Print a user's error as one line and give its exit status; re-raise bugs (and everything under -v)."""
    known = error_line(err)
    if known is None or verbose:
        raise err
    print(f"{prog}: error: {known[1]}", file=sys.stderr)
    return known[0]


def run_and_report(stage: Stage, cfg: Any, prog: str, step: str | None = None, verbose: bool = False,
                   json_out: TextIO | None = None, lines_out: TextIO | None = None, **options: Any) -> int:
    """Execute, print the summary (lines, and JSON on `json_out`), and return the exit status."""
    lines_out = lines_out or sys.stderr
    try:
        summary = execute(stage, cfg, step, **options)
    except Exception as err:
        return report_error(err, prog, verbose)
    for line in summary.lines() if hasattr(summary, "lines") else []:
        print(line, file=lines_out)
    if json_out is not None:
        json.dump(summary_json(summary), json_out, indent=1, allow_nan=False)
        print(file=json_out)
    return EXIT_OK if getattr(summary, "ok", True) else EXIT_FAILURES


def job_main(stage_name: str, argv: list[str] | None = None) -> int:
    """`python -m jobs.<stage> --config SPEC [--stage STEP]`: validate, run, JSON summary on stdout."""
    from pipeline.configargs import load_config

    stage = get_stage(stage_name)
    parser = argparse.ArgumentParser(prog=f"python -m {stage.entry_module}", description=f"run the {stage.name} stage")
    parser.add_argument("--config", required=True, help="config YAML: a path, s3:// URL or env:VARIABLE")
    if stage.steps:
        parser.add_argument("--stage", choices=stage.steps, default=stage.default_step, help="which step")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = stage.entry_module
    try:
        cfg = load_config(stage.config_class(), args.config)
    except Exception as err:
        return report_error(err, prog, args.verbose)
    return run_and_report(stage, cfg, prog, getattr(args, "stage", None), args.verbose, json_out=sys.stdout)


def register_stage_command(subparsers: Any, stage: Stage) -> None:
    """`vbpe <stage> [INPUTS...] [--config FILE] [--field value ...] [--json]`, flags derived from the config."""
    from pipeline.configargs import add_config_arguments

    cls = stage.config_class()
    p = subparsers.add_parser(stage.name, help=stage.help, description=stage.description or stage.help)
    p.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    add_config_arguments(p, cls, positional=stage.positional, metavar=stage.metavar, aliases=stage.aliases)
    p.set_defaults(handler=lambda args: _cli_handler(stage, args))


def _cli_handler(stage: Stage, args: argparse.Namespace) -> int:
    from pipeline.configargs import config_from_args

    cfg = config_from_args(args)
    return run_and_report(stage, cfg, f"vbpe {stage.name}", verbose=getattr(args, "verbose", False),
                          json_out=sys.stdout if args.json else None, lines_out=sys.stderr if args.json else sys.stdout)
