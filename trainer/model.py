"""The CroCo-Man model: a siamese ViT encoder, a cross-attention decoder and a pixel head.

Parameter names, shapes and patch order are CroCo's, so ``model.load_state_dict(croco["model"])``
works strictly for the matching preset (no class token; patches in row-major order).
Shapes: images ``[B, 3, H, W]``; N = (H/p)^2 patches; L visible target patches;
``visible`` ``[B, L]`` int64 indices of the target patches given to the encoder.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .blocks import Block, DecoderBlock, LayerNorm
from .config import ModelConfig, get_preset
from .pos_embed import RoPE2D, patch_positions, sincos_2d


class PatchEmbed(nn.Module):
    """``[B, 3, H, W] -> [B, N, D]`` tokens by a strided conv, plus ``[B, N, 2]`` (row, col) positions."""

    def __init__(self, img_size: int, patch_size: int, dim: int):
        super().__init__()
        self.grid = img_size // patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("positions", patch_positions(self.grid), persistent=False)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(img).flatten(2).transpose(1, 2)
        return x, self.positions.expand(x.shape[0], -1, -1)


class CroCoMan(nn.Module):
    """CroCo encoder-decoder. ``forward(target, reference, visible) -> (pred [B, N, p*p*3], ref_tokens [B, N, D])``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.pos_embed not in ("RoPE100", "cosine"):
            raise ValueError(f"pos_embed must be 'RoPE100' or 'cosine', got {cfg.pos_embed!r}")
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.enc_embed_dim)
        grid = self.patch_embed.grid
        rope = RoPE2D(100.0) if cfg.pos_embed == "RoPE100" else None
        if rope is None:  # fixed tables, stored in checkpoints as CroCo v1 does
            self.register_buffer("enc_pos_embed", sincos_2d(cfg.enc_embed_dim, grid))
            self.register_buffer("dec_pos_embed", sincos_2d(cfg.dec_embed_dim, grid))
        else:
            self.enc_pos_embed = self.dec_pos_embed = None
        self.enc_blocks = nn.ModuleList(
            Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.enc_depth))
        self.enc_norm = LayerNorm(cfg.enc_embed_dim)
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_embed_dim))
        self.dec_blocks = nn.ModuleList(
            DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.dec_depth))
        self.dec_norm = LayerNorm(cfg.dec_embed_dim)
        self.prediction_head = nn.Linear(cfg.dec_embed_dim, cfg.patch_size ** 2 * 3)
        self.init_weights()

    # ----------------------------------------------------------------------- init

    @torch.no_grad()
    def init_weights(self) -> None:
        """Xavier-uniform linears and patch conv (as 2D), zero biases, LayerNorm (1, 0), mask token N(0, .02)."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------- encoder / decoder

    def encode(self, img: torch.Tensor, visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """img ``[B, 3, H, W]`` -> tokens ``[B, L, D]`` and positions ``[B, L, 2]`` of the visible patches
        (all N patches when ``visible`` is None)."""
        x, pos = self.patch_embed(img)
        if self.enc_pos_embed is not None:
            x = x + self.enc_pos_embed.to(x.dtype)
        if visible is not None:
            x = torch.gather(x, 1, visible[..., None].expand(-1, -1, x.shape[-1]))
            pos = torch.gather(pos, 1, visible[..., None].expand(-1, -1, 2))
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    def decode(self, feat_t: torch.Tensor, visible: torch.Tensor, feat_r: torch.Tensor) -> torch.Tensor:
        """Visible target tokens ``[B, L, De]`` + reference tokens ``[B, N, De]`` -> ``[B, N, Dd]``."""
        b, n = feat_r.shape[:2]
        x = self.decoder_embed(feat_t)
        y = self.decoder_embed(feat_r)
        full = self.mask_token.to(x.dtype).expand(b, n, -1)
        x = torch.scatter(full, 1, visible[..., None].expand(-1, -1, x.shape[-1]), x)
        if self.dec_pos_embed is not None:
            x = x + self.dec_pos_embed.to(x.dtype)
            y = y + self.dec_pos_embed.to(y.dtype)
        pos = self.patch_embed.positions.expand(b, -1, -1)
        for blk in self.dec_blocks:
            x, y = blk(x, y, pos, pos)
        return self.dec_norm(x)

    def forward(self, target: torch.Tensor, reference: torch.Tensor, visible: torch.Tensor):
        """-> predicted patches ``[B, N, p*p*3]`` ((p, q, c) order) and reference tokens ``[B, N, De]``."""
        feat_t, _ = self.encode(target, visible)
        feat_r, _ = self.encode(reference)
        return self.prediction_head(self.decode(feat_t, visible, feat_r)), feat_r


def build_model(preset: str | ModelConfig, **overrides) -> CroCoMan:
    """A randomly initialised model for a preset name or config; ``overrides`` change fields (e.g. ``enc_depth=1``)."""
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    return CroCoMan(dataclasses.replace(cfg, **overrides))


def encoder_state_dict(model: CroCoMan) -> dict[str, torch.Tensor]:
    """The encoder's parameters and buffers (patch embed, blocks, final norm, sin-cos table)."""
    prefixes = ("patch_embed.", "enc_blocks.", "enc_norm.", "enc_pos_embed")
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
