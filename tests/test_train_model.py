"""Vocabulary extension (`vbpe train init`), per-stage freezing, and checkpoint state, without Ray."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.configargs import load_config
from pipeline.train import state as ckpt
from pipeline.train import tiny
from pipeline.train.freeze import apply_stage, decoder_layers, layers_to_unfreeze
from pipeline.train.init import init_base_model
from schemas.base import ConfigError
from schemas.layout import IdLayout
from schemas.train import InitConfig


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    tok = tiny.build_tokenizer(str(root / "tok"))
    layout = IdLayout(text_vocab_size=len(tok), codebook_size=16, num_merges=8)
    (root / "layout.yaml").write_text(layout.to_yaml())
    for tied in (False, True):
        tiny.build_model(str(root / f"src-{tied}"), len(tok), tied=tied)
    return root, tok, layout


def load(path, tokenizer=True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(path)) if tokenizer else None


@pytest.mark.parametrize("tied", [False, True])
def test_init_extends_vocab_by_layout(sources, tmp_path, tied):
    root, tok, layout = sources
    info = init_base_model(InitConfig(source_model=str(root / f"src-{tied}"), tokenizer=str(root / "tok"), layout=str(root / "layout.yaml"), rule="mean"), str(tmp_path / "base"))
    model, tok2 = load(tmp_path / "base")
    src, _ = load(root / f"src-{tied}", tokenizer=False)
    n = layout.text_vocab_size
    assert info["tied_embeddings"] is tied and info["new_rows"] == layout.total_size - n
    assert len(tok2) == layout.total_size == model.get_input_embeddings().weight.shape[0] == model.config.vocab_size
    assert tok2.convert_tokens_to_ids(["<boi>", "<eoi>", "<pad>"]) == [layout.begin_image_id, layout.end_image_id, layout.pad_id]
    assert tok2.convert_tokens_to_ids("<|vq_0|>") == layout.code_offset and tok2.convert_tokens_to_ids("<|bpe_7|>") == layout.total_size - 1
    assert tok2.convert_ids_to_tokens(layout.code_offset + 16) == "<|bpe_0|>"
    assert tok2.chat_template == tok.chat_template and tok2.pad_token == "<pad>"
    for mat in ("get_input_embeddings", "get_output_embeddings"):
        old, new = getattr(src, mat)().weight, getattr(model, mat)().weight
        assert torch.equal(new[:n], old)
        mean, std = old.mean(0), old.std(0)
        # rule "mean": the old rows' per-dimension mean plus noise 0.1 * their std
        assert torch.allclose(new[n:].mean(0), mean, atol=0.1 * std.max().item())
        assert 0.05 < ((new[n:] - mean) / std).std().item() < 0.2
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) is tied
    assert load_config(IdLayout, tmp_path / "base" / "layout.yaml") == layout
    assert json.loads((tmp_path / "base" / "vbpe_init.json").read_text())["layout_fingerprint"] == layout.fingerprint()


def test_init_he_rule_by_default_and_placeholders(sources, tmp_path):
    """The authors' rule (He: N(0, 2 / hidden)) is the default; new rows are not near-copies of each other."""
    root, tok, _ = sources
    tiny.build_model(str(tmp_path / "src"), len(tok) + 3, hidden=128)  # an embedding padded beyond the tokenizer
    layout = IdLayout(text_vocab_size=len(tok) + 3, codebook_size=64, num_merges=64)
    (tmp_path / "layout.yaml").write_text(layout.to_yaml())
    cfg = InitConfig(source_model=str(tmp_path / "src"), tokenizer=str(root / "tok"), layout=str(tmp_path / "layout.yaml"), seed=3)
    assert cfg.rule == "he"
    info = init_base_model(cfg, str(tmp_path / "base"))
    assert info["rule"] == "he"
    model, tok2 = load(tmp_path / "base")
    assert info["placeholder_tokens"] == 3 and tok2.convert_ids_to_tokens(len(tok)) == "<|vbpe_reserved_0|>"
    assert tok2.convert_tokens_to_ids("<pad>") == layout.pad_id
    new = model.get_input_embeddings().weight[layout.text_vocab_size :]
    assert new.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.1) and abs(new.mean().item()) < 0.02
    unit = torch.nn.functional.normalize(new, dim=1)
    cosine = (unit @ unit.T)[~torch.eye(len(new), dtype=torch.bool)]
    assert abs(cosine.mean().item()) < 0.05  # independent directions (the `mean` rule gives ~0.8)


def test_init_refuses_a_layout_that_disagrees_with_the_model(sources, tmp_path):
    root, tok, _ = sources
    bad = IdLayout(text_vocab_size=len(tok) + 1, codebook_size=16, num_merges=8)
    (tmp_path / "layout.yaml").write_text(bad.to_yaml())
    with pytest.raises(ConfigError, match="embedding rows"):
        init_base_model(InitConfig(source_model=str(root / "src-False"), tokenizer=str(root / "tok"), layout=str(tmp_path / "layout.yaml")), str(tmp_path / "b"))
    clash = IdLayout(text_vocab_size=len(tok), special_tokens=["<pad>", "<boi>", "<eoi>", "<|end|>"], codebook_size=4, num_merges=0)
    (tmp_path / "clash.yaml").write_text(clash.to_yaml())
    with pytest.raises(ConfigError, match="already contain"):
        init_base_model(InitConfig(source_model=str(root / "src-False"), tokenizer=str(root / "tok"), layout=str(tmp_path / "clash.yaml")), str(tmp_path / "c"))


@pytest.fixture(scope="module")
def bases(sources, tmp_path_factory):
    root, tok, layout = sources
    out = {}
    for tied in (False, True):
        dest = tmp_path_factory.mktemp(f"base-{tied}")
        init_base_model(InitConfig(source_model=str(root / f"src-{tied}"), tokenizer=str(root / "tok"), layout=str(root / "layout.yaml")), str(dest))
        out[tied] = dest
    return out, layout


def batch(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, layout.text_vocab_size, (4, 6), generator=g)
    image = torch.randint(layout.code_offset, layout.total_size, (4, 10), generator=g)
    ids = torch.cat([text[:, :2], torch.full((4, 1), layout.begin_image_id), image, torch.full((4, 1), layout.end_image_id), text[:, 2:]], 1)
    return ids


def train_steps(model, params, layout, steps=3, weight_decay=0.1):
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-2, weight_decay=weight_decay)
    for s in range(steps):
        ids = batch(layout, s)
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("tied", [False, True])
def test_stage1_changes_only_new_rows_bit_exactly(bases, tied):
    paths, layout = bases
    n = layout.text_vocab_size
    model, _ = load(paths[tied])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref_logits = model(input_ids=batch(layout, 9)).logits
    plan = apply_stage(model, "stage1", n)
    assert torch.allclose(model(input_ids=batch(layout, 9)).logits, ref_logits, atol=1e-6)  # the split is the same function
    names = [nm for nm, _ in plan.trainable()]
    assert names == (["model.embed_tokens.new"] if tied else ["model.embed_tokens.new", "lm_head.new"])
    train_steps(model, plan.trainable(), layout, weight_decay=0.1)
    merged = plan.merge()
    assert (merged.get_output_embeddings().weight is merged.get_input_embeddings().weight) is tied
    after = merged.state_dict()
    assert after.keys() == before.keys()
    for name, old in before.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[name][:n], old[:n]), name
            assert not torch.equal(after[name][n:], old[n:]), name
        else:
            assert torch.equal(after[name], old), name


def test_stage2_also_trains_the_first_quarter_of_layers(bases):
    paths, layout = bases
    n = layout.text_vocab_size
    model, _ = load(paths[False])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = apply_stage(model, "stage2", n, unfreeze_fraction=0.25)
    assert plan.layers_unfrozen == 1 and len(decoder_layers(model)) == 4
    train_steps(model, plan.trainable(), layout)
    after = plan.merge().state_dict()
    for name, old in before.items():
        if name.startswith("model.layers.0."):
            assert not torch.equal(after[name], old), name
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[name][:n], old[:n]) and not torch.equal(after[name][n:], old[n:])
        else:
            assert torch.equal(after[name], old), name


def test_stage3_trains_everything(bases):
    paths, layout = bases
    model, _ = load(paths[False])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = apply_stage(model, "stage3", layout.text_vocab_size)
    assert len(plan.trainable()) == len(list(model.parameters()))
    train_steps(model, plan.trainable(), layout)
    after = plan.merge().state_dict()
    assert all(not torch.equal(after[k], v) for k, v in before.items())


def test_layers_to_unfreeze():
    assert [layers_to_unfreeze(32, f) for f in (0, 0.01, 0.25, 0.5, 1.0)] == [0, 1, 8, 16, 32]
    assert layers_to_unfreeze(2, 0.25) == 1 and layers_to_unfreeze(6, 0.25) == 2


def test_checkpoint_state_resumes_exactly(bases, tmp_path):
    """save after 2 steps + load into a fresh model, then 1 more step == 3 uninterrupted steps."""
    paths, layout = bases

    def fresh():
        model, _ = load(paths[False])
        plan = apply_stage(model, "stage2", layout.text_vocab_size)
        params = plan.trainable()
        return model, plan, params, torch.optim.AdamW([p for _, p in params], lr=1e-2, weight_decay=0.1)

    def step(model, opt, params, s):
        ids = batch(layout, s)
        torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()

    m1, p1, params1, o1 = fresh()
    for s in range(3):
        step(m1, o1, params1, s)
    m2, p2, params2, o2 = fresh()
    for s in range(2):
        step(m2, o2, params2, s)
    ckpt.save(str(tmp_path), params2, o2, {"step": 2}, rank=0)
    m3, p3, params3, o3 = fresh()
    assert ckpt.load(str(tmp_path), params3, o3) == {"step": 2}
    step(m3, o3, params3, 2)
    for (name, a), (_, b) in zip(params1, params3):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="trainable parameters"):
        model, _ = load(paths[False])
        other = apply_stage(model, "stage1", layout.text_vocab_size).trainable()
        ckpt.load(str(tmp_path), other, torch.optim.AdamW([p for _, p in other]))


def test_activation_checkpointing_gives_the_same_gradients(bases):
    paths, layout = bases
    grads = []
    for checkpointing in (False, True):
        model, _ = load(paths[True], tokenizer=False)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        params = apply_stage(model, "stage2", layout.text_vocab_size).trainable()
        ids = batch(layout, 5)
        torch.nn.functional.cross_entropy(model(input_ids=ids, use_cache=False).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        grads.append({n: p.grad.clone() for n, p in params})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


@pytest.mark.parametrize("tied", [False, True])
def test_merged_state_dict_equals_merge(bases, tied):
    """The state-dict merge (used for sharded models) gives exactly what merging the modules gives."""
    from pipeline.train.freeze import merged_state_dict

    paths, layout = bases
    model, _ = load(paths[tied])
    plan = apply_stage(model, "stage2", layout.text_vocab_size)
    train_steps(model, plan.trainable(), layout)
    split = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith(".original.weight") for k in split)
    merged = plan.merge().state_dict()
    got = merged_state_dict(split, layout.text_vocab_size)
    assert got.keys() == merged.keys() and all(torch.equal(got[k], merged[k]) for k in merged)


@pytest.mark.parametrize("stage,checkpointing", [("stage1", False), ("stage1", True), ("stage3", False), ("stage3", True)])
def test_memory_plan_matches_measured_peak_on_cpu(stage, checkpointing):
    """`vbpe train plan`'s model against the peak resident memory of real steps (fp32, CPU), measured in a
    fresh process whose large allocations go straight to the kernel (so freed memory is not kept)."""
    import subprocess
    import sys

    from pipeline.train.memory import ModelShape, estimate

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-m", "tests.helpers.memory_probe", stage, "1" if checkpointing else "0"],
                         capture_output=True, text=True, env=env, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    shape = ModelShape.from_config(probe["config"], old_vocab=probe["old_vocab"])
    plan = estimate(shape, stage, "ddp", 1, probe["batch"], probe["seq"], precision="fp32", checkpointing=checkpointing, on_gpu=False)
    assert abs(plan.peak - probe["peak_bytes"]) <= 0.12 * probe["peak_bytes"], (plan.gib(), probe["peak_bytes"] / 2**30)


def test_memory_plan_of_an_8b_model():
    """Llama-3.1-8B extended to 144,645 ids (numbers from its config.json, no weights): the parameter count,
    and what fits on 80 GB GPUs."""
    from pipeline.train.memory import GIB, ModelShape, estimate, smallest_fit

    cfg = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
    shape = ModelShape.from_config(cfg, vocab=144645, old_vocab=128256)
    assert ModelShape.from_config(cfg).params() == 8_030_261_248  # Llama-3.1-8B's published size
    assert shape.trainable("stage1") == 2 * 16389 * 4096 and shape.trainable("stage3") == shape.params()
    kw = dict(micro_batch=1, seq_len=4096, precision="bf16-mixed")
    assert smallest_fit(shape, "stage3", "ddp", 80 * GIB, **kw) is None  # full fine-tuning does not fit unsharded
    assert smallest_fit(shape, "stage3", "fsdp", 80 * GIB, **kw) == 2
    eight = estimate(shape, "stage3", "fsdp", 8, **kw)
    assert eight.optimizer == pytest.approx(8 * shape.params() / 8, rel=1e-6) and eight.peak < 40 * GIB
