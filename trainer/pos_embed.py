"""Positional encodings: fixed 2D sin-cos (CroCo v1) and 2D RoPE with base 100 (CroCo v2).

Patch positions are integer ``(row, col)`` pairs in row-major patch order (``pos[..., 0]`` = row/y,
``pos[..., 1]`` = col/x), as returned by ``patch_positions``.
"""

from __future__ import annotations

import torch
from torch import nn


def patch_positions(grid: int) -> torch.Tensor:
    """``[grid*grid, 2]`` int64 (row, col) of each patch, row-major."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[len(pos), dim]``: ``[sin(pos * w), cos(pos * w)]`` with ``w_i = 1 / 10000^(i / (dim/2))``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """``[grid*grid, dim]`` fixed 2D sin-cos table (MAE/CroCo v1 layout, float32).

    The first half of the channels encodes the column (x), the second half the row (y): this is
    the MAE convention (its ``meshgrid(grid_w, grid_h)`` puts x first), kept so CroCo v1 weights
    see the encodings they were trained with.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs dim divisible by 4, got {dim}")
    pos = patch_positions(grid)
    emb = torch.cat([_sincos_1d(dim // 2, pos[:, 1]), _sincos_1d(dim // 2, pos[:, 0])], dim=1)
    return emb.float()


class RoPE2D(nn.Module):
    """2D rotary embedding applied to queries and keys (no parameters, no state).

    The head dimension D is split in halves: the first half is rotated by the row (y), the second
    by the column (x). Within a half of size D/2, channel ``j`` pairs with ``j + D/4`` ("rotate
    half") and rotates at frequency ``base^(-j / (D/4))``, ``j = 0 .. D/4 - 1``.
    """

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = base

    def _rotate(self, t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """t ``[B, H, N, d]`` rotated by positions ``[B, N]`` (float32 maths)."""
        d = t.shape[-1]
        inv_freq = self.base ** (-torch.arange(d // 2, device=t.device, dtype=torch.float32) / (d // 2))
        angles = pos.to(torch.float32)[:, None, :, None] * inv_freq  # [B, 1, N, d/2]
        angles = torch.cat([angles, angles], dim=-1)  # [B, 1, N, d]
        t32 = t.float()
        t1, t2 = t32[..., : d // 2], t32[..., d // 2:]
        rotated = torch.cat([-t2, t1], dim=-1)
        return (t32 * angles.cos() + rotated * angles.sin()).to(t.dtype)

    def forward(self, t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """t ``[B, H, N, D]``, pos ``[B, N, 2]`` (row, col) -> ``[B, H, N, D]``."""
        if t.shape[-1] % 4:
            raise ValueError(f"RoPE2D needs a head dim divisible by 4, got {t.shape[-1]}")
        ty, tx = t.chunk(2, dim=-1)
        return torch.cat([self._rotate(ty, pos[..., 0]), self._rotate(tx, pos[..., 1])], dim=-1)
