"""A complete miniature of the training inputs, built on the spot: a word-level tokenizer with a chat
template, a Llama with 64-wide hidden states, a tokenized corpus with its layout, and LLaVA-style
records in all four categories. Used by the tests, the benchmark and demos; nothing is downloaded.

Each image's caption is a function of its key, so the records are learnable (memorisable).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.layout import IdLayout
from schemas.tokens import INPUT_IDS_FIELD, LAYOUT_FINGERPRINT_KEY, TOKENS_SCHEMA

SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
COLORS = ["red", "blue", "green", "yellow"]
ANIMALS = ["cat", "dog", "bird", "fish"]
WORDS = COLORS + ANIMALS + "a an is it what this color which animal describe the image yes no ? . and".split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_tokenizer(path: str, chat_template: str | None = CHAT_TEMPLATE, words: list[str] | None = None):
    """`words`: the vocabulary (default `WORDS`); e.g. the scenes corpus passes its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + list(WORDS if words is None else words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.add_tokens(SPECIALS[3:], special_tokens=True)
    if chat_template:
        hf.chat_template = chat_template
    hf.save_pretrained(path)
    return hf


def build_model(path: str, vocab_size: int, tied: bool = False, layers: int = 4, hidden: int = 64, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    return model


def caption(key: str) -> tuple[str, str]:
    h = int(key.rsplit("_", 1)[-1])
    return COLORS[h % len(COLORS)], ANIMALS[(h // len(COLORS)) % len(ANIMALS)]


def write_corpus(path: str, layout: IdLayout, n_images: int, min_len: int = 8, max_len: int = 16, seed: int = 0) -> list[str]:
    """One Parquet file as the tokenize stage writes it (random tokens), layout.yaml beside it."""
    rng = np.random.default_rng(seed)
    keys, tokens = [], []
    vocab = layout.codebook_size + layout.num_merges
    for i in range(n_images):
        keys.append(f"img_{i:04d}")
        tokens.append(rng.integers(0, vocab, rng.integers(min_len, max_len + 1)).astype(np.int32))
    schema = TOKENS_SCHEMA.append(INPUT_IDS_FIELD).with_metadata({LAYOUT_FINGERPRINT_KEY: layout.fingerprint().encode()})
    table = pa.table(
        {
            "key": keys,
            "height": pa.array([4] * n_images, pa.int32()),
            "width": pa.array([4] * n_images, pa.int32()),
            "tokens": pa.array([t.tolist() for t in tokens], pa.list_(pa.int32())),
            "anchors": pa.array([list(range(len(t))) for t in tokens], pa.list_(pa.int32())),
            "n_tokens": pa.array([len(t) for t in tokens], pa.int32()),
            "source": ["tiny"] * n_images,
            "input_ids": pa.array(
                [[layout.begin_image_id, *(layout.code_offset + t).tolist(), layout.end_image_id] for t in tokens],
                pa.list_(pa.int32()),
            ),
        },
        schema=schema,
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)
    with open(os.path.join(os.path.dirname(path), "layout.yaml"), "w") as f:
        f.write(layout.to_yaml())
    return keys


def conversation(key: str, category: str) -> list[dict]:
    color, animal = caption(key)
    if category == "foundation":
        turns = [("describe the image .", f"a {color} {animal} .")]
    elif category == "perception":
        turns = [("what color is it ?", f"{color} .")]
    elif category == "reasoning":
        turns = [(f"is it a {ANIMALS[0]} ?", "yes ." if animal == ANIMALS[0] else "no .")]
    else:
        turns = [("what animal is it ?", f"a {animal} ."), ("and which color ?", f"{color} .")]
    out = []
    for i, (q, a) in enumerate(turns):
        out.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + q})
        out.append({"from": "gpt", "value": a})
    return out


def write_conversations(path: str, keys: list[str], categories: list[str]) -> None:
    """JSONL records: every key once per category in `categories`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for cat in categories:
            for key in keys:
                f.write(json.dumps({"id": f"{cat}-{key}", "image": f"images/{key}.jpg", "category": cat, "conversations": conversation(key, cat)}) + "\n")
