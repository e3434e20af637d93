"""Transformer blocks (own code; parameter names match CroCo's so its checkpoints load strictly).

Pre-norm blocks, LayerNorm eps 1e-6, qkv bias, exact GELU, attention through
``torch.nn.functional.scaled_dot_product_attention``. Shapes: tokens ``[B, N, D]``,
positions ``[B, N, 2]`` (row, col), heads ``[B, H, N, D/H]``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .pos_embed import RoPE2D

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, N, D] -> [B, H, N, D/H]``."""
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, d] -> [B, N, H*d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and optional RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``[B, N, D]``, pos ``[B, N, 2]`` -> ``[B, N, D]``."""
        q, k, v = (_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head attention with queries from one stream and keys/values from another."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        """query ``[B, Nq, D]``, key/value ``[B, Nk, D]``, positions ``[B, N*, 2]`` -> ``[B, Nq, D]``."""
        q = _heads(self.projq(query), self.num_heads)
        k = _heads(self.projk(key), self.num_heads)
        v = _heads(self.projv(value), self.num_heads)
        if self.rope is not None:
            q, k = self.rope(q, qpos), self.rope(k, kpos)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Encoder block: ``x += attn(norm1(x)); x += mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Decoder block: self-attention on x, cross-attention from x to y, MLP; y passes unchanged."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = LayerNorm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor):
        """x ``[B, Nx, D]`` (target), y ``[B, Ny, D]`` (reference) -> (x, y)."""
        x = x + self.attn(self.norm1(x), xpos)
        y_ = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y_, y_, xpos, ypos)
        x = x + self.mlp(self.norm3(x))
        return x, y
