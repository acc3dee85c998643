"""A stage's model trained by two ranks under FSDP in plain processes (gloo, CPU), without Ray Train:
the training loop's own pieces (freeze.apply_stage, parallel.wrap, the loop's optimizer) on random
ids, so the freezing of sharded stages can be checked for tied and untied models in seconds."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace


def train_sharded(rank: int, world: int, port: int, base: str, n_old: int, stages: list[str], out: str, steps: int = 3) -> None:
    """For each stage: load `base`, train `steps` AdamW steps (weight decay 0.1) sharded over `world` ranks,
    write the merged model to `out/<stage>.safetensors` and the optimizer state's size to `out/<stage>.json`."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from pipeline.train import parallel
    from pipeline.train.freeze import apply_stage, merged_state_dict
    from pipeline.train.loop import _optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        settings = SimpleNamespace(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
        for stage in stages:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            model.config.use_cache = False
            model.train()
            plan = apply_stage(model, stage, n_old)
            parallel.wrap(model, "fsdp", world, torch.device("cpu"), "fp32")
            params = plan.trainable()
            optimizer = _optimizer(params, settings)
            vocab = model.config.vocab_size
            for s in range(steps):
                ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(100 * s + rank))
                logits = model(input_ids=ids, use_cache=False).logits
                torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            held = torch.tensor([sum(parallel.local(st[k]).numel() for st in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq"))])
            dist.all_reduce(held)
            trainable = sum(p.numel() for _, p in params)  # the unsharded size (DTensor.numel is the global one)
            full = parallel.full_state_dict(model, "fsdp", rank)
            if rank == 0:
                save_file({k: v.clone() for k, v in merged_state_dict(full, n_old).items()}, os.path.join(out, f"{stage}.safetensors"))
                with open(os.path.join(out, f"{stage}.json"), "w") as f:
                    json.dump({"optimizer_elements": int(held.item()), "trainable_elements": int(trainable),
                               "trainable": [n for n, _ in params]}, f)
            dist.barrier()
    finally:
        dist.destroy_process_group()
