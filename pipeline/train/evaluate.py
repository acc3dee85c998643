"""Mean loss per target token of a saved model on prepared sequences (same labels as training)."""
from __future__ import annotations

import numpy as np


def mean_loss(model_dir: str, sequences: str, pad_id: int, rows: np.ndarray | None = None, batch_size: int = 8,
              options=None) -> float:
    """`options`: the StorageOptions of remote paths."""
    import torch
    from pipeline.train.loss import token_loss_sum
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from pipeline.train.batches import Sequences
    from pipeline.storage import local_dir

    hf_logging.disable_progress_bar()
    seqs = Sequences.read(sequences, options)
    rows = np.arange(len(seqs)) if rows is None else np.asarray(rows)
    with local_dir(model_dir, options) as d:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids, mask, labels = (torch.from_numpy(a) for a in seqs.collate(rows[i : i + batch_size], pad_id))
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            total += float(token_loss_sum(logits, labels))
            count += int((labels[:, 1:] != -100).sum())
    return total / max(count, 1)
