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
import pickle
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import PRESETS, ModelConfig, TrainerError

ARCH_FIELDS = ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
               "dec_num_heads", "pos_embed", "img_size", "patch_size")


class _Sink:
    """The file object ``torch.save`` writes to: keeps the OSError of a failed write (``error``)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` under a temporary name in the same directory, fsync, then rename over ``path``
    (and fsync the directory). A save that fails or is killed midway leaves ``path`` as it was;
    on failure the temporary file is removed (it may be large: a full disk needs the space back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(obj, sink)
            except RuntimeError as exc:  # torch's zip writer hides the OSError (disk full, ...) behind this
                if sink.error is not None:
                    raise sink.error from exc
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash of the machine
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def remove_partials(path: Path) -> list[Path]:
    """Delete the temporary files that saves of ``path`` killed midway left next to it (call it only
    while holding the run directory's lock); returns them."""
    path = Path(path)
    found = sorted(p for p in path.parent.glob(f".{path.name}.*.partial") if p.is_file())
    for p in found:
        p.unlink(missing_ok=True)
    return found


def lock_run_dir(out: Path):
    """Create ``out`` and take an exclusive lock on ``out/.lock`` for this process's lifetime (the OS
    drops it when the process ends, however it ends). Returns the open lock file; TrainerError if
    another trainer holds it or ``out`` cannot be written."""
    import fcntl

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / ".lock", "a+")
    except OSError as exc:
        raise TrainerError(f"cannot write to the run directory {out}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise TrainerError(f"another trainer is running in {out}{f' ({holder})' if holder else ''}; "
                           "wait for it to end or use another --out") from exc
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    f.flush()
    return f


def _describe_file(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, judged from its first bytes (None if it may be one)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file, not a torch checkpoint"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None  # torch's zip format, or a legacy / plain pickle
    n = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and 0 < n < path.stat().st_size:
        return ("a safetensors file (such as `trainer export` writes), not a torch checkpoint with a "
                "'model' state dict")
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file, not a torch checkpoint"
    return "not a torch checkpoint (neither a zip archive nor a pickle)"


def load_file(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (CroCo's ``args`` Namespace is allowed).

    TrainerError (one line naming the file and why) if it is missing, not a torch file, corrupt or
    truncated, holds other Python objects, or has no ``model`` state dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"checkpoint not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        why = _describe_file(path)
    except OSError as exc:
        raise TrainerError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if why:
        raise TrainerError(f"{path} is {why}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on pickle protocols: the error says enough
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation| Please file|$)", text)
        detail = detail.group(1).split(" was not an allowed")[0].rstrip(". ")[:160] if detail else ""
        if "Unsupported global" in detail:
            msg = f"{path} holds Python objects other than tensors and plain containers (refused for safety)"
        else:
            msg = f"{path} is not a torch checkpoint (a pickle torch cannot read)"
        raise TrainerError(msg + (f": {detail}" if detail else "")) from exc
    except Exception as exc:  # noqa: BLE001 - torch/zip/pickle report a damaged file in many ways
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = first.split(". ")[0] if len(first) > 160 else first
        raise TrainerError(f"cannot read checkpoint {path} (corrupt or truncated?): "
                           f"{type(exc).__name__}: {first}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        found = (f"a dict with keys {', '.join(map(str, list(ckpt)[:5]))}{', ...' if len(ckpt) > 5 else ''}"
                 if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}")
        raise TrainerError(f"{path} has no model weights: expected a dict with a 'model' state dict, "
                           f"found {found}")
    bad = [k for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)]
    if bad or not ckpt["model"]:
        raise TrainerError(f"{path} has no model weights: its 'model' entry is not a state dict of tensors"
                           + (f" ({bad[0]!r} is a {type(ckpt['model'][bad[0]]).__name__})" if bad else " (empty)"))
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
    if not isinstance(kwargs, dict):
        raise TrainerError(f"croco_kwargs is a {type(kwargs).__name__}, not a dict")
    pe = sd["patch_embed.proj.weight"]
    if pe.ndim != 4 or sd["decoder_embed.weight"].ndim != 2:
        raise TrainerError(f"not a CroCo state dict (patch_embed.proj.weight has shape {tuple(pe.shape)}, "
                           f"decoder_embed.weight {tuple(sd['decoder_embed.weight'].shape)})")
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
    try:
        arch = architecture(ckpt)
    except TrainerError as exc:
        raise TrainerError(f"{source}: {exc}") from exc
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
