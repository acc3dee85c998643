"""The stage's final model as a plain HuggingFace directory: safetensors weights (no pickle), config,
tokenizer, the id layout and a `vbpe_stage.json` of what the stage did.

Every rank takes part in gathering the weights (sharded under FSDP); rank 0 merges the split-off new
rows back (`freeze.merged_state_dict`), casts to the base model's dtype and writes the directory
through a weightless (meta-device) copy of the model, so no second full model is built in memory.
`AutoModelForCausalLM.from_pretrained` loads the result; tied embeddings stay tied.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from pipeline.storage import local_dir, put_dir as publish_dir
from pipeline.train.freeze import merged_state_dict
from schemas.base import StorageOptions

EXTRAS = ("layout.yaml", "vbpe_init.json")


def save_model(state: dict[str, torch.Tensor], n_old: int, dtype: torch.dtype, base: str, dest: str, info: dict,
               options: StorageOptions | None = None) -> None:
    """Rank 0: write `state` (a split or plain model's full state dict) as the HF model at `dest`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in merged_state_dict(state, n_old).items()}
    with local_dir(base, options) as d, tempfile.TemporaryDirectory(prefix="vbpe-final-") as tmp:
        config = AutoConfig.from_pretrained(d)
        config.use_cache = True
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
        skeleton.save_pretrained(tmp, state_dict=weights)
        AutoTokenizer.from_pretrained(d).save_pretrained(tmp)
        for extra in EXTRAS:
            if os.path.exists(os.path.join(d, extra)):
                shutil.copyfile(os.path.join(d, extra), os.path.join(tmp, extra))
        with open(os.path.join(tmp, "vbpe_stage.json"), "w") as f:
            json.dump(info, f, indent=1)
        publish_dir(tmp, dest, options)
