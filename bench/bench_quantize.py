"""Quantize throughput: the Ray pipeline against the bare quantizer forward on the same decoded images.

Two workloads on the demo photos: a taming VQGAN encoder (random weights, real f16 architecture at
reduced width: the forward dominates, as with real models) and the k-means quantizer (cheap
forward, so reading and decoding dominate). The bare forward runs in this process with the same
torch thread count as one encoder actor; the ratio is how close the pipeline keeps that actor to
its bare speed. Each pipeline runs twice, on half the shards and on all of them: "marginal" is
(extra images) / (extra seconds), i.e. the throughput with start-up (Ray Data planning, actor and
model start, a fixed cost per run) taken out, which is what a long production run sees.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import numpy as np

TAMING = {
    "model": {
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": 64, "n_embed": 1024,
            "ddconfig": {"double_z": False, "z_channels": 64, "resolution": 256, "in_channels": 3, "out_ch": 3,
                         "ch": 32, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [16],
                         "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }
}


def _taming_files(root: str) -> dict[str, Any]:
    import torch
    import yaml
    from safetensors.torch import save_file

    from pipeline.quantize.taming import ENCODER_PREFIXES, import_vqmodel

    os.makedirs(root, exist_ok=True)
    torch.manual_seed(0)
    p = TAMING["model"]["params"]
    model = import_vqmodel()(ddconfig=p["ddconfig"], lossconfig=p["lossconfig"], n_embed=p["n_embed"], embed_dim=p["embed_dim"])
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)},
              os.path.join(root, "encoder.safetensors"))
    with open(os.path.join(root, "model.yaml"), "w") as f:
        yaml.safe_dump(TAMING, f)
    return {"kind": "taming", "config": os.path.join(root, "model.yaml"), "checkpoint": os.path.join(root, "encoder.safetensors")}


def _bare_forward(q, shards: list[str], batch: int, threads: int) -> tuple[float, int]:
    """images/s of encoder.encode alone on the pre-decoded images of `shards`."""
    import torch

    from pipeline.ingest.reader import Decoded, iter_shard
    from pipeline.quantize.registry import build_encoder, prepare
    from schemas.quantize import IngestOptions

    spec, tensors = prepare(q)
    images = np.stack([d.pixels for url in shards for d in iter_shard(url, spec.image, IngestOptions()) if isinstance(d, Decoded)])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        enc = build_encoder(spec, tensors, "cpu", "fp32")
        enc.encode(images[:batch])
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            enc.encode(images[i:i + batch])
        return len(images) / (time.perf_counter() - start), len(images)
    finally:
        torch.set_num_threads(before)


def _pipeline(q, shards: list[str], out: str, batch: int) -> tuple[int, float]:
    """(images written, seconds of the encode phase incl. start-up) for one fresh run."""
    from pipeline.quantize.run import run_quantize
    from schemas.quantize import QuantizeConfig

    shutil.rmtree(out, ignore_errors=True)
    cfg = QuantizeConfig(inputs=shards, out=out, quantizer=q, batch_size=batch, num_actors=1,
                         cpus_per_actor=1.0, cpus_per_reader=1.0, torch_threads=1)
    summary = run_quantize(cfg)
    return summary.rows_written, summary.encode_seconds


def _measure(q, shards: list[str], out: str, batch: int) -> dict[str, float]:
    before, _ = _bare_forward(q, shards, batch, threads=1)
    n_half, t_half = _pipeline(q, shards[: len(shards) // 2], out + "-half", batch)
    n_all, t_all = _pipeline(q, shards, out, batch)
    after, _ = _bare_forward(q, shards, batch, threads=1)
    bare = (before + after) / 2  # bracketing the pipeline runs evens out load from other processes
    marginal = (n_all - n_half) / (t_all - t_half) if t_all > t_half else float("nan")
    return {"images": n_all, "bare_ips": bare, "bare_before_ips": before, "bare_after_ips": after, "pipeline_ips": n_all / t_all, "marginal_ips": marginal,
            "startup_s": t_all - n_all / marginal if marginal == marginal else float("nan"),
            "ratio": n_all / t_all / bare, "marginal_ratio": marginal / bare}


def run(out_dir: str) -> dict:
    from pipeline.demo.photos import build_demo_shards
    from pipeline.quantize.fit import ensure_codebook
    from pipeline.quantize.dataset import ensure_ray
    from schemas.quantize import IngestOptions, KMeansQuantizerConfig, TamingQuantizerConfig

    os.makedirs(out_dir, exist_ok=True)
    ensure_ray(None)
    small = build_demo_shards(os.path.join(out_dir, "shards-taming"), samples=128, shards=8, seed=0, plant_bad=False).shards
    large = build_demo_shards(os.path.join(out_dir, "shards-kmeans"), samples=384, shards=8, seed=1, plant_bad=False).shards
    km = KMeansQuantizerConfig(codebook=os.path.join(out_dir, "kmeans.safetensors"), image_size=256, patch_size=8,
                               codebook_size=512, fit_patches=40_000, fit_iterations=12)
    ensure_codebook(km, large, IngestOptions(), None)
    workloads = [
        ("taming f16 (ch 32, 256px -> 16x16, 1024 codes)", TamingQuantizerConfig(**_taming_files(os.path.join(out_dir, "taming"))), small, 8),
        ("kmeans (256px -> 32x32, 512 codes)", km, large, 32),
    ]
    results: dict[str, Any] = {}
    for name, q, shards, batch in workloads:
        results[name] = _measure(q, shards, os.path.join(out_dir, f"out-{q.kind}"), batch)
    print(f"{'workload':48} {'images':>6} {'bare':>7} {'run':>7} {'marginal':>8} {'start s':>7} {'run/bare':>8} {'marg/bare':>9}")
    for name, r in results.items():
        print(f"{name:48} {r['images']:6d} {r['bare_ips']:7.1f} {r['pipeline_ips']:7.1f} {r['marginal_ips']:8.1f}"
              f" {r['startup_s']:7.1f} {r['ratio']:8.2f} {r['marginal_ratio']:9.2f}")
    print("(images/s; bare = encoder forward alone, 1 torch thread, on pre-decoded images; run = whole pipeline run;"
          " marginal = extra images / extra seconds between a half and a full run)")
    figures = {"quantize": results, "cpu_count": os.cpu_count(), "threads_per_actor": 1,
               "load_average": os.getloadavg()}
    with open(os.path.join(out_dir, "bench_quantize.json"), "w") as f:
        json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    import sys

    run(sys.argv[1] if len(sys.argv) > 1 else "bench-out/quantize")
