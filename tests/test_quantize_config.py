"""Config validation up front, flags over YAML, and the thin job entrypoint."""
from __future__ import annotations

import argparse

import pytest
import yaml

from jobs.quantize import main as job_main
from pipeline.cli import build_parser
from pipeline.configargs import config_from_args
from schemas.base import ConfigError
from schemas.quantize import QuantizeConfig

KM = {"kind": "kmeans", "codebook": "cb.safetensors"}


def parse(argv) -> argparse.Namespace:
    return build_parser().parse_args(["quantize", *argv])


def test_defaults_and_discriminated_quantizer():
    cfg = QuantizeConfig.from_dict({"inputs": ["a.tar"], "out": "o", "quantizer": KM})
    assert cfg.quantizer.kind == "kmeans" and cfg.quantizer.patch_size == 8 and cfg.ingest.max_pixels == 64_000_000
    cfg = QuantizeConfig.from_dict({"inputs": ["a.tar"], "out": "o", "quantizer": {"kind": "chameleon", "path": "d"}})
    assert cfg.quantizer.resample == "lanczos"


@pytest.mark.parametrize(
    "data,where",
    [
        ({"inputs": ["a"], "out": "o", "quantizer": KM, "batchsize": 3}, "batchsize"),
        ({"inputs": ["a"], "out": "o", "quantizer": {"kind": "vqvae"}}, "quantizer"),
        ({"inputs": ["a"], "out": "o", "quantizer": {**KM, "image_size": 100, "patch_size": 16}}, "patch_size 16 must divide"),
        ({"inputs": [], "out": "o", "quantizer": KM}, "inputs"),
        ({"inputs": ["a"], "out": "o", "quantizer": {"kind": "taming", "config": "c", "checkpoint": "k"}, "fit_kmeans": True}, "fit_kmeans"),
        ({"inputs": ["a"], "out": "o", "quantizer": KM, "num_actors": 3, "max_actors": 2}, "max_actors"),
        ({"inputs": ["a"], "out": "o", "quantizer": KM, "ingest": {"max_pixels": 0}}, "ingest.max_pixels"),
    ],
)
def test_bad_configs_name_the_field(data, where):
    with pytest.raises(ConfigError) as err:
        QuantizeConfig.from_dict(data, source="q.yaml")
    assert where in str(err.value) and "q.yaml" in str(err.value)


def test_flags_override_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"inputs": ["x.tar"], "out": "o1", "quantizer": KM, "batch_size": 4,
                                                     "storage": {"region": "eu-west-1"}}))
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({"quantizer": {"kind": "taming", "config": "m.yaml", "checkpoint": "m.ckpt"}}))
    cfg = config_from_args(parse(["s3://b/{0..1}.tar", "--config", str(tmp_path / "c.yaml"), "--quantizer", str(tmp_path / "q.yaml"),
                                  "--batch-size", "16", "--num-gpus", "1", "--max-pixels", "1000", "--endpoint-url", "http://h:1",
                                  "--num-actors", "3"]))
    assert cfg.inputs == ["s3://b/{0..1}.tar"] and cfg.out == "o1" and cfg.batch_size == 16 and cfg.num_gpus == 1
    assert cfg.quantizer.kind == "taming" and cfg.ingest.max_pixels == 1000 and cfg.workers == 3
    assert cfg.storage.endpoint_url == "http://h:1" and cfg.storage.region == "eu-west-1"


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["quantize", "x.tar", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vbpe quantize: error: invalid config") and "quantizer" in err and "Traceback" not in err


def test_job_entrypoint_validates_before_running(tmp_path, capsys):
    bad = tmp_path / "job.yaml"
    bad.write_text(yaml.safe_dump({"inputs": ["a.tar"], "out": "o", "quantizer": KM, "batch_size": 0}))
    assert job_main(["--config", str(bad)]) == 2
    assert "batch_size" in capsys.readouterr().err
    missing = tmp_path / "inputs.yaml"
    missing.write_text(yaml.safe_dump({"inputs": [str(tmp_path / "nope-*.tar")], "out": str(tmp_path / "o"), "quantizer": KM}))
    assert job_main(["--config", str(missing)]) == 2
    assert "matches no" in capsys.readouterr().err


def test_old_pool_names_are_the_execution_fields():
    cfg = QuantizeConfig.from_dict({"inputs": ["a.tar"], "out": "o", "quantizer": KM, "num_actors": 2, "cpus_per_actor": 0.5})
    assert (cfg.workers, cfg.cpus, cfg.actor_count, cfg.actor_cpus) == (2, 0.5, 2, 0.5)
    with pytest.raises(ConfigError, match="old name of workers"):
        QuantizeConfig.from_dict({"inputs": ["a.tar"], "out": "o", "quantizer": KM, "num_actors": 2, "workers": 1})


def test_executor_local_is_refused_for_shards(tmp_path):
    from pipeline import execution

    cfg = QuantizeConfig.from_dict({"inputs": ["a.tar"], "out": "o", "quantizer": KM, "executor": "local"})
    with pytest.raises(ConfigError, match="executor: local is not possible here"):
        execution.plan(cfg, ray_only="shards are read in a Ray Data pipeline")


def _damaged_quantizers(root) -> dict[str, tuple[dict, str]]:
    """name -> (quantizer section, what the one line must say)."""
    import json

    tm, ch = root / "tm", root / "ch"
    tm.mkdir()
    ch.mkdir()
    (tm / "m.yaml").write_text(yaml.safe_dump({"model": {"params": {"ddconfig": {"resolution": 64, "ch_mult": [1, 2]},
                                                                   "n_embed": 16, "embed_dim": 4}}}))
    (tm / "cut.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)  # a truncated zip, as torch saves them
    (tm / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (tm / "list.yaml").write_text("- a\n- b\n")
    (ch / "config.json").write_text("{not json")
    (root / "ch2").mkdir()
    (root / "ch2" / "config.json").write_text(json.dumps({"model_type": "chameleon_vqgan"}))
    (root / "ch2" / "model.safetensors").write_bytes(b"garbage")
    return {
        "truncated ckpt": ({"kind": "taming", "config": str(tm / "m.yaml"), "checkpoint": str(tm / "cut.ckpt")},
                           "not a readable torch checkpoint"),
        "corrupt safetensors": ({"kind": "taming", "config": str(tm / "m.yaml"), "checkpoint": str(tm / "bad.safetensors")},
                                "not a readable safetensors file"),
        "model yaml not a mapping": ({"kind": "taming", "config": str(tm / "list.yaml"), "checkpoint": str(tm / "cut.ckpt")},
                                     "expected a taming model config"),
        "config.json not json": ({"kind": "chameleon", "path": str(ch)}, "config.json: not valid JSON"),
        "chameleon weights corrupt": ({"kind": "chameleon", "path": str(root / "ch2")}, "not a readable safetensors file"),
    }


def test_damaged_quantizer_files_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "s.tar").write_bytes(b"x")
    for name, (quantizer, says) in _damaged_quantizers(tmp_path).items():
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"inputs": [str(tmp_path / "s.tar")], "out": str(tmp_path / "o"), "quantizer": quantizer}))
        assert job_main(["--config", str(cfg)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("jobs.quantize: error:") and says in err[-1], (name, err[-1])
        assert not any("Traceback" in line for line in err), name
