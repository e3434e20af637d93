"""``trainer eval``: masked-reconstruction loss per kind, with the real reference and a black one.

The same masks are used in both passes; ``gain = loss_no_ref / loss_ref`` is how much the
reference helps (paper figures 6-7: > 1 means the model uses the second view / pose).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from . import checkpoint as ckpt_io
from .config import EvalConfig, TrainerError, get_preset
from .data import (PairStream, StreamConfig, find_usable_pair, make_loader, resolve_shards, storage_options,
                   to_model_input)
from .loop import resolve_device
from .loss import masked_mse_per_sample, patchify
from .model import CroCoMan


def load_model(path: str, preset: str = "") -> tuple[CroCoMan, dict, str]:
    """Model (strictly loaded), checkpoint dict and preset name from one of our or CroCo's checkpoints."""
    ck = ckpt_io.load_file(path)
    try:
        name = preset or ck.get("preset") or ckpt_io.preset_of(ck)
    except TrainerError as exc:
        raise TrainerError(f"{path}: {exc}") from exc
    if not name:
        raise TrainerError(f"{path}: cannot tell the model preset from the checkpoint; pass --model")
    model = CroCoMan(get_preset(name))
    ckpt_io.load_weights(model, ck, name, source=path)
    return model, ck, name


@torch.no_grad()
def evaluate(cfg: EvalConfig) -> dict:
    """``{kind: {"pairs", "loss_ref", "loss_no_ref", "gain"}}`` plus ``"all"``, ``"corrupt_skipped"`` and
    ``"provenance"`` (checkpoint path, size, mtime and SHA-256, its step and preset, the shards, the
    masking actually used and the seed), all written to ``--json-out`` too."""
    device = resolve_device(cfg.device, 0)
    ckpt_record = checkpoint_record(cfg.ckpt)  # before loading: what was hashed is what gets loaded
    model, ck, preset = load_model(cfg.ckpt, cfg.model)
    model.to(device).eval()
    run = ck.get("config") or {}
    shards = resolve_shards(cfg.shards, storage_options(cfg.storage_option))
    stream_cfg = StreamConfig(
        img_size=model.cfg.img_size, patch_size=model.cfg.patch_size, batch_size=cfg.batch_size,
        masking=cfg.masking or run.get("masking", "human"),
        mask_ratio=cfg.mask_ratio if cfg.mask_ratio is not None else run.get("mask_ratio", 0.75),
        human_threshold=run.get("human_threshold", 0.0), color_jitter=0.0, seed=cfg.seed, train=False)
    find_usable_pair(shards, stream_cfg)
    stream = PairStream(shards, stream_cfg)
    norm_pix = run.get("norm_pix_loss", True)
    use_bf16 = device.type == "cuda"
    sums: dict[str, list[float]] = {}
    corrupt = 0
    for i, batch in enumerate(make_loader(stream, cfg.workers, pin_memory=device.type == "cuda")):
        if cfg.max_batches and i >= cfg.max_batches:
            break
        corrupt += batch["corrupt"]
        if not batch["key"]:  # a count-only batch (trailing corrupt pairs)
            continue
        target = to_model_input(batch["target"].to(device))
        reference = to_model_input(batch["reference"].to(device))
        black = to_model_input(torch.zeros_like(batch["reference"]).to(device))
        visible, masked = batch["visible"].to(device), batch["masked"].to(device)
        patches = patchify(target, model.cfg.patch_size)
        losses = []
        for ref in (reference, black):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                pred, _ = model(target, ref, visible)
            losses.append(masked_mse_per_sample(pred, patches, masked, norm_pix).cpu())
        for j, kind in enumerate(batch["kind"]):
            for key in (kind, "all"):
                s = sums.setdefault(key, [0.0, 0.0, 0])
                s[0] += float(losses[0][j])
                s[1] += float(losses[1][j])
                s[2] += 1
    if not sums:
        raise TrainerError(f"no readable pairs in {cfg.shards}")
    results: dict = {}
    for kind, (with_ref, no_ref, n) in sorted(sums.items(), key=lambda kv: kv[0] == "all"):
        results[kind] = {"pairs": n, "loss_ref": with_ref / n, "loss_no_ref": no_ref / n,
                         "gain": (no_ref / with_ref) if with_ref > 0 else float("inf")}
    results["corrupt_skipped"] = corrupt
    results["provenance"] = {
        "checkpoint": ckpt_record, "step": ck.get("step"), "preset": preset,
        "shards": cfg.shards, "shard_urls": list(shards.urls),
        "masking": stream_cfg.masking, "mask_ratio": stream_cfg.mask_ratio,
        "human_threshold": stream_cfg.human_threshold, "norm_pix_loss": norm_pix, "seed": cfg.seed,
        "batch_size": cfg.batch_size, "max_batches": cfg.max_batches, "device": device.type,
    }
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return results


def checkpoint_record(path: str) -> dict:
    """What identifies the evaluated checkpoint: absolute path, size, mtime and SHA-256 (a missing
    file is left to :func:`load_model`, which names the problem)."""
    p = Path(path).absolute()
    try:
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return {"path": str(p)}
    return {"path": str(p), "bytes": st.st_size, "mtime": st.st_mtime, "sha256": digest}


def format_results(results: dict) -> str:
    """A small table: kind, pairs, loss with reference, loss with a black reference, gain."""
    lines = [f"{'kind':<12}{'pairs':>8}{'loss_ref':>12}{'loss_no_ref':>13}{'gain':>8}"]
    for kind, r in results.items():
        if isinstance(r, dict) and "pairs" in r:
            lines.append(f"{kind:<12}{r['pairs']:>8}{r['loss_ref']:>12.4f}{r['loss_no_ref']:>13.4f}{r['gain']:>8.3f}")
    lines.append(f"corrupt pairs skipped: {results['corrupt_skipped']}")
    return "\n".join(lines)
