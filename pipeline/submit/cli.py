"""`vbpe submit STAGE --config FILE.yaml --address URL` and `vbpe infra render`."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    from schemas.base import ConfigError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _submit(args: argparse.Namespace) -> int:
    from pipeline.stage import get_stage
    from pipeline.submit.submit import SubmitRequest, submit
    from schemas.base import ConfigError

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("no cluster: pass --address http://HEAD:8265 (the dashboard) or set RAY_ADDRESS")
    date = args.schedule_date or (dt.datetime.now(dt.timezone.utc).date().isoformat() if args.scheduled else None)
    stage = get_stage(args.stage)
    if args.step and not stage.steps:
        raise ConfigError(f"--stage is only for stages with steps (train), not {stage.name}")
    req = SubmitRequest(
        stage=stage, config=args.config, address=address, working_dir=None if args.no_upload else args.working_dir,
        step=args.step, schedule_date=date, retry_failed=args.retry_failed, wait=not args.no_wait,
        env=_pairs(args.env, "--env"), excludes=args.exclude or [], python=args.python,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
    )
    result = submit(req)
    print(f"vbpe submit: {'error: ' if result.exit_code else ''}{result.message}", file=sys.stderr)
    print(result.submission_id)
    return result.exit_code


def _render(args: argparse.Namespace) -> int:
    from pipeline.submit.render import read_params, render_all, write_all

    params = read_params(args.params) if args.params else {}
    params.update(_pairs(args.set, "--set"))
    rendered = render_all(args.infra, params, args.only)
    for path in write_all(rendered, args.out):
        print(path)
    return 0


def register(subparsers) -> None:
    from pipeline.stage import STAGES

    p = subparsers.add_parser(
        "submit", help="run a stage as a Ray job (job submission API); waits and streams logs",
        description="Validate the config, upload the working directory (no data, venvs or outputs) and run "
        "`python -m jobs.STAGE --config ...` on the cluster. Exit status is the job's. Scheduled runs "
        "(--scheduled / --schedule-date) use a deterministic id, so a retried schedule never runs twice.",
    )
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("--config", required=True, help="stage config YAML (local path or s3://)")
    p.add_argument("--address", help="Ray dashboard URL, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    p.add_argument("--stage", dest="step", default=None, help="train only: init|prepare|stage1|stage2|stage3|all")
    p.add_argument("--working-dir", default=".", help="code to upload (default: .)")
    p.add_argument("--no-upload", action="store_true", help="upload nothing: the cluster image has vbpe installed")
    p.add_argument("--exclude", action="append", help="more upload exclusions (gitwildmatch), repeatable")
    p.add_argument("--env", action="append", help="KEY=VALUE for the job's environment, repeatable")
    p.add_argument("--python", default="python", help="interpreter on the cluster (default: python)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--scheduled", action="store_true", help="a scheduled run for today (UTC): deterministic id")
    when.add_argument("--schedule-date", help="a scheduled run for YYYY-MM-DD: deterministic id")
    p.add_argument("--retry-failed", action="store_true", help="scheduled: run a new attempt if the earlier one failed")
    p.add_argument("--no-wait", action="store_true", help="return after submitting (prints the submission id)")
    p.set_defaults(handler=_submit)

    infra = subparsers.add_parser("infra", help="cluster manifests (infra/)")
    steps = infra.add_subparsers(dest="infra_step", required=True, metavar="STEP")
    r = steps.add_parser("render", help="fill ${PARAM} placeholders of every template; strict about missing/unknown")
    r.add_argument("--infra", default="infra", help="template root (default: infra)")
    r.add_argument("--params", help="KEY=VALUE file (see infra/params.example.env)")
    r.add_argument("--set", action="append", help="KEY=VALUE, repeatable; overrides --params")
    r.add_argument("--only", action="append", metavar="DIR",
                   help="render only the templates under this subdirectory (k8s, aws, ...), repeatable")
    r.add_argument("--out", required=True, help="directory for the rendered files")
    r.set_defaults(handler=_render)
