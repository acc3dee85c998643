"""`vbpe train init`: a local HF causal LM + tokenizer -> the base model of stage 1, with the id layout.

Vocabulary rule: `layout.text_vocab_size` must equal the model's embedding rows (the ids the model
already knows). The tokenizer gets the layout's tokens at exactly the layout's ids: if it is shorter
than the model's vocabulary (models that pad their embedding matrix), placeholder tokens
`<|vbpe_reserved_i|>` fill the gap first; then the special tokens by name, then one token per code
`<|vq_i|>` and per merge `<|bpe_k|>`, all as special tokens. Any id that does not land where the
layout says (e.g. a name the tokenizer already had) is an error.

New-row rules (input embeddings and, when untied, the output head, each from its own old rows):
  he:     N(0, 2 / hidden_size), what the authors used   (default)
  mean:   per-dimension mean of the old rows + noise * per-dimension std * N(0, 1)
  normal: N(0, initializer_range^2), the model's own init
"""
from __future__ import annotations

import json
import logging
import os
import tempfile

import torch

from pipeline import storage
from pipeline.configargs import load_config
from pipeline.train.chat import DEFAULT_CHAT_TEMPLATE
from pipeline.storage import local_dir, put_dir as publish_dir
from schemas.base import ConfigError, StorageOptions
from schemas.layout import IdLayout
from schemas.train import InitConfig

log = logging.getLogger(__name__)
RESERVED = "<|vbpe_reserved_{}|>"


def layout_token_names(layout: IdLayout) -> list[str]:
    """Names of the ids text_vocab_size .. total_size - 1, in id order."""
    return (
        list(layout.special_tokens)
        + [f"<|vq_{i}|>" for i in range(layout.codebook_size)]
        + [f"<|bpe_{k}|>" for k in range(layout.num_merges)]
    )


def extend_tokenizer(tokenizer, layout: IdLayout) -> int:
    """Give the tokenizer the layout's ids; returns the number of placeholder tokens added."""
    n = len(tokenizer)
    if n > layout.text_vocab_size:
        raise ConfigError(f"the tokenizer has {n} tokens, more than the layout's text_vocab_size {layout.text_vocab_size}")
    fillers = [RESERVED.format(i) for i in range(layout.text_vocab_size - n)]
    names = layout_token_names(layout)
    tokenizer.add_tokens(fillers + names, special_tokens=True)
    got = tokenizer.convert_tokens_to_ids(names)
    want = list(range(layout.text_vocab_size, layout.total_size))
    if got != want or len(tokenizer) != layout.total_size:
        bad = next((nm for nm, g, w in zip(names, got, want) if g != w), None)
        raise ConfigError(
            f"tokenizer ids disagree with the layout (first: {bad!r}); does the tokenizer already contain the layout's token names?"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = layout.pad
    return len(fillers)


def init_rows(weight: torch.Tensor, n_old: int, rule: str, noise: float, generator: torch.Generator, initializer_range: float) -> None:
    old = weight[:n_old].float()
    shape = (weight.shape[0] - n_old, weight.shape[1])
    z = torch.randn(shape, generator=generator)
    if rule == "mean":
        new = old.mean(0) + noise * old.std(0) * z
    elif rule == "he":
        new = z * (2.0 / weight.shape[1]) ** 0.5
    elif rule == "normal":
        new = z * initializer_range
    else:
        raise ConfigError(f"unknown init rule {rule!r}")
    with torch.no_grad():
        weight[n_old:] = new.to(weight.dtype)


def init_base_model(icfg: InitConfig, out: str, options: StorageOptions | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    layout = load_config(IdLayout, icfg.layout, options)
    with local_dir(icfg.source_model, options) as src, local_dir(icfg.tokenizer or icfg.source_model, options) as tok_src:
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    rows = model.get_input_embeddings().weight.shape[0]
    if layout.text_vocab_size != rows:
        raise ConfigError(
            f"layout.text_vocab_size is {layout.text_vocab_size} but the model has {rows} embedding rows; "
            f"tokenize the corpus with text_vocab_size={rows} (the ids the model already has)"
        )
    fillers = extend_tokenizer(tokenizer, layout)
    template = "config" if icfg.chat_template else ("tokenizer" if tokenizer.chat_template else "default")
    if template != "tokenizer":
        tokenizer.chat_template = icfg.chat_template or DEFAULT_CHAT_TEMPLATE

    model.resize_token_embeddings(layout.total_size, mean_resizing=False)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    text_config = model.config.get_text_config()
    init_range = float(getattr(text_config, "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(icfg.seed)
    init_rows(emb.weight.data, layout.text_vocab_size, icfg.rule, icfg.noise, gen, init_range)
    if head is not None and not tied:
        init_rows(head.weight.data, layout.text_vocab_size, icfg.rule, icfg.noise, gen, init_range)
    if head is not None and getattr(head, "bias", None) is not None:
        with torch.no_grad():
            head.bias[layout.text_vocab_size :] = head.bias[: layout.text_vocab_size].mean()

    info = {
        "source_model": icfg.source_model,
        "layout_fingerprint": layout.fingerprint(),
        "text_vocab_size": layout.text_vocab_size,
        "total_size": layout.total_size,
        "new_rows": layout.total_size - layout.text_vocab_size,
        "placeholder_tokens": fillers,
        "tied_embeddings": tied,
        "rule": icfg.rule,
        "noise": icfg.noise,
        "seed": icfg.seed,
        "chat_template": template,
    }
    with tempfile.TemporaryDirectory(prefix="vbpe-init-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "layout.yaml"), "w") as f:
            f.write(layout.to_yaml())
        with open(os.path.join(tmp, "vbpe_init.json"), "w") as f:
            json.dump(info, f, indent=1)
        publish_dir(tmp, out, options)
    log.info("base model with %d new rows (%s init) written to %s", info["new_rows"], icfg.rule, out)
    return info


def read_layout(model_dir: str, options: StorageOptions | None = None) -> IdLayout:
    path = storage.join(model_dir, "layout.yaml")
    if not storage.exists(path, options):
        raise ConfigError(f"{model_dir} has no layout.yaml: run `vbpe train init` first")
    return load_config(IdLayout, path, options)
