"""``trainer export``: the encoder as safetensors for fine-tuning, and for sin-cos (v1) models a
state dict for timm's ``vit_base_patch16_224`` built with
``class_token=False, global_pool="avg", fc_norm=False, num_classes=0`` (so the final norm is
applied per token, as in CroCo, before the average pool)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import ExportConfig
from .evaluate import load_model
from .model import CroCoMan, encoder_state_dict

TIMM_KWARGS = {"class_token": False, "global_pool": "avg", "fc_norm": False, "num_classes": 0}


def timm_vit_state_dict(model: CroCoMan) -> dict[str, torch.Tensor]:
    """Encoder weights renamed for timm's VisionTransformer (sin-cos models only)."""
    if model.enc_pos_embed is None:
        raise ValueError("timm's ViT has no 2D RoPE: only sin-cos (cosine) models export to timm")
    out = {}
    for k, v in encoder_state_dict(model).items():
        if k == "enc_pos_embed":
            out["pos_embed"] = v[None]
        elif k.startswith("enc_blocks."):
            out["blocks." + k.removeprefix("enc_blocks.")] = v
        elif k.startswith("enc_norm."):
            out["norm." + k.removeprefix("enc_norm.")] = v
        else:
            out[k] = v
    return out


def export(cfg: ExportConfig) -> list[Path]:
    """Write ``encoder.safetensors`` (CroCo names) and, for sin-cos models, ``timm_vit.safetensors``."""
    model, _, preset = load_model(cfg.ckpt, cfg.model)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"preset": preset, "model": json.dumps({k: v for k, v in vars(model.cfg).items()}),
            "format": "CroCo encoder: patch_embed, enc_blocks, enc_norm (+ enc_pos_embed for sin-cos)"}
    paths = [out / "encoder.safetensors"]
    save_file({k: v.contiguous() for k, v in encoder_state_dict(model).items()}, paths[0], metadata=meta)
    if model.enc_pos_embed is not None:
        paths.append(out / "timm_vit.safetensors")
        save_file({k: v.contiguous() for k, v in timm_vit_state_dict(model).items()}, paths[1],
                  metadata={"preset": preset, "timm_kwargs": json.dumps(TIMM_KWARGS)})
    return paths
