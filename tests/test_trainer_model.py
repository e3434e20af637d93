"""Model: CroCo key names/shapes per preset, strict loading, forward/backward, attention maths, positions."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from trainer import checkpoint as ckpt_io
from trainer.blocks import Attention, CrossAttention
from trainer.config import PRESETS, TrainerError
from trainer.model import CroCoMan, build_model
from trainer.pos_embed import RoPE2D, sincos_2d

torch.set_num_threads(2)


def documented_croco_keys(enc=768, enc_depth=12, dec=512, dec_depth=8, sincos=False, img=224, p=16):
    """The state-dict names and shapes of a CroCo checkpoint, written from the reference notes."""
    n = (img // p) ** 2
    keys = {"mask_token": (1, 1, dec), "patch_embed.proj.weight": (enc, 3, p, p), "patch_embed.proj.bias": (enc,)}
    if sincos:
        keys |= {"enc_pos_embed": (n, enc), "dec_pos_embed": (n, dec)}

    def common(prefix, d):
        return {f"{prefix}.norm1.weight": (d,), f"{prefix}.norm1.bias": (d,),
                f"{prefix}.attn.qkv.weight": (3 * d, d), f"{prefix}.attn.qkv.bias": (3 * d,),
                f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,),
                f"{prefix}.norm2.weight": (d,), f"{prefix}.norm2.bias": (d,),
                f"{prefix}.mlp.fc1.weight": (4 * d, d), f"{prefix}.mlp.fc1.bias": (4 * d,),
                f"{prefix}.mlp.fc2.weight": (d, 4 * d), f"{prefix}.mlp.fc2.bias": (d,)}

    for i in range(enc_depth):
        keys |= common(f"enc_blocks.{i}", enc)
    keys |= {"enc_norm.weight": (enc,), "enc_norm.bias": (enc,),
             "decoder_embed.weight": (dec, enc), "decoder_embed.bias": (dec,)}
    for i in range(dec_depth):
        b = f"dec_blocks.{i}"
        keys |= common(b, dec)
        for proj in ("projq", "projk", "projv", "proj"):
            keys |= {f"{b}.cross_attn.{proj}.weight": (dec, dec), f"{b}.cross_attn.{proj}.bias": (dec,)}
        keys |= {f"{b}.norm3.weight": (dec,), f"{b}.norm3.bias": (dec,),
                 f"{b}.norm_y.weight": (dec,), f"{b}.norm_y.bias": (dec,)}
    keys |= {"dec_norm.weight": (dec,), "dec_norm.bias": (dec,),
             "prediction_head.weight": (p * p * 3, dec), "prediction_head.bias": (p * p * 3,)}
    return keys


RELEASES = {  # preset -> (documented architecture, key count, croco_kwargs of the release or None for v1)
    "vitb-dec512x8": (dict(), 347, {"enc_embed_dim": 768, "enc_depth": 12, "enc_num_heads": 12, "dec_embed_dim": 512,
                                    "dec_depth": 8, "dec_num_heads": 16, "pos_embed": "RoPE100"}),
    "vitb-dec768x12": (dict(dec=768, dec_depth=12), 443, {"dec_embed_dim": 768, "dec_depth": 12, "dec_num_heads": 12,
                                                           "pos_embed": "RoPE100"}),
    "vitl-dec768x12": (dict(enc=1024, enc_depth=24, dec=768, dec_depth=12), 587,
                       {"enc_embed_dim": 1024, "enc_depth": 24, "enc_num_heads": 16, "dec_embed_dim": 768,
                        "dec_depth": 12, "dec_num_heads": 12, "pos_embed": "RoPE100"}),
    "vitb-dec512x8-sincos": (dict(sincos=True), 349, None),
}


@pytest.mark.parametrize("preset", list(RELEASES))
def test_croco_checkpoint_loads_strictly(preset):
    arch, count, kwargs = RELEASES[preset]
    keys = documented_croco_keys(**arch)
    assert len(keys) == count
    with torch.device("meta"):
        model = CroCoMan(PRESETS[preset])
        sd = {k: torch.empty(shape) for k, shape in keys.items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    ckpt = {"model": sd, "args": argparse.Namespace(model="CroCoNet()")}
    if kwargs is not None:
        ckpt["croco_kwargs"] = kwargs
    assert ckpt_io.preset_of(ckpt) == preset
    ckpt_io.load_weights(model, ckpt, preset)  # strict
    other = "vitb-dec512x8-sincos" if preset == "vitb-dec512x8" else "vitb-dec512x8"
    with torch.device("meta"):
        wrong = CroCoMan(PRESETS[other])
    with pytest.raises(TrainerError, match=f"not --model {other}"):
        ckpt_io.load_weights(wrong, ckpt, other)


def test_v1_checkpoint_file_roundtrip(tmp_path):
    """A CroCo-style file (model + args Namespace, no croco_kwargs) loads with weights_only into the preset."""
    src = build_model("vitb-dec512x8-sincos", enc_depth=1, dec_depth=1)
    path = tmp_path / "croco.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(model="CroCoNet()")}, path)
    ck = ckpt_io.load_file(path)
    dst = build_model("vitb-dec512x8-sincos", enc_depth=1, dec_depth=1)
    ckpt_io.load_weights(dst, ck, "vitb-dec512x8-sincos")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_forward_backward_every_preset(preset):
    torch.manual_seed(0)
    small = {} if preset == "tiny" else {"enc_depth": 1, "dec_depth": 1}
    model = build_model(preset, **small)
    b, n = 2, model.cfg.num_patches
    target, reference = torch.randn(b, 3, 224, 224), torch.randn(b, 3, 224, 224)
    visible = torch.sort(torch.stack([torch.randperm(n)[:50] for _ in range(b)]), dim=1).values
    pred, ref_tokens = model(target, reference, visible)
    assert pred.shape == (b, n, 768) and ref_tokens.shape == (b, n, model.cfg.enc_embed_dim)
    assert torch.isfinite(pred).all()
    (pred.square().mean() + ref_tokens.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def _explicit(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


@pytest.mark.parametrize("rope", [None, RoPE2D(100.0)])
def test_sdpa_equals_explicit_attention(rope):
    torch.manual_seed(0)
    dim, heads, b, n = 32, 4, 2, 9
    x, y = torch.randn(b, n, dim), torch.randn(b, n + 3, dim)
    pos, ypos = torch.randint(0, 14, (b, n, 2)), torch.randint(0, 14, (b, n + 3, 2))

    def split(t):
        return t.view(b, t.shape[1], heads, dim // heads).transpose(1, 2)

    def merge(t):
        return t.transpose(1, 2).reshape(b, -1, dim)

    attn = Attention(dim, heads, rope)
    q, k, v = (split(t) for t in F.linear(x, attn.qkv.weight, attn.qkv.bias).chunk(3, dim=-1))
    if rope is not None:
        q, k = rope(q, pos), rope(k, pos)
    expected = F.linear(merge(_explicit(q, k, v)), attn.proj.weight, attn.proj.bias)
    torch.testing.assert_close(attn(x, pos), expected, atol=1e-5, rtol=1e-5)

    cross = CrossAttention(dim, heads, rope)
    q, k, v = split(cross.projq(x)), split(cross.projk(y)), split(cross.projv(y))
    if rope is not None:
        q, k = rope(q, pos), rope(k, ypos)
    expected = cross.proj(merge(_explicit(q, k, v)))
    torch.testing.assert_close(cross(x, y, y, pos, ypos), expected, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    rope = RoPE2D(100.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        return (rope(q, torch.tensor([[pq]])) * rope(k, torch.tensor([[pk]]))).sum()

    torch.testing.assert_close(score((2, 3), (5, 1)), score((7, 10), (10, 8)))
    assert not torch.allclose(score((2, 3), (5, 1)), score((2, 3), (1, 5)))
    # first half of the head dim follows the row, second half the column
    moved_col = rope(q, torch.tensor([[[0, 4]]]))
    torch.testing.assert_close(moved_col[..., :8], q[..., :8])
    assert not torch.allclose(moved_col[..., 8:], q[..., 8:])


def test_sincos_layout():
    emb = sincos_2d(16, 4)  # channels: [sin x (4), cos x (4), sin y (4), cos y (4)], omega_0 = 1
    assert emb.shape == (16, 16)
    row, col = 2, 3
    e = emb[row * 4 + col]
    torch.testing.assert_close(e[0], torch.tensor(math.sin(col)))
    torch.testing.assert_close(e[4], torch.tensor(math.cos(col)))
    torch.testing.assert_close(e[8], torch.tensor(math.sin(row)))
