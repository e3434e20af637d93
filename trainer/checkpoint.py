"""Checkpoints: atomic writes, our run checkpoints, and strict loading of CroCo's released ones.

Our checkpoint (``OUT/checkpoint.pt``) is a dict::

    model         CroCo-named state dict (loadable by CroCo tools; ``croco_kwargs`` is stored too)
    croco_kwargs  the architecture, CroCo's constructor names
    preset        our preset name
    kp_head       state dict of the keypoint head (None when the auxiliary loss is off)
    optimizer, scheduler, step, rng, data, config

CroCo's releases hold ``ckpt["model"]`` and, for v2, ``ckpt["croco_kwargs"]``; v1 holds neither
kwargs nor positional-embedding flags, so the architecture is read from the tensors' shapes.
"""

from __future__ import annotations

import argparse
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from .config import PRESETS, ModelConfig, TrainerError

ARCH_FIELDS = ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
               "dec_num_heads", "pos_embed", "img_size", "patch_size")


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` under a temporary name in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_file(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (CroCo's ``args`` Namespace is allowed); TrainerError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainerError(f"cannot read checkpoint {path}: {first}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise TrainerError(f"{path} is not a CroCo checkpoint (no 'model' state dict)")
    return ckpt


def _depth(sd: dict, prefix: str) -> int:
    pat = re.compile(rf"^{prefix}\.(\d+)\.")
    idx = [int(m.group(1)) for k in sd if (m := pat.match(k))]
    return max(idx) + 1 if idx else 0


def architecture(ckpt: dict) -> dict:
    """Architecture fields of a checkpoint: dims, depths and positional embedding from the tensors'
    shapes; heads and image size from ``croco_kwargs`` when present (None otherwise)."""
    sd = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    if "patch_embed.proj.weight" not in sd or "decoder_embed.weight" not in sd:
        raise TrainerError("not a CroCo state dict (no patch_embed.proj.weight / decoder_embed.weight)")
    kwargs = ckpt.get("croco_kwargs") or {}
    pe = sd["patch_embed.proj.weight"]
    arch = {
        "enc_embed_dim": pe.shape[0], "enc_depth": _depth(sd, "enc_blocks"),
        "enc_num_heads": kwargs.get("enc_num_heads"),
        "dec_embed_dim": sd["decoder_embed.weight"].shape[0], "dec_depth": _depth(sd, "dec_blocks"),
        "dec_num_heads": kwargs.get("dec_num_heads"),
        "pos_embed": "cosine" if "enc_pos_embed" in sd else "RoPE100",
        "img_size": kwargs.get("img_size"), "patch_size": pe.shape[-1],
    }
    if "enc_pos_embed" in sd and arch["img_size"] is None:
        arch["img_size"] = int(round(sd["enc_pos_embed"].shape[0] ** 0.5)) * pe.shape[-1]
    if kwargs.get("pos_embed") and not (kwargs["pos_embed"] == "cosine") == (arch["pos_embed"] == "cosine"):
        raise TrainerError(f"croco_kwargs say pos_embed={kwargs['pos_embed']} but the tensors say otherwise")
    return arch


def _describe(a: dict | ModelConfig) -> str:
    g = a.__getitem__ if isinstance(a, dict) else lambda k: getattr(a, k)
    return (f"enc {g('enc_embed_dim')}x{g('enc_depth')}, dec {g('dec_embed_dim')}x{g('dec_depth')}, "
            f"{g('pos_embed')}")


def matches(arch: dict, cfg: ModelConfig) -> bool:
    """Whether a checkpoint architecture (None = unknown field) fits a ModelConfig."""
    return all(v is None or v == getattr(cfg, k) for k, v in arch.items())


def preset_of(ckpt: dict) -> str | None:
    """Name of the preset the checkpoint's architecture matches (our ``preset`` entry first)."""
    if ckpt.get("preset") in PRESETS and matches(architecture(ckpt), PRESETS[ckpt["preset"]]):
        return ckpt["preset"]
    arch = architecture(ckpt)
    return next((name for name, cfg in PRESETS.items() if matches(arch, cfg)), None)


def load_weights(model: torch.nn.Module, ckpt: dict, preset: str, source: str = "checkpoint") -> None:
    """Strictly load ``ckpt["model"]`` into ``model`` (built from ``preset``); TrainerError if the
    checkpoint holds another architecture or its names/shapes differ."""
    arch = architecture(ckpt)
    if not matches(arch, model.cfg):
        found = preset_of(ckpt)
        what = f"preset {found}" if found else "model"
        raise TrainerError(f"{source} holds a {what} ({_describe(arch)}), not --model {preset} "
                           f"({_describe(model.cfg)})")
    sd = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise TrainerError(f"{source} does not load strictly into {preset}: {detail}") from exc


def croco_kwargs(cfg: ModelConfig) -> dict:
    """CroCo constructor kwargs of a ModelConfig (stored in our checkpoints)."""
    return {k: getattr(cfg, k) for k in ARCH_FIELDS} | {"mlp_ratio": cfg.mlp_ratio}


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}  # tensors and plain types only: loadable with weights_only
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
