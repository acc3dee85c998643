"""`vbpe quantize` end to end on a real local Ray: bad input, failed shards, re-runs, a killed run, taming actors."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main as vbpe
from pipeline.configargs import load_config
from pipeline.ingest.preprocess import ImageSpec
from pipeline.ingest.reader import Decoded, iter_shard
from pipeline.ingest.writer import write_shard
from pipeline.quantize.kmeans import KMeansEncoder, load_codebook
from schemas.grids import CODEBOOK_SIZE_KEY, QUANTIZER_FINGERPRINT_KEY
from schemas.quantize import IngestOptions
from tests.helpers.shards import good_samples, write_bad_corpus

pytestmark = pytest.mark.ray
MAX_PIXELS = 1_000_000


def write_config(path, inputs, out, codebook, **extra) -> str:
    cfg = {
        "inputs": inputs,
        "out": out,
        "quantizer": {"kind": "kmeans", "codebook": codebook, "image_size": 32, "patch_size": 8,
                      "codebook_size": 16, "fit_patches": 3000},
        "ingest": {"max_pixels": MAX_PIXELS},
        "batch_size": 8,
        "cpus_per_actor": 0.5,
        "cpus_per_reader": 0.5,
    }
    cfg.update(extra)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def manifest(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def committed(out) -> dict:
    """Shards whose entry says done, read from the entry files alone (a killed run never rewrote manifest.json)."""
    found = {}
    for f in glob.glob(os.path.join(out, "manifest.d", "*.json")):
        try:
            e = json.load(open(f))
        except ValueError:
            continue
        if e["status"] == "done":
            found[e["input"]] = e
    return found


def all_grids(out):
    files = sorted(glob.glob(os.path.join(out, "grids", "*.parquet")))
    return files, [pq.read_table(f) for f in files]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    exp = write_bad_corpus(str(root / "shards"), MAX_PIXELS)
    os.rename(exp["unreadable_shard"], str(root / "unreadable.tar"))
    exp["root"] = root
    return exp


@pytest.fixture(scope="module")
def first_run(ray_local, corpus):
    root = corpus["root"]
    out = str(root / "out")
    cfg = write_config(root / "q.yaml", [str(root / "shards")], out, str(root / "cb.safetensors"))
    code = vbpe(["quantize", "--config", cfg, "--fit-kmeans"])
    return code, out, cfg


def test_every_bad_input_is_recorded_and_counts_balance(first_run, corpus, capfd):
    code, out, _ = first_run
    assert code == 0
    m = manifest(out)
    entries = m["inputs"]
    assert len(entries) == 3 and all(e["status"] == "done" for e in entries.values())
    for e in entries.values():
        assert e["rows_in"] == e["rows_written"] + e["rows_rejected"]
    files, tables = all_grids(out)
    assert len(files) == 3
    keys = [k for t in tables for k in t.column("key").to_pylist()]
    assert sum(e["rows_written"] for e in entries.values()) == len(keys)
    assert corpus["good_keys"] <= set(keys)
    rejects = [r for f in glob.glob(os.path.join(out, "rejects", "*.rejects.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sum(e["rows_rejected"] for e in entries.values()) == len(rejects)
    by_key = {(r["key"], r["reason"].split(":")[0]) for r in rejects}
    for key, category in corpus["bad_reasons"].items():
        assert (key, category) in by_key
    truncated = [r for r in rejects if r["source"] == corpus["truncated_shard"]]
    assert len(truncated) == 1 and truncated[0]["reason"].startswith("truncated or corrupt tar")
    assert entries[corpus["truncated_shard"]]["rows_written"] >= 1


def test_grids_are_the_quantizer_codes(first_run, corpus):
    _, out, _ = first_run
    root = corpus["root"]
    cb = load_codebook(str(root / "cb.safetensors"))
    enc = KMeansEncoder(cb.spec(), {"centroids": cb.centroids})
    m = manifest(out)
    assert m["quantizer"]["fingerprint"] == cb.fingerprint
    for url, entry in m["inputs"].items():
        t = pq.read_table(os.path.join(out, entry["output"]))
        meta = t.schema.metadata
        assert meta[CODEBOOK_SIZE_KEY] == b"16" and meta[QUANTIZER_FINGERPRINT_KEY] == cb.fingerprint.encode()
        assert str(t.schema.field("codes").type) == "list<element: int32>"
        want = {d.key: enc.encode(d.pixels[None])[0].reshape(-1).tolist()
                for d in iter_shard(url, ImageSpec(32, "bicubic"), IngestOptions(max_pixels=MAX_PIXELS)) if isinstance(d, Decoded)}
        got = {r["key"]: r["codes"] for r in t.to_pylist()}
        assert got == want
        assert all(r["height"] == 4 and r["width"] == 4 and r["source"] == url for r in t.to_pylist())
    captions = {r["key"]: r["caption"] for t in all_grids(out)[1] for r in t.to_pylist()}
    assert captions["mode_rgb_jpg"] == "mode rgb_jpg" and captions["a0001"] == "sample a1"


def test_rerun_skips_done_shards_and_changes_nothing(first_run, capsys):
    code, out, cfg = first_run
    files, _ = all_grids(out)
    before = {f: open(f, "rb").read() for f in files}
    assert vbpe(["quantize", "--config", cfg, "--fit-kmeans"]) == 0
    text = capsys.readouterr().out
    assert "0 done now, 3 already done" in text
    assert {f: open(f, "rb").read() for f in all_grids(out)[0]} == before


def test_unreadable_shard_fails_alone_then_is_retried(first_run, corpus, capsys):
    _, out, cfg = first_run
    root = corpus["root"]
    bad = str(root / "shards" / "s-009.tar")
    os.replace(str(root / "unreadable.tar"), bad)
    assert vbpe(["quantize", "--config", cfg]) == 3
    text = capsys.readouterr().out
    assert "FAILED" in text and "1 failed" in text
    entry = manifest(out)["inputs"][bad]
    assert entry["status"] == "failed" and "not a readable tar" in entry["error"]
    write_shard(bad, good_samples("fixed", 4))
    assert vbpe(["quantize", "--config", cfg]) == 0
    entry = manifest(out)["inputs"][bad]
    assert entry["status"] == "done" and entry["rows_written"] == 4
    text = capsys.readouterr().out
    assert "1 done now, 3 already done" in text


def test_other_quantizer_into_same_out_is_refused(first_run, corpus, tmp_path, capsys):
    _, out, _ = first_run
    cfg = write_config(tmp_path / "q2.yaml", [str(corpus["root"] / "shards")], out, str(tmp_path / "other.safetensors"),
                       quantizer={"kind": "kmeans", "codebook": str(tmp_path / "other.safetensors"), "image_size": 32,
                                  "patch_size": 8, "codebook_size": 16, "fit_patches": 3000, "seed": 9})
    assert vbpe(["quantize", "--config", cfg, "--fit-kmeans"]) == 2
    assert "cannot be mixed" in capsys.readouterr().err


def test_killed_run_resumes_without_duplicates_or_gaps(first_run, ray_local, corpus, tmp_path):
    shards = tmp_path / "many"
    n_shards, per_shard = 24, 3
    for i in range(n_shards):
        write_shard(str(shards / f"m-{i:03d}.tar"), good_samples(f"m{i}_", per_shard, seed=i, caption=False))
    out = str(tmp_path / "out")
    cb = str(corpus["root"] / "cb.safetensors")  # fitted by the first run: any codebook serves here
    cfg = write_config(tmp_path / "q.yaml", [str(shards / "m-{000..023}.tar")], out, cb, batch_size=2)
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "quantize", "--config", cfg],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_at_kill = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done_at_kill = len(committed(out))
        if done_at_kill >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert 1 <= done_at_kill < n_shards, f"run was not caught mid-way ({done_at_kill} shards done)"
    at_kill = committed(out)  # what the killed run committed (entry files are written as each shard commits)
    assert vbpe(["quantize", "--config", cfg]) == 0
    assert {u: e for u, e in committed(out).items() if u in at_kill} == at_kill, "a committed shard was redone"
    m = manifest(out)["inputs"]
    assert len(m) == n_shards and all(e["status"] == "done" for e in m.values())
    keys = [k for t in all_grids(out)[1] for k in t.column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == n_shards * per_shard
    assert not glob.glob(os.path.join(out, "grids", ".*tmp*"))


def test_taming_actors_rebuild_the_model_from_the_object_store(ray_local, tmp_path):
    """Actors rebuild the VQModel from weights shipped through the object store; codes match VQModel.encode."""
    import torch

    from tests.helpers.models import save_taming

    ycfg, ckpt, model = save_taming(str(tmp_path / "model"))
    write_shard(str(tmp_path / "t.tar"), good_samples("tm", 5))
    cfg = {"inputs": [str(tmp_path / "t.tar")], "out": str(tmp_path / "out"), "batch_size": 2, "cpus_per_actor": 0.5,
           "cpus_per_reader": 0.5, "quantizer": {"kind": "taming", "config": ycfg, "checkpoint": ckpt}}
    from pipeline.quantize.api import run as run_quantize
    from schemas.quantize import QuantizeConfig

    summary = run_quantize(QuantizeConfig.from_dict(cfg))
    assert summary.ok and summary.rows_written == 5
    (t,) = all_grids(str(tmp_path / "out"))[1]
    decoded = [d for d in iter_shard(str(tmp_path / "t.tar"), ImageSpec(64, "bicubic"), IngestOptions()) if isinstance(d, Decoded)]
    x = torch.from_numpy(np.stack([d.pixels for d in decoded])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = model.encode(x)[2][2].reshape(5, -1).tolist()
    assert t.column("codes").to_pylist() == want
    assert t.schema.metadata[CODEBOOK_SIZE_KEY] == b"256"


def test_decoding_stays_out_of_the_encoder_actors(first_run, corpus):
    """Ray Data fuses task -> actor maps with equal resources; decoding must stay in parallel reader tasks."""
    import ray

    from pipeline.quantize.registry import prepare
    from pipeline.quantize.dataset import build_dataset
    from schemas.quantize import QuantizeConfig

    _, _, cfg_path = first_run
    cfg = load_config(QuantizeConfig, cfg_path)
    cfg.cpus_per_reader = cfg.actor_cpus
    spec, tensors = prepare(cfg.quantizer)
    urls = sorted(glob.glob(str(corpus["root"] / "shards" / "s-00[01].tar")))
    ds = build_dataset(cfg, spec, ray.put(tensors), urls)
    rows = sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    stats = ds.stats()
    assert rows == 11 + 11 + 2  # samples + one end marker per shard
    assert "MapBatches(read_shards)->" not in stats and "MapBatches(EncodeActor)" in stats


def test_job_entrypoint_prints_a_json_summary_when_samples_were_rejected(first_run, corpus, tmp_path, capsys):
    """`python -m jobs.quantize` once crashed after writing everything: the reject counter had tuple keys."""
    from jobs.quantize import main as job

    _, _, cfg = first_run
    text = yaml.safe_load(open(cfg))
    text["out"] = str(tmp_path / "job-out")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(text))
    assert job(["--config", str(tmp_path / "job.yaml")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["rows_rejected"] > 0
    assert summary["rows_in"] == summary["rows_written"] + summary["rows_rejected"]
    assert sum(summary["reject_reasons"].values()) == summary["rows_rejected"]
    metrics = json.load(open(tmp_path / "job-out" / "metrics.json"))
    assert metrics["status"] == "ok" and metrics["rows_rejected"] == summary["rows_rejected"] and metrics["rows_accounted"]
