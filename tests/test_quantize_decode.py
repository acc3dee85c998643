"""Quantizer decoders: codes back to pixels, checked against each model's own forward pass."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.quantize.checkpoints import convert_to_safetensors
from pipeline.quantize.decode import build_decoder, prepare_decoder
from pipeline.quantize.kmeans import KMeansCodebook, extract_patches, save_codebook
from pipeline.quantize.registry import build_encoder, prepare
from schemas.base import InputError
from schemas.quantize import ChameleonQuantizerConfig, KMeansQuantizerConfig, TamingQuantizerConfig
from tests.helpers import models

torch = pytest.importorskip("torch")
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def test_kmeans_decodes_every_cell_to_its_centroid_patch(tmp_path):
    rng = np.random.default_rng(1)
    cb = KMeansCodebook(rng.random((16, 8 * 8 * 3), dtype=np.float32), 32, 8, "bicubic")
    save_codebook(cb, str(tmp_path / "k.safetensors"))
    cfg = KMeansQuantizerConfig(codebook=str(tmp_path / "k.safetensors"), image_size=32, patch_size=8, codebook_size=16)
    spec, tensors = prepare(cfg)
    dspec, dtensors = prepare_decoder(cfg, spec, tensors)
    codes = rng.integers(0, 16, (2, 4, 4))
    pixels = build_decoder(dspec, dtensors).decode(codes)
    assert pixels.shape == (2, 32, 32, 3) and pixels.dtype == np.uint8
    patches = extract_patches(pixels, 8)  # the inverse view: back to one vector per cell
    want = np.clip(np.rint(cb.centroids * 255), 0, 255) / 255.0
    np.testing.assert_allclose(patches, want[codes], atol=1e-6)
    # decoding the centroids and encoding them again gives the same codes
    again = build_encoder(spec, tensors).encode(pixels)
    assert (again == codes).mean() > 0.95


def _reconstruction(model, images):
    """taming's own autoencoder forward: encode, quantize, decode."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        dec, _ = model(x)
    return (dec + 1.0).mul(127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_taming_decode_of_the_codes_is_the_models_reconstruction(tmp_path):
    cfg, ckpt, model = models.save_taming(str(tmp_path))
    q = TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=ckpt)
    spec, tensors = prepare(q)
    dspec, dtensors = prepare_decoder(q, spec, tensors)
    assert dspec.fingerprint != spec.fingerprint and any(k.startswith("decoder.") for k in dtensors)
    codes = build_encoder(spec, tensors).encode(IMAGES)
    pixels = build_decoder(dspec, dtensors).decode(codes)
    assert pixels.shape == IMAGES.shape
    ref = _reconstruction(model, IMAGES)
    assert np.abs(pixels.astype(int) - ref.astype(int)).max() <= 1
    # through get_codebook_entry + decode, the route that works in taming (decode_code does not)
    with torch.no_grad():
        idx = torch.from_numpy(codes.astype(np.int64)).reshape(-1)
        z = model.quantize.get_codebook_entry(idx, shape=(3, 8, 8, 16))
        manual = model.decode(z)
    manual = (manual + 1).mul(127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(pixels.astype(int) - manual.astype(int)).max() <= 1


def test_converted_checkpoint_keeps_the_decoder_and_the_fingerprint(tmp_path):
    cfg, ckpt, _ = models.save_taming(str(tmp_path))
    st = str(tmp_path / "vqgan.safetensors")
    convert_to_safetensors(ckpt, st)
    a = TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=ckpt)
    b = TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=st)
    sa, ta = prepare(a)
    sb, tb = prepare(b)
    assert sa.fingerprint == sb.fingerprint
    assert prepare_decoder(a, sa, ta)[0].fingerprint == prepare_decoder(b, sb, tb)[0].fingerprint


def test_encoder_only_checkpoint_has_no_decoder(tmp_path):
    cfg, ckpt, _ = models.save_taming(str(tmp_path))
    st = str(tmp_path / "enc.safetensors")
    convert_to_safetensors(ckpt, st, prefixes=("encoder.", "quant_conv.", "quantize."))
    q = TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=st)
    spec, tensors = prepare(q)
    assert prepare_decoder(q, spec, tensors) is None


def test_chameleon_decoder_from_the_original_checkpoint(tmp_path):
    vq = models.save_chameleon(str(tmp_path / "vq"))
    ckpt = models.save_chameleon_decoder(str(tmp_path / "vqgan.ckpt"), vq)
    plain = ChameleonQuantizerConfig(kind="chameleon", path=str(tmp_path / "vq"))
    spec, tensors = prepare(plain)
    assert prepare_decoder(plain, spec, tensors) is None  # transformers' format: encoder only
    q = ChameleonQuantizerConfig(kind="chameleon", path=str(tmp_path / "vq"), decoder=ckpt)
    spec2, tensors2 = prepare(q)
    assert spec2.fingerprint == spec.fingerprint  # the decoder is not part of the codes' identity
    dspec, dtensors = prepare_decoder(q, spec2, tensors2)
    codes = build_encoder(spec2, tensors2).encode(IMAGES)
    pixels = build_decoder(dspec, dtensors).decode(codes)
    assert pixels.shape == IMAGES.shape and pixels.std() > 0
    # the reference: taming's Decoder with the checkpoint's weights on HF's codebook entries
    from taming.modules.diffusionmodules.model import Decoder

    from pipeline.quantize.decode import chameleon_ddconfig

    state = torch.load(ckpt, weights_only=True)["state_dict"]
    ref = Decoder(**chameleon_ddconfig(vq.config.to_dict()))
    ref.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
    with torch.no_grad():
        z = vq.quantize.embedding(torch.from_numpy(codes.astype(np.int64))).permute(0, 3, 1, 2)
        y = ref(vq.post_quant_conv(z))
    y = ((y + 1.0) / 0.0078).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(pixels.astype(int) - y.astype(int)).max() <= 1


def test_chameleon_decoder_of_another_model_is_refused(tmp_path):
    vq = models.save_chameleon(str(tmp_path / "vq"))
    other = models.save_chameleon(str(tmp_path / "other"), seed=5)
    ckpt = models.save_chameleon_decoder(str(tmp_path / "vqgan.ckpt"), other)
    q = ChameleonQuantizerConfig(kind="chameleon", path=str(tmp_path / "vq"), decoder=ckpt)
    spec, tensors = prepare(q)
    with pytest.raises(InputError, match="another model"):
        prepare_decoder(q, spec, tensors)
    assert vq is not None
