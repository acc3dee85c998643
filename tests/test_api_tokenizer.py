"""`vbpe export` and `VisualTokenizer.from_pretrained`: the directory, its checks, images in, pixels out."""
from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import vbpe
from pipeline.cli import main
from pipeline.bpe.learner import learn_arrays
from pipeline.bpe.vocab import Vocabulary
from pipeline.quantize.kmeans import KMeansEncoder, fit_codebook, save_codebook
from schemas.base import InputError
from schemas.layout import IdLayout
from tests.helpers import models

PHOTOS = None


def photos(n=8, side=96, seed=0):
    """Real photos (scikit-image), cropped: JPEG bytes and the arrays they came from."""
    from pipeline.demo.photos import load_photos

    global PHOTOS
    if PHOTOS is None:
        PHOTOS = load_photos()[0]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = PHOTOS[i % len(PHOTOS)].pixels
        if p.ndim == 2:
            p = np.stack([p] * 3, -1)
        y, x = rng.integers(0, p.shape[0] - side), rng.integers(0, p.shape[1] - side)
        buf = io.BytesIO()
        Image.fromarray(p[y:y + side, x:x + side]).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A k-means codebook fitted on photos, a vocabulary learned on their codes: the files export reads."""
    from vbpe.images import prepare
    from pipeline.ingest.preprocess import ImageSpec

    root = tmp_path_factory.mktemp("sources")
    images = [prepare(b, ImageSpec(32, "bicubic")) for b in photos(24)]
    cb = fit_codebook(images, 32, 4, "bicubic", 24, 4000, 5, 0)
    save_codebook(cb, str(root / "kmeans.safetensors"))
    codes = KMeansEncoder(cb.spec(), {"centroids": cb.centroids}).encode(np.stack(images))
    merges, _, alpha = learn_arrays(list(codes), 24, 40, alpha=1.0)
    vocab = Vocabulary(24, 1.0, 2, alpha, merges=merges, quantizer_fingerprint=cb.fingerprint)
    vocab.save(str(root / "vocab.json"))
    (root / "kmeans.yaml").write_text(f"kind: kmeans\ncodebook: {root / 'kmeans.safetensors'}\nimage_size: 32\n"
                                      "patch_size: 4\ncodebook_size: 24\n")
    return root, vocab, cb


def export(root, out, *extra):
    return main(["export", "--vocab", str(root / "vocab.json"), "--quantizer", str(root / "kmeans.yaml"),
                 "--out", str(out), *extra])


@pytest.fixture(scope="module")
def exported(sources, tmp_path_factory):
    root, _, _ = sources
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    assert export(root, out) == 0
    return out


def test_export_writes_one_loadable_directory(exported, sources):
    _, vocab, cb = sources
    assert sorted(os.listdir(exported)) == ["decoder.safetensors", "layout.yaml", "quantizer.json",
                                            "quantizer.safetensors", "vbpe_tokenizer.json", "vocab.json"]
    tok = vbpe.VisualTokenizer.from_pretrained(str(exported))
    assert tok.fingerprints["vocab"] == vocab.fingerprint() and tok.fingerprints["quantizer"] == cb.fingerprint
    assert tok.layout == IdLayout(codebook_size=24, num_merges=40)  # the default: Llama-3's, sized to the vocabulary
    assert tok.grid_shape == (8, 8) and tok.image_size == 32 and tok.has_decoder


def test_image_to_ids_to_image(exported):
    tok = vbpe.VisualTokenizer.from_pretrained(str(exported))
    data = photos(3, seed=7)
    ids = tok.encode(data[0])
    assert ids[0] == tok.begin_image_id and ids[-1] == tok.end_image_id
    assert all(tok.layout.code_offset <= i < tok.layout.total_size for i in ids[1:-1])
    assert tok.encode_batch(data) == [tok.encode(d) for d in data]
    assert tok.encode(Image.open(io.BytesIO(data[0]))) == ids  # a lazily opened PIL image reads its bytes
    # exact: through the token layout; the picture is the quantizer's reconstruction of the image
    enc = tok.encode(data[0], return_encoding=True)
    assert enc.input_ids == ids
    codes = tok.quantize(data[0])
    assert np.array_equal(tok.decode_grid(enc), codes)
    picture = tok.decode(enc)
    assert picture.size == (32, 32) and picture.mode == "RGB"
    assert np.array_equal(np.asarray(picture), np.asarray(tok.decode_codes(codes)))
    # from ids alone: a picture of the right size (the layout is inferred; see docs/api.md)
    assert tok.decode(ids).size == (32, 32)
    assert [im.size for im in tok.decode_batch([ids, enc])] == [(32, 32), (32, 32)]


def test_bad_images_are_one_clear_error(exported):
    from vbpe.images import BadImage

    tok = vbpe.VisualTokenizer.from_pretrained(str(exported))
    with pytest.raises(BadImage, match="corrupt image"):
        tok.encode(b"not an image")
    with pytest.raises(BadImage, match="image 1: image too small"):
        tok.encode_batch([photos(1)[0], np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(BadImage, match="not an image"):
        tok.encode(42)
    with pytest.raises(BadImage, match="dtype"):
        tok.encode(np.zeros((40, 40, 3), np.float32))


def test_save_pretrained_round_trips(exported, tmp_path):
    tok = vbpe.VisualTokenizer.from_pretrained(str(exported))
    again = vbpe.VisualTokenizer.from_pretrained(tok.save_pretrained(str(tmp_path / "copy")))
    data = photos(4, seed=3)
    assert again.encode_batch(data) == tok.encode_batch(data) and again.fingerprints == tok.fingerprints


def _copy(exported, tmp_path):
    d = tmp_path / "t"
    shutil.copytree(exported, d)
    return d


def test_edited_vocabulary_is_refused(exported, tmp_path):
    d = _copy(exported, tmp_path)
    v = json.loads((d / "vocab.json").read_text())
    v["merges"][3]["offset"] = [5, -5]
    (d / "vocab.json").write_text(json.dumps(v))
    with pytest.raises(InputError, match="fingerprint"):
        vbpe.VisualTokenizer.from_pretrained(str(d))
    # re-stamped so the vocabulary file itself is consistent: the manifest still catches it
    vocab = Vocabulary.from_json(v, verify=False)
    vocab.save(str(d / "vocab.json"))
    with pytest.raises(InputError, match="vocabulary fingerprint .* manifest"):
        vbpe.VisualTokenizer.from_pretrained(str(d))


def test_edited_weights_and_swapped_parts_are_refused(exported, tmp_path, sources):
    from safetensors.numpy import load_file, save_file

    d = _copy(exported, tmp_path)
    w = load_file(str(d / "quantizer.safetensors"))
    w["centroids"][0, 0] += 0.5
    save_file(w, str(d / "quantizer.safetensors"))
    with pytest.raises(InputError, match="quantizer fingerprint"):
        vbpe.VisualTokenizer.from_pretrained(str(d))

    d = _copy(exported, tmp_path / "b")
    w = load_file(str(d / "decoder.safetensors"))
    w["centroids"] = w["centroids"][::-1].copy()
    save_file(w, str(d / "decoder.safetensors"))
    with pytest.raises(InputError, match="decoder fingerprint"):
        vbpe.VisualTokenizer.from_pretrained(str(d))

    d = _copy(exported, tmp_path / "c")
    (d / "layout.yaml").write_text(IdLayout(text_vocab_size=1000, codebook_size=24, num_merges=40).to_yaml())
    with pytest.raises(InputError, match="layout fingerprint"):
        vbpe.VisualTokenizer.from_pretrained(str(d))

    d = _copy(exported, tmp_path / "d")
    os.remove(d / "vbpe_tokenizer.json")
    with pytest.raises(InputError, match="not a vbpe tokenizer directory"):
        vbpe.VisualTokenizer.from_pretrained(str(d))

    d = _copy(exported, tmp_path / "e")
    (d / "quantizer.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="not a readable safetensors"):
        vbpe.VisualTokenizer.from_pretrained(str(d))


def test_export_refusals_are_one_line(sources, tmp_path, capsys):
    root, vocab, cb = sources
    other = Vocabulary.from_json(vocab.to_json())
    other.quantizer_fingerprint = "0123456789abcdef"
    other.save(str(tmp_path / "other.json"))
    assert main(["export", "--vocab", str(tmp_path / "other.json"), "--quantizer", str(root / "kmeans.yaml"),
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learned on codes of quantizer 0123456789abcdef" in err[0]
    (tmp_path / "small.yaml").write_text(IdLayout(codebook_size=24, num_merges=10).to_yaml())
    assert export(root, tmp_path / "y", "--layout", str(tmp_path / "small.yaml")) == 2
    assert "num_merges 10 < the vocabulary's 40 merges" in capsys.readouterr().err
    (tmp_path / "q.yaml").write_text("kind: kmeans\ncodebook: nowhere.safetensors\n")
    assert main(["export", "--vocab", str(root / "vocab.json"), "--quantizer", str(tmp_path / "q.yaml"),
                 "--out", str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_s3_export_and_load(sources, tmp_path):
    from tests.helpers.s3 import moto_s3

    root, _, _ = sources
    with moto_s3("tok") as endpoint:
        assert export(root, "s3://tok/exports/t1", "--endpoint-url", endpoint) == 0
        tok = vbpe.VisualTokenizer.from_pretrained("s3://tok/exports/t1", endpoint_url=endpoint)
        local = vbpe.VisualTokenizer.from_files(str(root / "vocab.json"), str(root / "kmeans.yaml"))
        data = photos(3, seed=5)
        assert tok.encode_batch(data) == local.encode_batch(data)
        tok.save_pretrained("s3://tok/exports/t2", endpoint_url=endpoint)
        assert vbpe.VisualTokenizer.from_pretrained("s3://tok/exports/t2", endpoint_url=endpoint).fingerprints == tok.fingerprints


def test_taming_tokenizer_decodes_to_the_models_reconstruction(tmp_path):
    import torch

    from schemas.quantize import TamingQuantizerConfig
    from vbpe.export import quantizer_config

    cfg, ckpt, model = models.save_taming(str(tmp_path))
    q = TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=ckpt)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    from pipeline.quantize.registry import build_encoder, prepare

    spec, tensors = prepare(q)
    codes = build_encoder(spec, tensors).encode(images)
    merges, _, alpha = learn_arrays(list(codes), 256, 5, alpha=0.0, min_frequency=1)
    Vocabulary(256, 1.0, 1, alpha, merges=merges, quantizer_fingerprint=spec.fingerprint).save(str(tmp_path / "v.json"))
    tok = vbpe.VisualTokenizer.from_files(str(tmp_path / "v.json"), quantizer_config(q.model_dump()))
    enc = tok.encode(images[0], return_encoding=True)
    x = torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        ref = ((model(x)[0] + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()[0]
    assert np.abs(np.asarray(tok.decode(enc)).astype(int) - ref.astype(int)).max() <= 1


def test_chameleon_tokenizer_without_decoder_still_encodes(tmp_path):
    from schemas.quantize import ChameleonQuantizerConfig

    models.save_chameleon(str(tmp_path / "vq"))
    q = ChameleonQuantizerConfig(kind="chameleon", path=str(tmp_path / "vq"))
    from pipeline.quantize.registry import prepare

    spec, _ = prepare(q)
    Vocabulary(256, 1.0, 2, 0.0, quantizer_fingerprint=spec.fingerprint).save(str(tmp_path / "v.json"))
    tok = vbpe.VisualTokenizer.from_files(str(tmp_path / "v.json"), q)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    enc = tok.encode(img, return_encoding=True)
    assert not tok.has_decoder and len(enc.input_ids) == 66
    with pytest.raises(InputError, match="no decoder"):
        tok.decode(enc)
    out = tok.save_pretrained(str(tmp_path / "t"))
    assert not os.path.exists(os.path.join(out, "decoder.safetensors"))
    assert vbpe.VisualTokenizer.from_pretrained(out).encode(img) == enc.input_ids
