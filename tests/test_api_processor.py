"""`vbpe.VisualProcessor` with the text tokenizer `vbpe train init` extended: text + images -> ids -> back."""
from __future__ import annotations

import numpy as np
import pytest

import vbpe
from pipeline.bpe.learner import learn_arrays
from pipeline.bpe.vocab import Vocabulary
from pipeline.train import tiny
from pipeline.train.init import init_base_model
from schemas.base import InputError
from schemas.layout import IdLayout
from schemas.train import InitConfig
from tests.helpers.tokenizers import tokenizer_parts

V, M = 12, 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """What `vbpe train init` writes for a tiny Llama, and the visual tokenizer of the same layout."""
    root = tmp_path_factory.mktemp("proc")
    text = tiny.build_tokenizer(str(root / "text"))
    tiny.build_model(str(root / "src"), len(text))
    rng = np.random.default_rng(0)
    merges, _, _ = learn_arrays([rng.integers(0, V, (8, 8)) for _ in range(12)], V, M, alpha=1.0)
    vocab = Vocabulary(V, 1.0, 2, 1.0, merges=merges)
    layout = IdLayout(text_vocab_size=len(text), codebook_size=V, num_merges=M)
    (root / "layout.yaml").write_text(layout.to_yaml())
    init_base_model(InitConfig(source_model=str(root / "src"), tokenizer=str(root / "text"),
                               layout=str(root / "layout.yaml")), str(root / "base"))
    visual = vbpe.VisualTokenizer(tokenizer_parts(vocab, layout=layout))
    return root, visual


def images(n, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, 40, 48, 3), dtype=np.uint8))


def test_placeholders_become_image_ids(model_dir):
    root, visual = model_dir
    proc = vbpe.VisualProcessor.from_pretrained(str(root / "base"), visual_tokenizer=visual)
    ims = images(3)
    out = proc(text=["<image> what color is it ?", "a cat <image> and a dog <image> ."], images=ims)
    text = proc.tokenizer(["<image> what color is it ?", "a cat <image> and a dog <image> ."])["input_ids"]
    image_id = visual.layout.special_id("<image>")
    want = []
    queue = [visual.encode(im) for im in ims]
    bos = proc.tokenizer.bos_token_id
    for row in text:
        r = [] if row[:1] == [bos] else [bos]  # the tiny tokenizer adds no BOS itself; training sequences have one
        for x in row:
            r.extend(queue.pop(0) if x == image_id else [x])
        want.append(r)
    assert out["input_ids"] == want
    assert out["attention_mask"] == [[1] * len(r) for r in want]
    assert want[0][0] == proc.tokenizer.bos_token_id and want[0][1] == visual.begin_image_id
    # nested images per text give the same result
    assert proc(text=["<image> what color is it ?", "a cat <image> and a dog <image> ."],
                images=[ims[:1], ims[1:]])["input_ids"] == want


def test_padding_tensors_and_errors(model_dir):
    import torch

    root, visual = model_dir
    proc = vbpe.VisualProcessor.from_pretrained(str(root / "base"), visual_tokenizer=visual)
    out = proc(text=["<image> a cat", "a dog"], images=images(1), padding=True, return_tensors="pt")
    assert isinstance(out["input_ids"], torch.Tensor) and out["input_ids"].shape == out["attention_mask"].shape
    assert out["input_ids"][1, -1].item() == visual.layout.pad_id and out["attention_mask"][1, -1].item() == 0
    assert out["attention_mask"][0].all()
    with pytest.raises(ValueError, match="2 <image> placeholders in the texts but 1 images"):
        proc(text="<image> <image>", images=images(1))
    with pytest.raises(ValueError, match="padding=True"):
        proc(text=["<image> a", "b"], images=images(1), return_tensors="pt")
    only = proc(images=images(2))
    assert only["input_ids"] == [[proc.tokenizer.bos_token_id] + visual.encode(im) for im in images(2)]
    assert proc(images=images(1), add_special_tokens=False)["input_ids"] == [visual.encode(images(1)[0])]


def test_batch_decode_renders_image_spans(model_dir):
    root, visual = model_dir
    proc = vbpe.VisualProcessor.from_pretrained(str(root / "base"), visual_tokenizer=visual)
    out = proc(text=["a red cat <image> is it ?", "it is a dog"], images=images(1), padding=True)
    decoded = proc.batch_decode(out["input_ids"])
    assert decoded[0].text == "a red cat <image> is it?"  # the text tokenizer's own decode (it joins "?")
    assert len(decoded[0].images) == 1 and decoded[0].images[0].size == (visual.image_size, visual.image_size)
    assert decoded[1].text == "it is a dog" and decoded[1].images == []


def test_save_and_load_without_arguments(model_dir, tmp_path):
    root, visual = model_dir
    proc = vbpe.VisualProcessor.from_pretrained(str(root / "base"), visual_tokenizer=visual)
    again = vbpe.VisualProcessor.from_pretrained(proc.save_pretrained(str(tmp_path / "p")))
    sample = dict(text=["<image> what animal is it ?"], images=images(1, seed=4))
    assert again(**sample)["input_ids"] == proc(**sample)["input_ids"]
    with pytest.raises(InputError, match="no visual_tokenizer/"):
        vbpe.VisualProcessor.from_pretrained(str(root / "base"))


def test_other_layout_is_refused(model_dir):
    root, visual = model_dir
    lay = visual.layout
    other = vbpe.VisualTokenizer(tokenizer_parts(visual.vocab, layout=lay.model_copy(update={"num_merges": M + 1})))
    with pytest.raises(InputError, match="ids"):
        vbpe.VisualProcessor.from_pretrained(str(root / "base"), visual_tokenizer=other)
    with pytest.raises(InputError, match="text tokenizer has"):
        from transformers import AutoTokenizer

        vbpe.VisualProcessor(AutoTokenizer.from_pretrained(str(root / "text")), visual)
