"""Tiny taming and Chameleon VQ-GANs, random-initialised, written to disk the way users get them."""
from __future__ import annotations

import os

import numpy as np
import yaml

TAMING_DDCONFIG = {
    "double_z": False, "z_channels": 16, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0,
}
TAMING_YAML = {
    "model": {
        "base_learning_rate": 4.5e-06,
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": 16,
            "n_embed": 256,
            "ddconfig": TAMING_DDCONFIG,
            # What real configs carry; it needs LPIPS weights, so the loader must not build it.
            "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                           "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0}},
        },
    }
}


def build_taming(seed: int = 0):
    import torch

    from pipeline.quantize.taming import import_vqmodel

    torch.manual_seed(seed)
    p = TAMING_YAML["model"]["params"]
    model = import_vqmodel()(ddconfig=p["ddconfig"], lossconfig={"target": "torch.nn.Identity"},
                             n_embed=p["n_embed"], embed_dim=p["embed_dim"])
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()  # spread codes so encodings are not all one id
    return model.eval()


def save_taming(dirpath: str, seed: int = 0, lightning: bool = True) -> tuple[str, str, object]:
    """(yaml path, checkpoint path, model): a Lightning-style .ckpt like the released VQGANs."""
    import torch

    os.makedirs(dirpath, exist_ok=True)
    model = build_taming(seed)
    cfg_path = os.path.join(dirpath, "model.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(TAMING_YAML, f)
    sd = model.state_dict()
    if not lightning:
        path = os.path.join(dirpath, "model.pt")
        torch.save(sd, path)
        return cfg_path, path, model
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": sd,
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "last.ckpt",
                                        "monitor_np": np.float64(0.25)}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
        "lr_schedulers": [],
    }
    path = os.path.join(dirpath, "last.ckpt")
    torch.save(ckpt, path)
    return cfg_path, path, model


CHAMELEON_VQ = {
    "embed_dim": 16, "num_embeddings": 256, "latent_channels": 16, "resolution": 64, "base_channels": 32,
    "channel_multiplier": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8],
}


def save_chameleon(dirpath: str, seed: int = 0):
    """A tiny ChameleonVQVAE round-tripped through save_pretrained; returns the model."""
    import torch
    from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

    torch.manual_seed(seed)
    model = ChameleonVQVAE(ChameleonVQVAEConfig(**CHAMELEON_VQ))
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    model.save_pretrained(dirpath)
    return model.eval()


def save_full_chameleon(dirpath: str, seed: int = 0):
    """A tiny full Chameleon (LM + VQ-GAN) in sharded safetensors; returns the model."""
    import torch
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    torch.manual_seed(seed)
    cfg = ChameleonConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, vq_config=dict(CHAMELEON_VQ),
                          vocabulary_map={"<image>": 0})
    model = ChameleonForConditionalGeneration(cfg)
    with torch.no_grad():
        model.model.vqmodel.quantize.embedding.weight.normal_()
    model.save_pretrained(dirpath, max_shard_size="200KB")
    return model.eval()


def save_chameleon_decoder(path: str, vq, seed: int = 0) -> str:
    """The original-format VQ-GAN checkpoint of a tiny Chameleon: taming key names, decoder included.

    transformers' ChameleonVQVAE has no decoder, so its weights are made here with taming's Decoder
    (the architecture Chameleon's VQ-GAN shares) and stored next to the model's own codebook.
    """
    import torch
    from taming.modules.diffusionmodules.model import Decoder

    from pipeline.quantize.decode import chameleon_ddconfig

    torch.manual_seed(seed)
    arch = vq.config.to_dict()
    decoder = Decoder(**chameleon_ddconfig(arch))
    state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    for k, v in vq.state_dict().items():
        if k.startswith(("encoder.", "quant_conv.", "quantize.", "post_quant_conv.")):
            state[k] = v
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    torch.save({"state_dict": state, "global_step": 1}, path)
    return path
