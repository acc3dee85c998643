"""`vbpe learn GRIDS... --out VOCAB.json --merges N`."""
from __future__ import annotations

import argparse

from pipeline.configargs import add_config_flag, build_config

FLAGS = {
    "inputs": "inputs", "out": "out", "merges": "merges", "alpha": "alpha", "alpha_rel": "alpha_rel",
    "sigma": "sigma", "min_frequency": "min_frequency", "codebook_size": "codebook_size", "workers": "workers",
    "actor_cpus": "actor_cpus", "ray_address": "ray_address", "checkpoint_dir": "checkpoint_dir",
    "checkpoint_every": "checkpoint_every", "resume": "resume", "rejects": "rejects", "progress": "progress",
    "holdout_fraction": "holdout_fraction", "holdout_salt": "holdout_salt", "transport": "transport",
    "restarts": "restarts",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("learn", help="learn a visual BPE vocabulary from code grids",
                       description="Learn a visual BPE vocabulary (P = F + alpha * S) from code-grid Parquet.")
    p.add_argument("inputs", nargs="*", metavar="GRIDS", help="Parquet files, directories, globs or s3:// URLs")
    p.add_argument("--out", help="vocabulary JSON to write")
    p.add_argument("--merges", type=int, help="number of merges (default 8192)")
    alpha = p.add_mutually_exclusive_group()
    alpha.add_argument("--alpha", type=float, help="weight of the spatial term S, in count units")
    alpha.add_argument("--alpha-rel", dest="alpha_rel", type=float,
                       help="alpha as a share of the largest initial pair count (default 0.01)")
    p.add_argument("--sigma", type=float, help="Gaussian kernel width over offsets, in cells (default 1.0)")
    p.add_argument("--min-frequency", dest="min_frequency", type=int, help="smallest F a merged pair may have (default 2)")
    p.add_argument("--codebook-size", dest="codebook_size", type=int, help="V; overrides the files' metadata")
    p.add_argument("--workers", type=int, help="Ray actors holding the grids (default 0: this process, no Ray)")
    p.add_argument("--actor-cpus", dest="actor_cpus", type=float, help="CPUs per actor (default 1)")
    p.add_argument("--ray-address", dest="ray_address", help="Ray cluster to join")
    p.add_argument("--transport", choices=["graph", "calls", "relay"], help="how a merge reaches the actors (default graph)")
    p.add_argument("--restarts", type=int, help="times lost workers are restarted from the last checkpoint (default 2)")
    p.add_argument("--checkpoint-dir", dest="checkpoint_dir", help="default: <out without .json>.checkpoint")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="merges between checkpoints (0: none)")
    p.add_argument("--resume", action="store_const", const=True, help="continue from the checkpoint")
    p.add_argument("--resume-auto", dest="resume", action="store_const", const="auto",
                   help="continue from the checkpoint if it is of these inputs and settings, else learn afresh")
    p.add_argument("--rejects", help="rejected rows Parquet (default: <out>.rejects.parquet)")
    p.add_argument("--holdout-fraction", dest="holdout_fraction", type=float,
                   help="leave out this share of grids (by a salted hash of the key) for held-out evaluation")
    p.add_argument("--holdout-salt", dest="holdout_salt", help="salt of that hash (default vbpe-holdout)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar")
    add_config_flag(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pipeline.learn.api import run
    from schemas.learn import LearnConfig

    cfg = build_config(LearnConfig, args, FLAGS)
    vocab = run(cfg)
    print(f"wrote {cfg.out}: {len(vocab.merges)} merges over {vocab.corpus.grids} grids, "
          f"tokens per grid {vocab.corpus.cells / vocab.corpus.grids:.1f} -> {vocab.corpus.tokens_after / vocab.corpus.grids:.1f}")
    return 0
