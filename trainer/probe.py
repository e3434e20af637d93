"""``trainer probe``: what pre-training learned, measured by a small head on the labels the shards carry.

    load      the checkpoint as ``trainer eval`` loads it (ours or CroCo's), or 'random' weights (--seed)
    data      labelled samples (centre crops): TRAIN drawn by --seed (``--labels N``), VAL the first
              ``--val-samples`` in shard order, so every checkpoint and seed is scored on the same pairs
    features  the target's encoder tokens ``[B, N, De]`` or, ``--binocular``, the decoder's ``[B, N, Dd]``
              (reference as second view, every target patch visible)
    head      one linear map per token to r x r cells, r = patch / 4: ``[B, C, G*r, G*r]`` at 4 px
    train     AdamW, warm-up + cosine; a frozen backbone (its features computed once) or ``--finetune``
              (layer-wise lr decay)
    metrics   keypoints: PCK@0.05 / PCK@0.1 of the crop side on joints with visibility >= --min-visibility;
              silhouette: IoU per image (1 when both masks are empty), averaged; depth: AbsRel on person
              pixels after a least-squares scale and shift per image (relative depth)
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import DEFAULT_PRESET, ProbeConfig, TrainerError, get_preset, recorded
from .data import (ShardSet, _one_line, _shuffle, decode_probe_sample, read_shard, resolve_shards,
                   storage_options, to_model_input)
from .loss import unpatchify
from .model import CroCoMan

CELL = 4  # pixels per cell of the heads' output maps (r = patch / CELL cells per patch side)
SHUFFLE = 1000  # samples in the buffer that draws TRAIN's labelled samples (after a seeded shard order)
LOG_EVERY = 10
CHANNELS = {"keypoints": 17, "silhouette": 1, "depth": 1}


# --------------------------------------------------------------------------- metrics (pure, tested)


def pck(pred: np.ndarray, gt: np.ndarray, size: float, alphas=(0.05, 0.1), min_visibility: int = 1) -> dict:
    """PCK of ``pred`` ``[M, J, 2]`` against ``gt`` ``[M, J, 3]`` (x, y, visibility), pixels: the share of
    joints with visibility >= ``min_visibility`` within ``alpha * size``; None for each alpha when
    no joint counts. ``joints``: how many counted."""
    valid = gt[..., 2] >= min_visibility
    dist = np.linalg.norm(pred - gt[..., :2], axis=-1)[valid]
    out: dict = {f"pck@{a:g}": (float((dist <= a * size).mean()) if dist.size else None) for a in alphas}
    out["joints"] = int(valid.sum())
    return out


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-image IoU ``[M]`` of bool masks ``[M, H, W]``; 1 where both are empty (nothing to find, nothing found)."""
    inter = (pred & gt).sum(axis=(1, 2))
    union = (pred | gt).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def abs_rel(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-image AbsRel ``[M]`` = mean |a*pred + b - gt| / gt over ``valid`` pixels, with (a, b) the
    least-squares fit of pred to gt in each image (relative depth: scale and shift are free);
    NaN for an image without valid pixels. Arrays ``[M, H, W]``; gt > 0 where valid."""
    out = np.full(len(pred), np.nan)
    for i in range(len(pred)):
        p, g = pred[i][valid[i]].astype(np.float64), gt[i][valid[i]].astype(np.float64)
        if not g.size:
            continue
        var = p.var()
        a = ((p - p.mean()) * (g - g.mean())).mean() / var if var > 1e-12 else 0.0
        b = g.mean() - a * p.mean()
        out[i] = float(np.mean(np.abs(a * p + b - g) / g))
    return out


# --------------------------------------------------------------------------- losses and decoding


def heatmap_loss(logits: torch.Tensor, kp: torch.Tensor, sigma_px: float, min_visibility: int) -> torch.Tensor:
    """Cross-entropy between each joint's softmax over the cells of ``logits`` ``[B, J, h, h]`` and a
    normalised Gaussian at ``kp`` ``[B, J, 3]`` (pixels, visibility); joints below ``min_visibility`` do not count."""
    centres = (torch.arange(logits.shape[-1], device=kp.device, dtype=torch.float32) + 0.5) * CELL
    # separable: the outer product of two normalised 1D Gaussians is the normalised 2D one (2h exps, not h^2)
    gx, gy = (torch.softmax(-(centres - kp[..., i:i + 1]) ** 2 / (2 * sigma_px ** 2), dim=-1) for i in (0, 1))
    target = (gy[..., :, None] * gx[..., None, :]).flatten(2)  # [B, J, h*h], sums to 1
    ce = -(target * F.log_softmax(logits.float().flatten(2), dim=-1)).sum(-1)  # [B, J]
    w = (kp[..., 2] >= min_visibility).float()
    return (ce * w).sum() / w.sum().clamp_min(1.0)


def decode_heatmaps(logits: torch.Tensor) -> torch.Tensor:
    """``[B, J, h, w]`` -> ``[B, J, 2]`` pixel (x, y): the arg-max cell refined by the softmax-weighted
    mean over its 3 x 3 neighbourhood."""
    b, j, h, w = logits.shape
    flat = logits.float().flatten(2)
    idx = flat.argmax(-1)
    iy, ix = idx // w, idx % w
    probs = flat.softmax(-1).view(b, j, h, w)
    ys = torch.arange(h, device=logits.device)
    xs = torch.arange(w, device=logits.device)
    win = (((ys[:, None] - iy[..., None, None]).abs() <= 1) & ((xs[None, :] - ix[..., None, None]).abs() <= 1))
    p = probs * win
    s = p.sum((-2, -1)).clamp_min(1e-12)
    x = (p.sum(-2) * (xs + 0.5)).sum(-1) / s
    y = (p.sum(-1) * (ys + 0.5)).sum(-1) / s
    return torch.stack([x, y], dim=-1) * CELL


def _normalise(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row: (x - median) / mean absolute deviation, over the valid entries (``[B, K]``)."""
    med = torch.nanmedian(torch.where(valid, x, torch.full_like(x, float("nan"))), dim=1, keepdim=True).values
    med = torch.nan_to_num(med)
    dev = torch.where(valid, (x - med).abs(), torch.zeros_like(x)).sum(1, keepdim=True)
    dev = dev / valid.sum(1, keepdim=True).clamp_min(1)
    return (x - med) / dev.clamp_min(1e-6)


def depth_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale- and shift-invariant L1 (median / mean-deviation normalised) on the valid cells ``[B, 1, h, w]``."""
    p, t, v = pred.float().flatten(1), target.flatten(1), valid.flatten(1)
    diff = (_normalise(p, v) - _normalise(t, v)).abs()
    return torch.where(v, diff, torch.zeros_like(diff)).sum() / v.sum().clamp_min(1)


# --------------------------------------------------------------------------- data


@dataclass
class LabelledSet:
    """Labelled samples in memory: uint8 images ``[M, S, S, 3]``, masks ``[M, S, S]``, keypoints
    ``[M, 17, 3]`` (keypoints task), depth ``[M, S, S]`` mm (depth task), references (binocular)."""

    target: np.ndarray
    mask: np.ndarray
    keys: list[str]
    reference: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    depth: np.ndarray | None = None
    corrupt: int = 0
    unlabelled: int = 0

    def __len__(self) -> int:
        return len(self.keys)


def _raw_samples(shards: ShardSet, seed: int | None):
    """Raw samples of ``shards``: in shard order (``seed`` None), or with the shards in a seeded order
    through a seeded shuffle buffer. Unreadable shards are reported on stderr and skipped."""
    urls = list(shards.urls)
    rng = random.Random(f"probe-{seed}")
    if seed is not None:
        rng.shuffle(urls)

    def stream():
        for url in urls:
            errors: list[Exception] = []
            yield from read_shard(url, handler=lambda exc: errors.append(exc) or True, options=shards.options)
            if errors:
                print(f"trainer: warning: skipping the rest of shard {url}: {_one_line(errors[0])}", file=sys.stderr)

    return stream() if seed is None else _shuffle(stream(), SHUFFLE, rng)


def load_labelled(shards: ShardSet, spec: str, cfg: ProbeConfig, size: int, patch: int, limit: int,
                  seed: int | None, exact: bool = False) -> LabelledSet:
    """The first ``limit`` (0 = all) samples of ``shards`` labelled for ``cfg.task`` (see ``_raw_samples``
    for the order); corrupt samples are skipped and counted. TrainerError if none is labelled, if
    fewer than ``limit`` are and ``exact``, or (depth) when a sample has no depth map."""
    keep: dict[str, list] = {k: [] for k in ("target", "mask", "keys", "reference", "keypoints", "depth")}
    corrupt = unlabelled = 0
    for s in _raw_samples(shards, seed):
        try:
            d = decode_probe_sample(s, size, patch, depth=cfg.task == "depth")
        except ValueError as exc:
            corrupt += 1
            if corrupt <= 3:
                print(f"trainer: warning: skipping corrupt sample {s.get('__key__')}: {_one_line(exc)}",
                      file=sys.stderr)
            continue
        if cfg.task == "keypoints":
            labelled = d["keypoints"] is not None and bool((d["keypoints"][:, 2] >= cfg.min_visibility).any())
        elif cfg.task == "depth":
            if d["depth"] is None:
                raise TrainerError(f"--task depth needs depth maps: sample {d['key']} of {s['__url__']} has no "
                                   "target.depth.png (synthetic builds have them; real sources do not)")
            labelled = bool(((d["mask"] > 127) & (d["depth"] > 0)).any())
        else:
            labelled = True
        if not labelled:
            unlabelled += 1
            continue
        for k in ("target", "mask", "keypoints", "depth"):
            keep[k].append(d[k])
        keep["keys"].append(d["key"])
        if cfg.binocular:
            keep["reference"].append(d["reference"])
        if limit and len(keep["keys"]) == limit:
            break
    n = len(keep["keys"])
    if not n:
        raise TrainerError(f"no sample of {spec} is labelled for --task {cfg.task} ({corrupt} corrupt, "
                           f"{unlabelled} without {'visible keypoints' if cfg.task == 'keypoints' else 'labels'})")
    if exact and limit and n < limit:
        raise TrainerError(f"--labels {limit}: {spec} holds only {n} samples labelled for --task {cfg.task}")
    return LabelledSet(
        target=np.stack(keep["target"]), mask=np.stack(keep["mask"]), keys=keep["keys"],
        reference=np.stack(keep["reference"]) if cfg.binocular else None,
        keypoints=np.stack(keep["keypoints"]) if cfg.task == "keypoints" else None,
        depth=np.stack(keep["depth"]) if cfg.task == "depth" else None, corrupt=corrupt, unlabelled=unlabelled)


def cell_targets(task: str, data: LabelledSet, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """Training targets of samples ``idx`` at cell resolution (CPU tensors)."""
    if task == "keypoints":
        return {"kp": torch.from_numpy(data.keypoints[idx])}
    mask = torch.from_numpy(data.mask[idx]).float()[:, None] / 255.0  # [B, 1, S, S]
    if task == "silhouette":
        return {"mask": F.avg_pool2d(mask, CELL)}
    depth_m = torch.from_numpy(data.depth[idx].astype(np.float32))[:, None] / 1000.0
    valid = ((mask > 0.5) & (depth_m > 0)).float()
    cover = F.avg_pool2d(valid, CELL)
    mean_depth = F.avg_pool2d(depth_m * valid, CELL) / cover.clamp_min(1e-6)
    return {"depth": mean_depth, "valid": cover > 0}


# --------------------------------------------------------------------------- the network


class ProbeNet(nn.Module):
    """Backbone (CroCo encoder, + decoder with ``binocular``) and a per-token linear head to
    ``channels`` maps ``[B, C, G*r, G*r]``, r = patch / CELL."""

    def __init__(self, model: CroCoMan, channels: int, binocular: bool):
        super().__init__()
        if model.cfg.patch_size % CELL:
            raise TrainerError(f"the probe needs a patch size divisible by {CELL}, got {model.cfg.patch_size}")
        self.model, self.channels, self.binocular = model, channels, binocular
        self.r = model.cfg.patch_size // CELL
        dim = model.cfg.dec_embed_dim if binocular else model.cfg.enc_embed_dim
        self.head = nn.Linear(dim, channels * self.r * self.r)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def features(self, target: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised images ``[B, 3, H, W]`` -> tokens ``[B, N, D]``."""
        feat, _ = self.model.encode(target)
        if not self.binocular:
            return feat
        ref, _ = self.model.encode(reference)
        b, n = feat.shape[:2]
        everything = torch.arange(n, device=feat.device).expand(b, n)
        return self.model.decode(feat, everything, ref)

    def maps(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.head(tokens), self.r, self.channels)


def trainable_groups(net: ProbeNet, cfg: ProbeConfig, finetune: bool) -> list[dict]:
    """AdamW groups: the head at ``lr``; with ``finetune`` the encoder (and decoder when binocular)
    at ``lr * layer_decay ** (layers - layer)``, layer 0 = patch embedding; no weight decay on
    norms and biases. Everything else is frozen."""
    m = net.model.cfg
    top = m.enc_depth + 1 + (m.dec_depth + 1 if net.binocular else 0) + 1

    def layer(name: str) -> int | None:
        parts = name.split(".")
        if parts[0] in ("patch_embed", "enc_pos_embed"):
            return 0
        if parts[0] == "enc_blocks":
            return int(parts[1]) + 1
        if parts[0] == "enc_norm":
            return m.enc_depth + 1
        if not net.binocular:
            return None
        if parts[0] == "decoder_embed":
            return m.enc_depth + 1
        if parts[0] == "dec_blocks":
            return m.enc_depth + 2 + int(parts[1])
        if parts[0] == "dec_norm":
            return top - 1
        return None  # mask token, pixel head: unused here

    groups: dict[tuple, list] = {}
    for name, p in net.model.named_parameters():
        lid = layer(name) if finetune else None
        p.requires_grad_(lid is not None)
        if lid is not None:
            decay = 0.0 if p.ndim <= 1 or name.endswith(".bias") else cfg.weight_decay
            groups.setdefault((cfg.layer_decay ** (top - lid), decay), []).append(p)
    for name, p in net.head.named_parameters():
        groups.setdefault((1.0, 0.0 if p.ndim <= 1 else cfg.weight_decay), []).append(p)
    return [{"params": ps, "lr": cfg.lr * scale, "lr_scale": scale, "weight_decay": wd}
            for (scale, wd), ps in groups.items()]


# --------------------------------------------------------------------------- run


def load_backbone(cfg: ProbeConfig) -> tuple[CroCoMan, dict]:
    """The model to probe and its provenance record."""
    if cfg.ckpt == "random":
        preset = cfg.model or DEFAULT_PRESET
        torch.manual_seed(cfg.seed)
        return CroCoMan(get_preset(preset)), {"path": "random", "preset": preset, "init_seed": cfg.seed}
    from .evaluate import checkpoint_record, load_model

    record = checkpoint_record(cfg.ckpt)
    model, ck, preset = load_model(cfg.ckpt, cfg.model)
    run = ck.get("config") or {}
    keep = ("shards", "steps", "batch_size", "masking", "mask_ratio", "human_threshold", "loss_patches",
            "norm_pix_loss", "kp_loss_weight", "mix", "seed", "init")
    record.update(step=ck.get("step"), preset=preset, run={k: run[k] for k in keep if k in run})
    return model, record


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class Runtime:
    """Device, bf16 autocast (as the training loop: on GPU by default) and the model inputs of samples."""

    def __init__(self, device: torch.device, bf16: bool, binocular: bool):
        self.device, self.bf16, self.binocular = device, bf16, binocular

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def inputs(self, data: LabelledSet, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        tgt = to_model_input(torch.from_numpy(data.target[idx]).to(self.device))
        ref = to_model_input(torch.from_numpy(data.reference[idx]).to(self.device)) if self.binocular else None
        return tgt, ref


def fit(net: ProbeNet, cfg: ProbeConfig, train: LabelledSet, rt: Runtime, writer=None) -> list[tuple[int, float]]:
    """Train the head (and with ``cfg.finetune`` the backbone) on ``train``; returns the logged
    ``(step, loss)``. Frozen, the backbone gets no gradient and its features are computed once."""
    optimizer = torch.optim.AdamW(trainable_groups(net, cfg, cfg.finetune), lr=cfg.lr, betas=(0.9, 0.999))
    net.train()
    net.model.train(cfg.finetune)
    cached = None
    if not cfg.finetune:  # the backbone and the crops never change: every sample's features once
        with torch.no_grad(), rt.autocast():
            cached = torch.cat([net.features(*rt.inputs(train, np.arange(i, min(i + cfg.batch_size, len(train)))))
                                for i in range(0, len(train), cfg.batch_size)])
    order_rng = np.random.default_rng([cfg.seed, 2])
    order, pos = order_rng.permutation(len(train)), 0
    losses = []
    for step in range(cfg.steps):
        if pos + cfg.batch_size > len(order) and pos > 0:  # next epoch (a set smaller than a batch: all of it)
            order, pos = order_rng.permutation(len(train)), 0
        idx = np.sort(order[pos:pos + cfg.batch_size])
        pos += cfg.batch_size
        for g in optimizer.param_groups:
            g["lr"] = cfg.lr * g["lr_scale"] * _lr_factor(step, cfg.steps)
        targets = {k: v.to(rt.device) for k, v in cell_targets(cfg.task, train, idx).items()}
        with rt.autocast():
            tokens = cached[torch.from_numpy(idx).to(rt.device)] if cached is not None else \
                net.features(*rt.inputs(train, idx))
            maps = net.maps(tokens)
        loss = task_loss(cfg, maps, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % LOG_EVERY == 0 or step + 1 == cfg.steps:
            losses.append((step + 1, loss.item()))
            if not math.isfinite(losses[-1][1]):
                raise TrainerError(f"the probe's loss became NaN/Inf at step {step + 1}; lower --lr")
            if writer is not None:
                writer.add_scalar(f"probe/{cfg.task}/loss", losses[-1][1], step + 1)
    return losses


def run_probe(cfg: ProbeConfig) -> dict:
    """Train the probe on TRAIN and score it on VAL; returns (and writes to ``--json-out``) the results."""
    from .loop import resolve_device

    cfg.validate()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device, 0)
    rt = Runtime(device, cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"),
                 cfg.binocular)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    opts = storage_options(cfg.storage_option)
    train_shards, val_shards = resolve_shards(cfg.shards, opts), resolve_shards(cfg.val_shards, opts)
    shared = sorted(set(train_shards.urls) & set(val_shards.urls))
    if shared:
        raise TrainerError(f"--val-shards must be held out: {len(shared)} shard(s) are also in --shards "
                           f"(e.g. {shared[0]})")
    model, ckpt_record = load_backbone(cfg)
    size, patch = model.cfg.img_size, model.cfg.patch_size
    val = load_labelled(val_shards, "--val-shards", cfg, size, patch, cfg.val_samples, seed=None)
    train = load_labelled(train_shards, "--shards", cfg, size, patch, cfg.labels, seed=cfg.seed, exact=True)
    t_data = time.perf_counter()

    torch.manual_seed(cfg.seed)  # the head starts the same for every checkpoint probed with this seed
    net = ProbeNet(model, CHANNELS[cfg.task], cfg.binocular).to(device)
    before = None if cfg.finetune else {k: v.detach().clone() for k, v in net.model.state_dict().items()}
    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(cfg.tensorboard)
    losses = fit(net, cfg, train, rt, writer)
    t_train = time.perf_counter()
    metrics = evaluate_probe(net, cfg, val, rt)
    unchanged = None
    if before is not None:
        after = net.model.state_dict()
        unchanged = all(torch.equal(before[k], after[k]) for k in before)
        if not unchanged:  # a bug, not a user error: never report a "frozen" probe that was not
            raise RuntimeError("the frozen backbone's weights changed during the probe")
    t_end = time.perf_counter()
    results = {
        "task": cfg.task, "metrics": metrics, "checkpoint": ckpt_record,
        "shards": cfg.shards, "val_shards": cfg.val_shards, "labels": cfg.labels, "seed": cfg.seed,
        "finetune": cfg.finetune, "binocular": cfg.binocular,
        "train": {"samples": len(train), "keys": train.keys, "corrupt_skipped": train.corrupt,
                  "unlabelled_skipped": train.unlabelled, "steps": cfg.steps,
                  "final_loss": losses[-1][1] if losses else None, "loss_curve": losses},
        "val": {"samples": len(val), "keys": val.keys, "corrupt_skipped": val.corrupt,
                "unlabelled_skipped": val.unlabelled},
        "backbone_unchanged": unchanged, "device": str(device), "bf16": rt.bf16, "torch": torch.__version__,
        "seconds": {"data": round(t_data - t_start, 2), "train": round(t_train - t_data, 2),
                    "eval": round(t_end - t_train, 2), "total": round(t_end - t_start, 2)},
        "config": recorded(cfg),
    }
    if writer is not None:
        for name, value in metrics.items():
            if isinstance(value, float):
                writer.add_scalar(f"probe/{cfg.task}/{name}", value, cfg.steps)
        writer.add_text("probe/provenance", json.dumps({k: v for k, v in results.items()
                                                        if k not in ("train", "val")}, indent=1))
        writer.close()
    if cfg.json_out:
        from manifests.layout import write_json_atomic

        try:
            Path(cfg.json_out).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(Path(cfg.json_out), results)
        except OSError as exc:
            raise TrainerError(f"cannot write {cfg.json_out}: {' '.join(str(exc).split())}") from exc
    return results


def task_loss(cfg: ProbeConfig, maps: torch.Tensor, targets: dict) -> torch.Tensor:
    """The head's training loss on output maps ``[B, C, h, h]``."""
    if cfg.task == "keypoints":
        return heatmap_loss(maps, targets["kp"], cfg.kp_sigma, cfg.min_visibility)
    if cfg.task == "silhouette":
        return F.binary_cross_entropy_with_logits(maps.float(), targets["mask"])
    return depth_loss(maps, targets["depth"], targets["valid"])


@torch.no_grad()
def evaluate_probe(net: ProbeNet, cfg: ProbeConfig, val: LabelledSet, rt: Runtime) -> dict:
    """The task's metrics on ``val`` (batches of ``--batch-size``)."""
    net.eval()
    size = net.model.cfg.img_size
    preds, per_image = [], []
    for i in range(0, len(val), cfg.batch_size):
        idx = np.arange(i, min(i + cfg.batch_size, len(val)))
        with rt.autocast():
            maps = net.maps(net.features(*rt.inputs(val, idx))).float()
        if cfg.task == "keypoints":
            preds.append(decode_heatmaps(maps).cpu().numpy())
            continue
        full = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0].cpu().numpy()
        person = val.mask[idx] > 127
        if cfg.task == "silhouette":
            per_image.append(mask_iou(full > 0, person))
        else:
            depth = val.depth[idx].astype(np.float64) / 1000.0
            per_image.append(abs_rel(full, depth, person & (depth > 0)))
    if cfg.task == "keypoints":
        return pck(np.concatenate(preds), val.keypoints, size, min_visibility=cfg.min_visibility)
    values = np.concatenate(per_image)
    if cfg.task == "silhouette":
        return {"iou": float(values.mean()), "images": int(values.size)}
    scored = values[np.isfinite(values)]
    return {"abs_rel": float(scored.mean()) if scored.size else None, "images": int(scored.size)}


def format_results(results: dict) -> str:
    """A short table: what was probed, then one line per metric."""
    ck = results["checkpoint"]
    what = ck["path"] + (f" (step {ck['step']}, {ck.get('preset')})" if ck.get("step") is not None
                         else f" ({ck.get('preset')})")
    mode = ("fine-tuned" if results["finetune"] else "frozen") + (", binocular" if results["binocular"] else "")
    lines = [f"probe {results['task']}: {what}, seed {results['seed']}, {mode}, "
             f"train {results['train']['samples']} / val {results['val']['samples']} samples, "
             f"{results['seconds']['total']:.0f} s",
             f"{'metric':<12}{'value':>10}"]
    for name, value in results["metrics"].items():
        lines.append(f"{name:<12}{value:>10.4f}" if isinstance(value, float) else f"{name:<12}{str(value):>10}")
    return "\n".join(lines)


def main(cfg: ProbeConfig) -> dict:
    """CLI entry: run, print the table."""
    results = run_probe(cfg)
    print(format_results(results))
    return results
