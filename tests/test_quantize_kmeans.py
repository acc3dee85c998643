"""The k-means patch quantizer: patch layout, fitting, the codebook file, encoding."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.quantize.kmeans import (KMeansCodebook, KMeansEncoder, extract_patches, fit_centroids, fit_codebook,
                                      load_codebook, save_codebook)
from pipeline.quantize.registry import prepare
from schemas.base import ConfigError, InputError
from schemas.quantize import KMeansQuantizerConfig


def test_patches_are_row_major_over_the_grid():
    img = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    p = extract_patches(img, 8)
    assert p.shape == (1, 4, 4, 192)
    r, c = 2, 3
    np.testing.assert_allclose(p[0, r, c], img[0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].reshape(-1) / 255.0, rtol=1e-6)


def test_fit_separates_well_separated_clusters():
    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 1, (6, 12)).astype(np.float32) * 10
    labels = rng.integers(0, 6, 3000)
    x = centres[labels] + rng.normal(0, 0.05, (3000, 12)).astype(np.float32)
    c, info = fit_centroids(x, 6, iterations=30, seed=0)
    import torch

    from pipeline.quantize.kmeans import nearest

    assign = nearest(torch.from_numpy(x), torch.from_numpy(c))[0].numpy()
    # one code per true cluster, all different
    mapping = {int(l): set(assign[labels == l].tolist()) for l in range(6)}
    assert all(len(v) == 1 for v in mapping.values())
    assert len({next(iter(v)) for v in mapping.values()}) == 6
    assert info["mean_sq_error"] < 0.05


def test_fit_is_deterministic_and_needs_enough_patches():
    imgs = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(4)]
    a = fit_codebook(imgs, 32, 8, "bicubic", 16, 200, 5, seed=3)
    b = fit_codebook(imgs, 32, 8, "bicubic", 16, 200, 5, seed=3)
    assert a.fingerprint == b.fingerprint
    assert fit_codebook(imgs, 32, 8, "bicubic", 16, 200, 5, seed=4).fingerprint != a.fingerprint
    with pytest.raises(InputError, match="at least 100 patches"):
        fit_codebook(imgs, 32, 8, "bicubic", 100, 50, 5, seed=0)


def _codebook(k=8, patch=4, size=16, seed=0) -> KMeansCodebook:
    c = np.random.default_rng(seed).uniform(0, 1, (k, patch * patch * 3)).astype(np.float32)
    return KMeansCodebook(c, size, patch, "bicubic", {"note": "test"})


def test_codebook_file_round_trip_is_safetensors(tmp_path):
    cb = _codebook()
    path = str(tmp_path / "cb.safetensors")
    save_codebook(cb, path)
    raw = open(path, "rb").read()
    assert raw[8:9] == b"{" and b"\x80\x04" not in raw[:16]  # safetensors JSON header, not a pickle stream
    back = load_codebook(path)
    assert back.fingerprint == cb.fingerprint and back.fit_info == {"note": "test"}
    np.testing.assert_array_equal(back.centroids, cb.centroids)


def test_tampered_codebook_is_refused(tmp_path):
    path = tmp_path / "cb.safetensors"
    save_codebook(_codebook(), str(path))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="fingerprint mismatch"):
        load_codebook(str(path))
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputError, match="not a vbpe k-means codebook"):
        load_codebook(str(path))


def test_config_must_match_the_file(tmp_path):
    path = str(tmp_path / "cb.safetensors")
    save_codebook(_codebook(k=8, patch=4, size=16), path)
    spec, _ = prepare(KMeansQuantizerConfig(codebook=path, image_size=16, patch_size=4, codebook_size=8))
    assert spec.grid == (4, 4) and spec.codebook_size == 8
    with pytest.raises(ConfigError, match="patch_size: file 4 != config 8"):
        prepare(KMeansQuantizerConfig(codebook=path, image_size=16, patch_size=8, codebook_size=8))
    with pytest.raises(InputError, match="--fit-kmeans"):
        prepare(KMeansQuantizerConfig(codebook=str(tmp_path / "missing.safetensors")))


def test_encoder_finds_the_patch_it_was_built_from():
    cb = _codebook(k=8, patch=4, size=16)
    cents = (cb.centroids * 255).round().astype(np.uint8)
    cb.centroids = cents.astype(np.float32) / 255.0
    want = np.random.default_rng(2).integers(0, 8, (2, 4, 4))
    img = np.zeros((2, 16, 16, 3), np.uint8)
    for b in range(2):
        for r in range(4):
            for c in range(4):
                img[b, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = cents[want[b, r, c]].reshape(4, 4, 3)
    enc = KMeansEncoder(cb.spec(), {"centroids": cb.centroids})
    got = enc.encode(img)
    assert got.dtype == np.int32 and got.shape == (2, 4, 4)
    np.testing.assert_array_equal(got, want)
