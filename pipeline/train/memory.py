"""Per-GPU memory of a stage, from the model's config alone (`vbpe train plan`): before any GPU is rented.

For a decoder-only model (Llama, Mistral, Qwen2 and the like) the parameters are counted from the
config; what each stage trains follows freeze.py (stage 1: the new rows; stage 2: plus the first
`unfreeze_fraction` of the layers; stage 3: everything). Terms, in bytes per GPU:

- weights: every parameter in the master dtype (fp32, or bf16 for `precision: bf16`; frozen ones
  too, as the loop loads them), divided over the GPUs under FSDP; with CPU offload they live in host
  memory. Plus the compute copy: bf16 casts of all weights under DDP with bf16-mixed (autocast's
  cache), or under FSDP the gathered (unsharded) units in flight: the root unit (embeddings, head,
  final norm) and two decoder layers (the current one and the prefetched one).
- gradients: fp32, trainable parameters only; DDP also keeps them in its reduction buckets; FSDP
  shards them and holds one layer's unsharded gradients while reduce-scattering.
- optimizer: AdamW's two fp32 moments per trainable parameter (sharded under FSDP, on the host with
  offload), plus a moment-sized temporary during the step (the foreach square root).
- activations: what autograd keeps per token and layer (a decoder layer's saved inputs and MLP
  intermediates), all layers without activation checkpointing; with it, each layer's input plus one
  layer recomputed at a time. Plus the logits: the model's output, its fp32 copy for the loss, the
  softmax and the gradient, b x s x vocabulary each (pipeline/train/loss.py never copies them to shift).
- peak: the larger of the backward pass (weights, gradients, optimizer, activations) and the
  optimizer step (weights, gradients, optimizer, temporary). CUDA context and allocator slack are
  not counted: `reserve` (2 GiB) is kept free when deciding what fits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GIB = 1 << 30
STRATEGIES = ("ddp", "fsdp", "fsdp+offload")


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int  # rows after the vocabulary extension
    old_vocab: int  # rows the model had (text ids)
    tied: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: dict, vocab: int | None = None, old_vocab: int | None = None) -> "ModelShape":
        text = config.get("text_config", config)
        h = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        rows = int(text["vocab_size"])
        return cls(
            hidden=h, intermediate=int(text["intermediate_size"]), layers=int(text["num_hidden_layers"]),
            heads=heads, kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or h // heads),
            vocab=int(vocab or rows), old_vocab=int(old_vocab or rows),
            tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            attention_bias=bool(text.get("attention_bias", False)), mlp_bias=bool(text.get("mlp_bias", False)),
        )

    def layer_params(self) -> int:
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv + h) if self.attention_bias else 0)
        mlp = 3 * h * i + ((2 * i + h) if self.mlp_bias else 0)
        return attn + mlp + 2 * h

    def root_params(self) -> int:
        """Embeddings, head and final norm: FSDP's root unit."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        return self.root_params() + self.layers * self.layer_params()

    def trainable(self, stage: str, unfreeze_fraction: float = 0.25) -> int:
        new_rows = (self.vocab - self.old_vocab) * self.hidden * (1 if self.tied else 2)
        if stage == "stage1":
            return new_rows
        if stage == "stage2":
            from pipeline.train.freeze import layers_to_unfreeze

            return new_rows + layers_to_unfreeze(self.layers, unfreeze_fraction) * self.layer_params()
        return self.params()

    def saved_per_token_layer(self) -> int:
        """Elements autograd keeps per token for one decoder layer (norm inputs and outputs, q/k/v,
        attention output, residual, gate/up/act/product of the MLP)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 5 * self.hidden + q + 2 * kv + q + 4 * self.intermediate


@dataclass(frozen=True)
class Memory:
    strategy: str
    gpus: int
    weights: int
    compute_copy: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    peak: int
    host: int = 0  # held in host memory per GPU (offload: the shards of weights, gradients and optimizer)

    def gib(self) -> dict:
        return {k: (round(v / GIB, 2) if isinstance(v, int) and k not in ("gpus",) else v) for k, v in asdict(self).items()}


def estimate(shape: ModelShape, stage: str, strategy: str, gpus: int, micro_batch: int, seq_len: int,
             precision: str = "bf16-mixed", checkpointing: bool = True, unfreeze_fraction: float = 0.25,
             on_gpu: bool = True) -> Memory:
    """Per-GPU bytes of one stage (precision as resolved: fp32 | bf16-mixed | fp16-mixed | bf16)."""
    if precision == "auto":
        precision = "bf16-mixed" if on_gpu else "fp32"
    fsdp, offload = strategy.startswith("fsdp"), strategy == "fsdp+offload"
    n = gpus if fsdp else 1
    master = 2 if precision == "bf16" else 4
    act = 2 if precision in ("bf16-mixed", "fp16-mixed", "bf16") else 4
    p, pt = shape.params(), shape.trainable(stage, unfreeze_fraction)
    layer, root = shape.layer_params(), shape.root_params()
    weights = 0 if offload else math.ceil(master * p / n)
    if fsdp:
        compute_copy = act * (root + 2 * layer)  # gathered units in flight
        layer_trainable = min(layer, pt)
        gradients = (0 if offload else math.ceil(4 * pt / n)) + 4 * layer_trainable
    else:
        compute_copy = 2 * p if precision in ("bf16-mixed", "fp16-mixed") else 0
        gradients = 4 * pt * (2 if gpus > 1 else 1)  # the gradients, and DDP's buckets when there is more than one GPU
    optimizer = 0 if offload else math.ceil(8 * pt / n)
    step_temporary = 0 if offload else math.ceil(4 * pt / n)
    tokens = micro_batch * seq_len
    per_layer = tokens * shape.saved_per_token_layer() * act
    activations = (shape.layers * tokens * shape.hidden * act + per_layer) if checkpointing else shape.layers * per_layer
    logits = tokens * shape.vocab * (act + 4 + 4 + 4)  # output, fp32 cast (a view in fp32: then its gradient), softmax, gradient
    backward = weights + compute_copy + gradients + optimizer + activations + logits
    step = weights + gradients + optimizer + step_temporary
    host = math.ceil((master * p + 4 * pt + 8 * pt) / n) if offload else 0
    return Memory(strategy, gpus, weights, compute_copy, gradients, optimizer, activations, logits, max(backward, step), host)


def smallest_fit(shape: ModelShape, stage: str, strategy: str, gpu_bytes: int, reserve: int = 2 * GIB, max_gpus: int = 4096,
                 **kw) -> int | None:
    """The fewest GPUs on which the stage fits (DDP: 1 or never; FSDP: searched), or None."""
    budget = gpu_bytes - reserve
    if not strategy.startswith("fsdp"):
        return 1 if estimate(shape, stage, strategy, 1, **kw).peak <= budget else None
    return next((n for n in range(1, max_gpus + 1) if estimate(shape, stage, strategy, n, **kw).peak <= budget), None)


def plan_table(shape: ModelShape, stages: dict[str, dict], gpus: int, gpu_bytes: int, on_gpu: bool = True) -> list[dict]:
    """One row per stage and strategy: the terms at `gpus` GPUs, the peak with and without activation
    checkpointing, and the fewest GPUs that fit. `stages`: name -> {micro_batch, seq_len, precision,
    checkpointing, unfreeze_fraction}."""
    rows = []
    for stage, kw in stages.items():
        for strategy in STRATEGIES:
            base = {k: v for k, v in kw.items() if k != "checkpointing"}
            on = estimate(shape, stage, strategy, gpus, checkpointing=True, on_gpu=on_gpu, **base)
            off = estimate(shape, stage, strategy, gpus, checkpointing=False, on_gpu=on_gpu, **base)
            chosen = on if kw.get("checkpointing", True) else off
            rows.append({
                "stage": stage, "strategy": strategy, "gpus": gpus,
                "trainable": shape.trainable(stage, kw.get("unfreeze_fraction", 0.25)),
                **{k: v for k, v in asdict(chosen).items() if k not in ("strategy", "gpus", "peak")},  # incl. host
                "activations_checkpointed": on.activations, "activations_full": off.activations,
                "peak_checkpointed": on.peak, "peak_full": off.peak, "peak": chosen.peak,
                "fits": chosen.peak <= gpu_bytes - 2 * GIB,
                "min_gpus": smallest_fit(shape, stage, strategy, gpu_bytes, on_gpu=on_gpu, **kw),
            })
    return rows


def render(rows: list[dict], gpu_gib: float) -> str:
    head = (f"{'stage':<7} {'strategy':<13} {'weights':>8} {'compute':>8} {'grads':>7} {'optim':>7} "
            f"{'act(ckpt)':>9} {'act(full)':>9} {'logits':>7} {'peak':>7} {'fits':>5} {'min GPUs':>8} {'host':>6}")
    lines = [f"per-GPU memory in GiB at {rows[0]['gpus']} GPU(s) of {gpu_gib:g} GiB (2 GiB kept free); "
             "host: CPU memory per GPU with offload", head]
    for r in rows:
        g = {k: r[k] / GIB for k in ("weights", "compute_copy", "gradients", "optimizer", "activations_checkpointed",
                                     "activations_full", "logits", "peak", "host")}
        lines.append(f"{r['stage']:<7} {r['strategy']:<13} {g['weights']:>8.1f} {g['compute_copy']:>8.1f} {g['gradients']:>7.1f} "
                     f"{g['optimizer']:>7.1f} {g['activations_checkpointed']:>9.1f} {g['activations_full']:>9.1f} "
                     f"{g['logits']:>7.1f} {g['peak']:>7.1f} {'yes' if r['fits'] else 'no':>5} "
                     f"{r['min_gpus'] if r['min_gpus'] else '-':>8} {g['host']:>6.1f}")
    return "\n".join(lines)
