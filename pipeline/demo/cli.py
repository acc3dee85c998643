"""`vbpe demo --out DIR`: photos -> shards -> k-means codebook -> code grids (local Ray) -> vocabulary -> tokens
-> tokenizer directory -> report."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the whole pipeline on real photos shipped with installed packages")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--samples", type=int, default=384, help="random crops to make from the ~two dozen photos")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--codebook-size", type=int, default=512)
    p.add_argument("--merges", type=int, default=1000, help="vocabulary merges to learn")
    p.add_argument("--fresh", action="store_true", help="delete --out first (default: resume what is there)")
    p.set_defaults(handler=handle)


def _stage(n: int, total: int, text: str) -> None:
    print(f"[{n}/{total}] {text}", flush=True)


def run_demo(out: str, samples: int = 384, shards: int = 4, seed: int = 0, image_size: int = 256,
             patch_size: int = 8, codebook_size: int = 512, merges: int = 1000) -> dict[str, Any]:
    from pipeline import storage
    from pipeline.demo.downstream import STAGES, run_downstream
    from pipeline.demo.photos import build_demo_shards
    from pipeline.quantize.fit import ensure_codebook
    from pipeline.quantize.kmeans import load_codebook
    from pipeline.quantize.outputs import OutputDirs
    from pipeline.quantize.api import run as run_quantize
    from schemas.quantize import KMeansQuantizerConfig, QuantizeConfig

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    _stage(1, STAGES, f"building {samples} samples from bundled photos: {shards} training shards + 1 of held-out photos")
    corpus = build_demo_shards(storage.join(out, "shards"), samples, shards, seed)
    seconds["shards"] = time.perf_counter() - t

    t = time.perf_counter()
    q = KMeansQuantizerConfig(codebook=storage.join(out, "quantizer", "kmeans.safetensors"), image_size=image_size,
                              patch_size=patch_size, codebook_size=codebook_size, fit_images=samples,
                              fit_patches=40_000, fit_iterations=12, seed=seed)
    _stage(2, STAGES, f"fitting the k-means quantizer ({codebook_size} codes, {patch_size} px patches) on the training photos")
    ensure_codebook(q, corpus.train_shards, QuantizeConfig.model_fields["ingest"].default, None)
    cb = load_codebook(q.codebook)
    seconds["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    _stage(3, STAGES, "quantizing on a local Ray (reader tasks + an encoder actor)")
    cfg = QuantizeConfig(inputs=corpus.shards, out=storage.join(out, "codes"), quantizer=q, batch_size=32,
                         workers=1, cpus=1.0, cpus_per_reader=1.0)
    summary = run_quantize(cfg)
    seconds["quantize"] = time.perf_counter() - t

    layout = OutputDirs(cfg.out)
    downstream = run_downstream(layout.grids_dir, out, q, corpus.train_shards, corpus.heldout_shards, merges=merges,
                                stage=_stage)
    seconds.update(downstream["seconds"])

    figures = {
        "photos": corpus.photos,
        "photos_unavailable": corpus.unavailable,
        "samples": corpus.samples,
        "planted_bad_samples": corpus.planted_bad,
        "shards": corpus.shards,
        "heldout_photos": corpus.heldout_photos,
        "heldout_samples": corpus.heldout_samples,
        "quantizer": {"file": q.codebook, "fingerprint": cb.fingerprint, "codebook_size": codebook_size,
                      "patch_size": patch_size, "image_size": image_size, "grid": list(cb.spec().grid), "fit": cb.fit_info},
        "quantize": {"grids_dir": layout.grids_dir, "rejects_dir": layout.rejects_dir, "manifest": layout.manifest,
                     **summary.totals, "done": summary.totals["inputs_done"], "failed": summary.totals["inputs_failed"],
                     "rejects_by_reason": rejects_by_reason(layout.rejects_dir), "lines": summary.lines()},
        "downstream": downstream,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    storage.write_text(storage.join(out, "summary.json"), json.dumps(figures, indent=1, default=str) + "\n")
    return figures


def rejects_by_reason(rejects_dir: str) -> dict[str, int]:
    """Reject counts by reason category over every rejects file on disk (this run's and earlier ones)."""
    import collections

    import pyarrow.parquet as pq

    from pipeline import storage

    counts: collections.Counter = collections.Counter()
    if not storage.exists(rejects_dir):
        return {}
    try:
        files = storage.expand([rejects_dir], (".parquet",))
    except FileNotFoundError:
        return {}
    for path in files:
        with storage.open_file(path) as f:
            counts.update(r.split(":", 1)[0] for r in pq.read_table(f, columns=["reason"]).column("reason").to_pylist())
    return dict(sorted(counts.items()))


def report(f: dict[str, Any], out: str) -> str:
    q, z, d = f["quantizer"], f["quantize"], f["downstream"]
    reasons = ", ".join(f"{k} {v}" for k, v in z["rejects_by_reason"].items()) or "none"
    lines = [
        "",
        f"vbpe demo: done in {sum(f['seconds'].values()):.1f} s",
        f"  photos     {len(f['photos'])} real photos from scikit-image, scikit-learn, matplotlib"
        + (f" ({len(f['photos_unavailable'])} loaders need a download, skipped)" if f["photos_unavailable"] else ""),
        f"  shards     {os.path.join(out, 'shards')}: {len(f['shards'])} shards, {f['samples']} samples"
        f" (incl. {f['planted_bad_samples']} deliberately broken); held out: {f['heldout_samples']} crops of"
        f" {len(f['heldout_photos'])} photos ({', '.join(f['heldout_photos'])})",
        f"  quantizer  {q['file']}: k-means, {q['codebook_size']} codes, {q['patch_size']} px patches,"
        f" {q['image_size']} px -> {q['grid'][0]}x{q['grid'][1]} grid, fingerprint {q['fingerprint']}",
        f"  grids      {z['grids_dir']}: {z['rows_written']} grids from {z['done']} shards"
        f" (rows in {z['rows_in']} = written {z['rows_written']} + rejected {z['rows_rejected']})",
        f"  rejects    {z['rejects_dir']}: {reasons}",
        f"  this run   {z['lines'][1]}",
        f"  manifest   {z['manifest']}",
        f"  vocabulary {d['vocab']}: {d['merges']} merges learned on {d['grids_learned']} grids of the training"
        f" photos, alpha {d['alpha']:.3g}",
        f"  tokens/img {d['tokens_per_image_before']} codes -> {d['tokens_per_image_after']} tokens on the training grids,"
        f" {d['tokens_per_image_held_out']} on the {d['grids_held_out']} held-out grids",
        f"  corpus     {d['tokens']['data']}: {d['tokens']['rows_written']} rows with input_ids"
        f" ({d['tokens']['rows_rejected']} rejected), {d['tokens']['cells_per_token']} cells per token",
        f"  tokenizer  {d['tokenizer']}: vbpe.VisualTokenizer.from_pretrained({d['tokenizer']!r})",
        f"  report     {d['report']}",
        "  seconds    " + ", ".join(f"{k} {v}" for k, v in f["seconds"].items()),
        f"  summary    {os.path.join(out, 'summary.json')}",
    ]
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    if args.fresh and os.path.exists(args.out):
        shutil.rmtree(args.out)
    figures = run_demo(args.out, args.samples, args.shards, args.seed, args.image_size, args.patch_size,
                       args.codebook_size, args.merges)
    print(report(figures, args.out))
    return 0 if figures["quantize"]["failed"] == 0 else 3
