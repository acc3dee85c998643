"""The ablation's language model before any image: built locally, then warmed up on text alone.

A real run starts from a pretrained LLM that already speaks the language. The CPU preset has none
(nothing is downloaded), so it builds a small Llama with a word-level tokenizer over the corpus'
words and trains it briefly on the training conversations with the images removed: it learns the
answer formats and what can be guessed without looking (e.g. "yes" is a likely answer to a yes/no
question). Both arms of the ablation start from this same model; what they gain over it comes from
the image tokens.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time

import numpy as np

from pipeline import storage
from pipeline.train.records import Record
from schemas.evaluate import TinyLLM

log = logging.getLogger(__name__)


def text_sequences(tokenizer, records: list[Record]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, labels) of each record's text: BOS + chat-formatted turns + EOS, loss on the answers only."""
    from pipeline.train import chat

    out = []
    for rec in records:
        ids, answer, _ = chat.encode(tokenizer, rec.turns)
        x = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        y = [-100, *[t if a else -100 for t, a in zip(ids, answer)], tokenizer.eos_token_id]
        out.append((np.asarray(x, np.int64), np.asarray(y, np.int64)))
    return out


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def warm_up(model, seqs: list[tuple[np.ndarray, np.ndarray]], spec: TinyLLM, pad_id: int, seed: int) -> list[float]:
    """A few hundred AdamW steps on random batches (seeded); returns the loss of every step."""
    import torch

    rng = np.random.default_rng([seed, 17])
    opt = torch.optim.AdamW(model.parameters(), lr=spec.warmup_lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(spec.warmup_steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, spec.warmup_steps, spec.warmup_lr, max(1, spec.warmup_steps // 20))
        batch = [seqs[i] for i in rng.integers(len(seqs), size=spec.warmup_batch)]
        width = max(len(x) for x, _ in batch)
        x = torch.full((len(batch), width), pad_id, dtype=torch.long)
        y = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (a, b) in enumerate(batch):
            x[i, : len(a)], y[i, : len(b)], mask[i, : len(a)] = torch.from_numpy(a), torch.from_numpy(b), 1
        loss = model(input_ids=x, attention_mask=mask, labels=y, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            log.info("text warm-up step %d/%d loss %.4f", step + 1, spec.warmup_steps, losses[-1])
    model.eval()
    return losses


def build_tiny_llm(out: str, words: list[str], spec: TinyLLM, records: list[Record], seed: int, options=None) -> dict:
    """Write a tokenizer + Llama (+ vbpe_llm.json) to `out`, warmed up on `records`' text; reused if present."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.train.tiny import build_tokenizer

    info_path = storage.join(out, "vbpe_llm.json")
    wanted = {"spec": spec.model_dump(mode="json"), "seed": seed, "words": list(words), "records": len(records)}
    if storage.exists(info_path, options):
        info = json.loads(storage.read_text(info_path, options))
        if {k: info.get(k) for k in wanted} == wanted:
            return info
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="vbpe-llm-") as tmp:
        tokenizer = build_tokenizer(tmp, words=words)
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size or 2 * spec.hidden_size,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
            max_position_embeddings=spec.max_positions, tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        model = LlamaForCausalLM(cfg)
        pad = tokenizer.unk_token_id  # the text model has no pad; masked positions never reach the loss
        losses = warm_up(model, text_sequences(tokenizer, records), spec, pad, seed) if spec.warmup_steps else []
        model.save_pretrained(tmp)
        info = {
            **wanted,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "text_vocab_size": len(tokenizer),
            "warmup_first_loss": losses[0] if losses else None,
            "warmup_final_loss": float(np.mean(losses[-20:])) if losses else None,
            "seconds": round(time.time() - t0, 2),
        }
        with open(os.path.join(tmp, "vbpe_llm.json"), "w") as f:
            json.dump(info, f, indent=1)
        storage.put_dir(tmp, out, options)
    log.info("tiny LLM (%d parameters, warm-up loss %s -> %s) in %s", info["parameters"], info["warmup_first_loss"],
             info["warmup_final_loss"], out)
    return info
