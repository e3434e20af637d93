"""What is optimised: the CroCo model, the optional keypoint head, and their losses in one module
(one module so DDP and ``torch.compile`` wrap a single forward)."""

from __future__ import annotations

import torch
from torch import nn

from .loss import PENN_FROM_COCO, keypoint_loss, masked_mse, patchify, unpatchify
from .model import CroCoMan


class KeypointHead(nn.Module):
    """Reference tokens ``[B, N, D]`` -> heatmap logits ``[B, J, H, W]`` (a linear map to J p x p tiles)."""

    def __init__(self, dim: int, patch: int, joints: int = len(PENN_FROM_COCO)):
        super().__init__()
        self.patch, self.joints = patch, joints
        self.proj = nn.Linear(dim, joints * patch * patch)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.proj(tokens), self.patch, self.joints)


class Pretrainer(nn.Module):
    """``forward(target, reference, visible, masked, kp) -> {"loss", "mse", "kp_loss", "pred"}``.

    target/reference: normalised ``[B, 3, H, W]``; visible ``[B, L]``; masked ``[B, N]`` bool;
    kp ``[B, 13, 3]`` (x, y, weight) on the reference (ignored without a keypoint head).
    """

    def __init__(self, model: CroCoMan, norm_pix: bool = True, kp_weight: float = 0.0, kp_sigma: float = 8.0):
        super().__init__()
        self.model = model
        self.norm_pix, self.kp_weight, self.kp_sigma = norm_pix, kp_weight, kp_sigma
        self.kp_head = KeypointHead(model.cfg.enc_embed_dim, model.cfg.patch_size) if kp_weight > 0 else None

    def forward(self, target, reference, visible, masked, kp):
        pred, ref_tokens = self.model(target, reference, visible)
        mse = masked_mse(pred, patchify(target, self.model.cfg.patch_size), masked, self.norm_pix)
        out = {"mse": mse, "pred": pred}
        if self.kp_head is not None:
            out["kp_loss"] = keypoint_loss(self.kp_head(ref_tokens), kp, self.kp_sigma)
            out["loss"] = mse + self.kp_weight * out["kp_loss"]
        else:
            out["loss"] = mse
        return out
