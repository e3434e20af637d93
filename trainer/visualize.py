"""Reconstruction grids: masked target | reference | prediction | target (paper figures 6-7)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from .data import denormalize
from .loss import patchify, unpatchify


COLUMNS = ("masked target", "reference", "prediction", "target")
"""Labels drawn above the grid's columns, in order."""


def label_band(width: int, labels: tuple[str, ...] = COLUMNS) -> np.ndarray:
    """uint8 RGB ``[h, len(labels)*width, 3]``: black labels centred over columns ``width`` wide on white
    (Pillow's default font, smaller for narrow columns)."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(8, min(16, width // 12))
    try:
        font = ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, AttributeError, ImportError, OSError):
        font = ImageFont.load_default()  # the fixed bitmap font
    band = Image.new("RGB", (len(labels) * width, size + 8), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    _, top, _, bottom = draw.textbbox((0, 0), "".join(labels), font=font)  # one baseline for all
    for i, text in enumerate(labels):
        x0, _, x1, _ = draw.textbbox((0, 0), text, font=font)
        x = i * width + max(0, (width - (x1 - x0)) // 2) - x0
        draw.text((x, (band.height - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
    return np.asarray(band, dtype=np.uint8)


@torch.no_grad()
def reconstruction_grid(target: torch.Tensor, reference: torch.Tensor, pred: torch.Tensor,
                        masked: torch.Tensor, patch: int, norm_pix: bool, rows: int = 4) -> np.ndarray:
    """uint8 RGB ``[band + rows*H, 4*W, 3]`` from normalised images ``[B, 3, H, W]``, pred
    ``[B, N, p*p*3]``, masked ``[B, N]``: a band of column labels (``COLUMNS``), then one row per pair.
    Predicted patches are un-normalised with the target patch's mean/std when ``norm_pix``; visible
    patches show the input."""
    target, reference = target[:rows].float(), reference[:rows].float()
    pred, masked = pred[:rows].float(), masked[:rows]
    t = patchify(target, patch)
    if norm_pix:
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6).sqrt() + t.mean(dim=-1, keepdim=True)
    m = masked[..., None].float()
    recon = unpatchify(pred * m + t * (1 - m), patch)
    shown = unpatchify(t * (1 - m) + m * 0.0, patch)  # masked patches: 0 = the ImageNet mean (grey)
    cols = [denormalize(x) for x in (shown, reference, recon, target)]
    grid = torch.cat([torch.cat(list(c), dim=1) for c in cols], dim=2)  # [3, rows*H, 4*W]
    images = (grid.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return np.concatenate([label_band(target.shape[-1]), images], axis=0)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"cannot write {path}")
