"""Patchify, the masked pixel loss and the optional keypoint-heatmap loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# PennAction's 13 joints as COCO-17 indices: head (nose), shoulders, elbows, wrists, hips, knees, ankles.
PENN_FROM_COCO = (0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, p*p*C]``, patches row-major, values in (p, q, c) order."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    """Inverse of ``patchify``: ``[B, N, p*p*C] -> [B, C, H, W]`` (square images)."""
    b, n, _ = x.shape
    g = int(round(n ** 0.5))
    x = x.reshape(b, g, g, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, g * p, g * p)


def normalize_patches(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised targets ``(t - mean) / sqrt(var + eps)`` over each patch vector (unbiased var)."""
    return (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + eps).sqrt()


def masked_mse(pred: torch.Tensor, target_patches: torch.Tensor, masked: torch.Tensor,
               norm_pix: bool = True) -> torch.Tensor:
    """Mean over masked patches of the per-patch MSE. pred/target ``[B, N, P]``, masked ``[B, N]`` bool."""
    t = normalize_patches(target_patches) if norm_pix else target_patches
    per_patch = (pred.float() - t.float()).pow(2).mean(dim=-1)
    m = masked.float()
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


def masked_mse_per_sample(pred: torch.Tensor, target_patches: torch.Tensor, masked: torch.Tensor,
                          norm_pix: bool = True) -> torch.Tensor:
    """``[B]``: each sample's mean over its masked patches of the per-patch MSE (for eval by kind)."""
    t = normalize_patches(target_patches) if norm_pix else target_patches
    per_patch = (pred.float() - t.float()).pow(2).mean(dim=-1)
    m = masked.float()
    return (per_patch * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def keypoint_heatmaps(kp: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Gaussian heatmaps ``[B, J, size, size]`` (peak 1) from keypoints ``[B, J, 3]`` (x, y, weight) in pixels."""
    coords = torch.arange(size, device=kp.device, dtype=torch.float32) + 0.5
    dx = (coords[None, None, :] - kp[..., 0:1]) ** 2  # [B, J, W]
    dy = (coords[None, None, :] - kp[..., 1:2]) ** 2  # [B, J, H]
    return torch.exp(-(dy[..., :, None] + dx[..., None, :]) / (2 * sigma ** 2))


def keypoint_loss(logits: torch.Tensor, kp: torch.Tensor, sigma: float) -> torch.Tensor:
    """BCE between heatmap logits ``[B, J, H, W]`` and Gaussians at ``kp`` ``[B, J, 3]``, weighted by confidence.

    Joints with weight 0 (missing keypoints, samples without keypoints) do not count; returns 0
    when no joint in the batch has a weight.
    """
    target = keypoint_heatmaps(kp, logits.shape[-1], sigma)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(-2, -1))
    w = kp[..., 2].clamp(0, 1)
    return (bce * w).sum() / w.sum().clamp_min(1e-6)
