"""``trainer export``: the encoder as safetensors for fine-tuning, and the same weights as a timm
state dict (``timm_vit.safetensors``; its metadata names the timm model and the ``create_model``
keyword arguments that load it strictly and give our encoder's tokens):

- sin-cos (v1) models: timm's ViT (``vit_base_patch16_224``) with ``class_token=False,
  global_pool="avg", fc_norm=False, num_classes=0`` (the final norm per token, as in CroCo, before
  the average pool);
- RoPE (v2) models: timm's EVA in its RoPE-axial ViT form (``vit_base_patch16_rope_224``, 2D RoPE
  with base 100 on integer patch coordinates, no class token) with the same pooling; timm lays the
  rotary channels out differently, so the q and k rows of every head are permuted (attention is
  unchanged, see ``rope_qk_permutation``), and the LayerScale factors it always builds are exported
  as ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import ExportConfig
from .evaluate import load_model
from .model import CroCoMan, encoder_state_dict

TIMM_KWARGS = {"class_token": False, "global_pool": "avg", "fc_norm": False, "num_classes": 0}
# RoPE models -> timm's Eva. The rotary settings are pinned rather than taken from the registered
# model's defaults: rope_qk_permutation depends on them. init_values: Eva always builds LayerScale
# (create_model drops None), the export sets its factors to 1.
TIMM_ROPE_KWARGS = {"class_token": False, "global_pool": "avg", "use_fc_norm": False, "num_classes": 0,
                    "attn_type": "rope", "qkv_bias": True, "use_abs_pos_emb": False, "use_rot_pos_emb": True,
                    "rope_type": "cat", "rope_temperature": 100.0, "rope_grid_indexing": "xy",
                    "rope_rotate_half": False, "init_values": 1.0}


def timm_target(model: CroCoMan) -> tuple[str, dict]:
    """``(name, kwargs)``: ``timm.create_model(name, **kwargs)`` loads ``timm_vit_state_dict(model)`` strictly."""
    c = model.cfg
    arch = {"img_size": c.img_size, "patch_size": c.patch_size, "embed_dim": c.enc_embed_dim,
            "depth": c.enc_depth, "num_heads": c.enc_num_heads, "mlp_ratio": c.mlp_ratio}
    size = "large" if c.enc_embed_dim == 1024 else "base"  # the kwargs fix the shape; the name is a hint
    if model.enc_pos_embed is not None:
        return f"vit_{size}_patch16_224", {**TIMM_KWARGS, **arch}
    return f"vit_{size}_patch16_rope_224", {**TIMM_ROPE_KWARGS, **arch}


def rope_qk_permutation(head_dim: int) -> torch.Tensor:
    """``[head_dim]`` index ``p``: channel ``t`` of a timm q/k head is our channel ``p[t]``.

    Ours (``RoPE2D``): halves ``[y | x]``, each "rotate half" (channel j pairs with j + D/4, frequency
    j). timm (interleaved, ``grid_indexing="xy"``): halves ``[x | y]``, each interleaved (channels 2j
    and 2j+1 pair, frequency j). Frequencies (``100^(-j/(D/4))``), positions and rotation sign agree,
    so applying ``p`` to both q and k gives the same q.k products, hence the same attention.
    """
    quarter = head_dim // 4
    j = torch.arange(quarter)
    p = torch.empty(head_dim, dtype=torch.long)
    for timm_half, our_half in ((0, 1), (1, 0)):  # timm's first half rotates by x, ours by y
        for member in (0, 1):
            p[timm_half * 2 * quarter + 2 * j + member] = our_half * 2 * quarter + member * quarter + j
    return p


def timm_vit_state_dict(model: CroCoMan) -> dict[str, torch.Tensor]:
    """Encoder weights renamed (and for RoPE, q/k rows permuted) for the model ``timm_target`` names."""
    c = model.cfg
    rope = model.enc_pos_embed is None
    if rope:
        head_dim = c.enc_embed_dim // c.enc_num_heads
        p = rope_qk_permutation(head_dim)
        rows = torch.arange(3 * c.enc_embed_dim)  # qkv rows: q heads, k heads, v heads
        for h in range(2 * c.enc_num_heads):  # the q and k heads only
            rows[h * head_dim:(h + 1) * head_dim] = h * head_dim + p
    out = {}
    for k, v in encoder_state_dict(model).items():
        if k == "enc_pos_embed":
            out["pos_embed"] = v[None]
        elif k.startswith("enc_blocks."):
            k = "blocks." + k.removeprefix("enc_blocks.")
            out[k] = v[rows] if rope and k.endswith((".attn.qkv.weight", ".attn.qkv.bias")) else v
        elif k.startswith("enc_norm."):
            out["norm." + k.removeprefix("enc_norm.")] = v
        else:
            out[k] = v
    if rope:
        for i in range(c.enc_depth):
            for g in ("gamma_1", "gamma_2"):  # separate tensors: safetensors refuses shared storage
                out[f"blocks.{i}.{g}"] = torch.ones(c.enc_embed_dim)
    return out


def export(cfg: ExportConfig) -> list[Path]:
    """Write ``encoder.safetensors`` (CroCo names) and ``timm_vit.safetensors`` (timm names)."""
    model, _, preset = load_model(cfg.ckpt, cfg.model)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"preset": preset, "model": json.dumps({k: v for k, v in vars(model.cfg).items()}),
            "format": "CroCo encoder: patch_embed, enc_blocks, enc_norm (+ enc_pos_embed for sin-cos)"}
    paths = [out / "encoder.safetensors"]
    _save(encoder_state_dict(model), paths[0], meta)
    name, kwargs = timm_target(model)
    paths.append(out / "timm_vit.safetensors")
    _save(timm_vit_state_dict(model), paths[1],
          {"preset": preset, "timm_model": name, "timm_kwargs": json.dumps(kwargs)})
    return paths


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``save_file``, then the permissions any new file of this process gets (0666 less the umask):
    safetensors creates its files private (0600), so others in the group could not read an export."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
