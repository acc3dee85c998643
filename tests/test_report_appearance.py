"""The atlas draws tokens with their codes' decoded appearance, from a tokenizer directory's decoder."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from pipeline.report.api import run
from pipeline.report.appearance import code_patches
from pipeline.report.atlas import draw_shape
from pipeline.report.cards import Shape
from schemas.base import InputError
from schemas.report import ReportConfig
from tests.helpers.tokenizers import tokenizer_parts
from tests.helpers.report import grids_from_array, learn_vocab, write_corpus
from vbpe import VisualTokenizer, directory

V = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("appearance")
    rng = np.random.default_rng(0)
    codes = rng.integers(0, V, (40, 8, 8))
    codes[:, :4, :4] = 3  # flat regions, so both kinds of tokens are learned
    grids = grids_from_array(codes)
    vocab = learn_vocab(grids.codes, grids.heights, grids.widths, V, 30, alpha=1.0)
    vocab.save(str(root / "vocab.json"))
    parts = tokenizer_parts(vocab)
    directory.save(parts, str(root / "tokenizer"))
    write_corpus(str(root / "grids.parquet"), grids, V)
    return root, parts


def test_kmeans_code_patches_are_its_centroids(setup):
    _, parts = setup
    tok = VisualTokenizer(parts)
    patches = code_patches(tok, [0, 3, 7])
    want = np.clip(np.rint(parts.tensors["centroids"] * 255), 0, 255).astype(np.uint8).reshape(V, 4, 4, 3)
    assert sorted(patches) == [0, 3, 7] and all(np.array_equal(patches[c], want[c]) for c in patches)


def test_taming_code_patch_is_the_centre_of_a_decoded_grid_of_it(tmp_path):
    from pipeline.quantize.decode import build_decoder, prepare_decoder
    from pipeline.quantize.registry import prepare
    from pipeline.bpe.vocab import Vocabulary
    from schemas.quantize import TamingQuantizerConfig
    from tests.helpers import models

    cfg, ckpt, _ = models.save_taming(str(tmp_path))
    q = TamingQuantizerConfig(kind="taming", config=cfg, checkpoint=ckpt)
    spec, tensors = prepare(q)
    dspec, dtensors = prepare_decoder(q, spec, tensors)
    tok = VisualTokenizer(directory.Parts(Vocabulary(256, 1.0, 2, 0.0), directory.default_layout(Vocabulary(256, 1.0, 2, 0.0)),
                                          spec, tensors, dspec, dtensors))
    patch = code_patches(tok, [17])[17]
    full = build_decoder(dspec, dtensors).decode(np.full((1, 3, 3), 17))[0]
    assert patch.shape == (8, 8, 3) and np.array_equal(patch, full[8:16, 8:16])


def test_draw_shape_fills_cells_with_patches():
    patches = {1: np.full((4, 4, 3), 200, np.uint8), 2: np.zeros((4, 4, 3), np.uint8)}
    patches[2][:, :, 0] = 255
    im = np.asarray(draw_shape(Shape([(0, 0), (0, 1)], [1, 2], 1.0), 128, patches))
    px = min(44, (128 - 8) // 2)  # two columns, one row (atlas.draw_shape caps cells at 44 px)
    ox, oy = (128 - 2 * px) // 2, (128 - px) // 2
    inner = lambda x, y: im[y + px // 2 + 2: y + px - 2, x + 2: x + px - 2]  # clear of outline and anchor dot
    assert (inner(ox, oy) == 200).all()
    assert (inner(ox + px, oy)[..., 0] == 255).all() and (inner(ox + px, oy)[..., 1:] == 0).all()


def test_report_with_a_tokenizer_draws_decoded_cells(setup, tmp_path):
    root, _ = setup
    base = dict(vocab=str(root / "vocab.json"), grids=[str(root / "grids.parquet")], holdout_fraction=1.0,
                atlas_tokens=8)
    plain = run(ReportConfig(**base, out=str(tmp_path / "plain")))
    decoded = run(ReportConfig(**base, tokenizer=str(root / "tokenizer"), out=str(tmp_path / "decoded")))
    assert plain["atlas"]["appearance"].startswith("one colour per code")
    assert decoded["atlas"]["appearance"] == "decoded by the kmeans quantizer's decoder"
    assert plain["atlas"]["tokens"] == decoded["atlas"]["tokens"]
    a = np.asarray(Image.open(os.path.join(tmp_path / "plain", "atlas.png")))
    b = np.asarray(Image.open(os.path.join(tmp_path / "decoded", "atlas.png")))
    assert a.shape == b.shape and (a != b).any()
    kinds = [t["kind"] for t in decoded["atlas"]["tokens"]]
    assert "flat" in kinds and set(kinds) - {"flat"}  # both kinds are shown
    assert "flat" in open(os.path.join(tmp_path / "decoded", "report.html")).read()


def test_tokenizer_of_another_quantizer_is_refused(setup, tmp_path):
    root, parts = setup
    vocab = parts.vocab
    vocab.quantizer_fingerprint = "0123456789abcdef"
    vocab.save(str(tmp_path / "v.json"))
    with pytest.raises(InputError, match="quantizer"):
        run(ReportConfig(vocab=str(tmp_path / "v.json"), grids=[str(root / "grids.parquet")], holdout_fraction=1.0,
                         tokenizer=str(root / "tokenizer"), out=str(tmp_path / "r")))
