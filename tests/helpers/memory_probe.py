"""Peak memory of real training steps of a small Llama on CPU, in a fresh process (`python -m tests.helpers.memory_probe`).

Prints JSON: the config it trained and the peak resident memory above the baseline after imports,
for checking `pipeline.train.memory` against a measurement.
"""
from __future__ import annotations

import json
import sys


def _reset_peak() -> None:
    """Forget the peak resident memory so far (imports): Linux's VmHWM restarts from the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak() -> int:
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def main(stage: str, checkpointing: bool) -> dict:
    import psutil
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.train.freeze import apply_stage
    from pipeline.train.loss import token_loss_sum

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = dict(vocab_size=6000, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    batch, seq, old = 4, 384, 5000
    baseline = psutil.Process().memory_info().rss
    _reset_peak()
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.config.use_cache = False
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = apply_stage(model, stage, old).trainable()
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-3)
    for step in range(3):
        ids = torch.randint(0, config["vocab_size"], (batch, seq))
        logits = model(input_ids=ids, use_cache=False).logits
        loss = token_loss_sum(logits, ids)
        loss.backward()
        del logits, loss
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = _peak()
    return {"config": config, "batch": batch, "seq": seq, "old_vocab": old, "peak_bytes": peak - baseline}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2] == "1")))
