"""Quantize throughput: the Ray pipeline against the bare quantizer forward on the same decoded images.

Two workloads on the demo photos: a taming VQGAN encoder (random weights, real f16 architecture at
reduced width: the forward dominates, as with real models) and the k-means quantizer (cheap
forward, so reading and decoding weigh more). The bare forward runs in this process with the same
torch thread count as the one encoder actor (1), before and after the pipeline runs.

Figures per workload:
* wall: images/s of a whole run (incl. start-up: Ray Data planning, actor and model start), and
  "steady" = images in encoded blocks after the first / time from the first block's arrival at
  the driver to the last one's (start-up excluded);
* cpu: the encoder actor's CPU time per image (from Ray Data's stats) against the bare forward's,
  i.e. how much work the pipeline adds where the model runs. On a machine shared with other jobs
  wall-clock ratios swing with the load; CPU-time ratios do not.
"""
from __future__ import annotations

import json
import os
import re
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


def _bare_forward(q, shards: list[str], batch: int, threads: int) -> tuple[float, float, int]:
    """(images/s, CPU ms/image) of encoder.encode alone on the pre-decoded images of `shards`."""
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
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(images), batch):
            enc.encode(images[i:i + batch])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return len(images) / wall, 1000 * cpu / len(images), len(images)
    finally:
        torch.set_num_threads(before)


_CPU_TOTAL = re.compile(r"Remote cpu time: .*? ([0-9.]+)(us|ms|s) total")


def _op_cpu_seconds(stats: str, op: str) -> float:
    """Total remote CPU seconds of one operator from Ray Data's stats text (nan if not found)."""
    part = stats.split(f"MapBatches({op})", 1)
    m = _CPU_TOTAL.search(part[1]) if len(part) == 2 else None
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


def _pipeline(q, shards: list[str], out: str, batch: int) -> dict[str, float]:
    """One fresh run: images, seconds (encode phase incl. start-up), actor and reader CPU ms/image."""
    from pipeline.quantize.api import run as run_quantize
    from schemas.quantize import QuantizeConfig

    shutil.rmtree(out, ignore_errors=True)
    cfg = QuantizeConfig(inputs=shards, out=out, quantizer=q, batch_size=batch, num_actors=1,
                         cpus_per_actor=1.0, cpus_per_reader=1.0, torch_threads=1)
    summary = run_quantize(cfg)
    n = summary.rows_written
    stats = summary.trace.dataset_stats
    return {"images": n, "seconds": summary.encode_seconds, "steady_ips": summary.trace.steady_rate(),
            "actor_cpu_ms": 1000 * _op_cpu_seconds(stats, "EncodeActor") / n,
            "reader_cpu_ms": 1000 * _op_cpu_seconds(stats, "read_shards") / n}


def _measure(q, shards: list[str], out: str, batch: int) -> dict[str, float]:
    bare_before, bare_cpu_before, _ = _bare_forward(q, shards, batch, threads=1)
    full = _pipeline(q, shards, out, batch)
    bare_after, bare_cpu_after, _ = _bare_forward(q, shards, batch, threads=1)
    bare = (bare_before + bare_after) / 2  # bracketing the pipeline runs evens out load from other processes
    bare_cpu = (bare_cpu_before + bare_cpu_after) / 2
    return {
        "images": full["images"], "bare_ips": bare, "bare_before_ips": bare_before, "bare_after_ips": bare_after,
        "run_ips": full["images"] / full["seconds"], "steady_ips": full["steady_ips"],
        "wall_ratio": full["steady_ips"] / bare, "bare_cpu_ms": bare_cpu, "actor_cpu_ms": full["actor_cpu_ms"],
        "reader_cpu_ms": full["reader_cpu_ms"], "cpu_efficiency": bare_cpu / full["actor_cpu_ms"],
    }


def run(out_dir: str) -> dict:
    from pipeline.demo.photos import build_demo_shards
    from pipeline.quantize.fit import ensure_codebook
    from pipeline.execution import ensure_ray
    from schemas.quantize import IngestOptions, KMeansQuantizerConfig, TamingQuantizerConfig

    os.makedirs(out_dir, exist_ok=True)
    ensure_ray(None)
    small = build_demo_shards(os.path.join(out_dir, "shards-taming"), samples=96, shards=6, seed=0, plant_bad=False).shards
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
    print(f"{'workload':46} {'imgs':>4} {'bare/s':>7} {'run/s':>6} {'steady':>6} {'wall':>5}"
          f" {'bare ms':>7} {'actor ms':>8} {'cpu eff':>7} {'read ms':>7}")
    for name, r in results.items():
        print(f"{name:46} {r['images']:4d} {r['bare_ips']:7.1f} {r['run_ips']:6.1f} {r['steady_ips']:6.1f}"
              f" {r['wall_ratio']:5.2f} {r['bare_cpu_ms']:7.1f} {r['actor_cpu_ms']:8.1f} {r['cpu_efficiency']:7.2f}"
              f" {r['reader_cpu_ms']:7.1f}")
    print("images/s: bare forward (1 thread), whole run, steady state (start-up excluded); wall = steady/bare;"
          " CPU ms per image: bare forward, encoder actor, reader task; cpu eff = bare/actor")
    figures = {"quantize": results, "cpu_count": os.cpu_count(), "threads_per_actor": 1,
               "load_average": os.getloadavg()}
    with open(os.path.join(out_dir, "bench_quantize.json"), "w") as f:
        json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    import sys

    run(sys.argv[1] if len(sys.argv) > 1 else "bench-out/quantize")
