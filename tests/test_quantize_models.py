"""Tiny random-initialised taming and Chameleon VQ-GANs, saved to disk and loaded the way users load theirs."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import yaml

from pipeline.quantize.checkpoints import convert_to_safetensors
from pipeline.quantize.registry import build_encoder, prepare
from schemas.base import ConfigError, InputError
from schemas.quantize import ChameleonQuantizerConfig, TamingQuantizerConfig
from tests.helpers import models

torch = pytest.importorskip("torch")
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def taming_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("taming")
    cfg, ckpt, model = models.save_taming(str(d))
    return cfg, ckpt, model, d


def _taming_reference(model, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        _, _, (_, _, idx) = model.encode(x)
    return idx.numpy().reshape(len(images), 8, 8)


def test_taming_lightning_checkpoint_encodes_like_vqmodel(taming_files):
    cfg, ckpt, model, _ = taming_files
    spec, tensors = prepare(TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=ckpt))
    assert spec.codebook_size == 256 and spec.grid == (8, 8) and spec.image.size == 64
    assert not any(k.startswith(("loss.", "decoder.")) for k in tensors)
    codes = build_encoder(spec, tensors).encode(IMAGES)
    np.testing.assert_array_equal(codes, _taming_reference(model, IMAGES))
    assert len(np.unique(codes)) > 1
    assert "torchvision" not in sys.modules
    assert "vbpe" in (sys.modules["taming.main"].__doc__ or "")


def test_taming_safetensors_conversion_keeps_fingerprint(taming_files, tmp_path):
    cfg, ckpt, _, _ = taming_files
    st = str(tmp_path / "enc.safetensors")
    assert convert_to_safetensors(ckpt, st) > 10
    a, _ = prepare(TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=ckpt))
    b, _ = prepare(TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=st))
    assert a.fingerprint == b.fingerprint
    c, _ = prepare(TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=st, image_size=128))
    assert c.grid == (16, 16) and c.fingerprint != a.fingerprint


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path, taming_files, monkeypatch):
    cfg, _, model, _ = taming_files
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": model.state_dict(), "payload": _Evil()}, bad)
    with pytest.raises(InputError, match="refused to load"):
        prepare(TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=str(bad)))
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_taming_config_errors(tmp_path, taming_files):
    cfg, ckpt, _, d = taming_files
    doc = yaml.safe_load(open(cfg))
    doc["model"]["params"]["remap"] = "used.npy"
    bad = tmp_path / "remap.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="remap"):
        prepare(TamingQuantizerConfig(kind="taming", config=str(bad), checkpoint=ckpt))
    doc = yaml.safe_load(open(cfg))
    doc["model"]["params"]["n_embed"] = 512
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(doc))
    spec, tensors = prepare(TamingQuantizerConfig(kind="taming", config=str(wrong), checkpoint=ckpt))
    with pytest.raises(InputError, match="does not fit"):
        build_encoder(spec, tensors)


def test_taming_plain_state_dict(tmp_path):
    cfg, pt, model = models.save_taming(str(tmp_path), seed=1, lightning=False)
    spec, tensors = prepare(TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=pt))
    np.testing.assert_array_equal(build_encoder(spec, tensors).encode(IMAGES), _taming_reference(model, IMAGES))


def _chameleon_reference(vq, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() * 0.0078 - 1.0
    with torch.no_grad():
        return vq.encode(x).image_tokens.numpy().reshape(len(images), 8, 8)


def test_chameleon_vqvae_dir(tmp_path):
    model = models.save_chameleon(str(tmp_path / "vq"))
    spec, tensors = prepare(ChameleonQuantizerConfig(kind="chameleon", path=str(tmp_path / "vq")))
    assert spec.codebook_size == 256 and spec.grid == (8, 8) and spec.image.resample == "lanczos"
    codes = build_encoder(spec, tensors).encode(IMAGES)
    np.testing.assert_array_equal(codes, _chameleon_reference(model, IMAGES))


def test_chameleon_full_checkpoint_reads_only_the_vq_model(tmp_path):
    full = models.save_full_chameleon(str(tmp_path / "full"))
    assert len([f for f in os.listdir(tmp_path / "full") if f.endswith(".safetensors")]) > 1
    spec, tensors = prepare(ChameleonQuantizerConfig(kind="chameleon", path=str(tmp_path / "full")))
    assert all(k.startswith(("encoder.", "quant_conv.", "quantize.", "post_quant_conv.")) for k in tensors)
    codes = build_encoder(spec, tensors).encode(IMAGES)
    np.testing.assert_array_equal(codes, _chameleon_reference(full.model.vqmodel, IMAGES))
    full.model.vqmodel.save_pretrained(str(tmp_path / "vq_only"))
    alone, _ = prepare(ChameleonQuantizerConfig(kind="chameleon", path=str(tmp_path / "vq_only")))
    assert alone.fingerprint == spec.fingerprint


def test_chameleon_bad_dir(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="neither chameleon_vqgan nor chameleon"):
        prepare(ChameleonQuantizerConfig(kind="chameleon", path=str(tmp_path)))
