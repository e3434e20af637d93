"""Tiny pairgen-format shards for the trainer tests (synthetic "person" blobs with matching silhouettes).

Each pair: a background with a vertical colour ramp, and an elliptical "person" textured with
stripes. The reference shows the same person (same stripes) shifted and with another brightness,
so the reference carries information about the masked target. Written in the ``manifests.layout``
layout: tars, per-shard Parquet manifests, and stats files (the completion markers).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from manifests import layout
from manifests.sample import COCO17, encode_jpeg, encode_sample, sample_key
from manifests.schema import manifest_row, rows_to_table

# Keypoint template in ellipse units (u along x, v along y), COCO-17 order.
_KP_TEMPLATE = np.array([
    (0, -0.85), (-0.1, -0.9), (0.1, -0.9), (-0.2, -0.85), (0.2, -0.85),
    (-0.45, -0.55), (0.45, -0.55), (-0.6, -0.2), (0.6, -0.2), (-0.65, 0.1), (0.65, 0.1),
    (-0.3, 0.1), (0.3, 0.1), (-0.3, 0.45), (0.3, 0.45), (-0.3, 0.8), (0.3, 0.8),
], dtype=np.float64)
assert len(_KP_TEMPLATE) == len(COCO17)


def _render(size: int, cx: float, cy: float, ax: float, ay: float, bg_lo: np.ndarray, bg_hi: np.ndarray,
            colour: np.ndarray, period: float, phase: float, gain: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = (yy / (size - 1))[..., None]
    img = bg_lo * (1 - t) + bg_hi * t
    inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (yy - cy) / period + phase)
    person = colour * (0.4 + 0.6 * stripes[..., None]) * gain
    img = np.where(inside[..., None], person, img)
    return np.clip(img, 0, 255).astype(np.uint8), (inside * 255).astype(np.uint8)


def make_pair(rng: np.random.Generator, size: int = 256, person: bool = True):
    """(target, reference, target_mask, reference_mask, kp_target, kp_reference) of one synthetic pair."""
    bg_lo, bg_hi = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    colour = rng.uniform(80, 255, 3)
    period, phase = rng.uniform(10, 30), rng.uniform(0, 2 * np.pi)
    ax, ay = rng.uniform(0.12, 0.22) * size, rng.uniform(0.25, 0.38) * size
    cx, cy = rng.uniform(0.35, 0.65) * size, rng.uniform(0.4, 0.6) * size
    if not person:
        ax = ay = 1e-3
    dx, dy = rng.uniform(-0.1, 0.1, 2) * size
    tgt, tmask = _render(size, cx, cy, ax, ay, bg_lo, bg_hi, colour, period, phase, 1.0)
    ref, rmask = _render(size, cx + dx, cy + dy, ax, ay, bg_lo[::-1], bg_hi[::-1], colour, period,
                         phase + 2 * np.pi * dy / period, rng.uniform(0.8, 1.2))
    if not person:
        tmask[:] = 0
        rmask[:] = 0

    def kps(x0, y0):
        return [[float(x0 + u * ax), float(y0 + v * ay), 1.0] for u, v in _KP_TEMPLATE]

    return tgt, ref, tmask, rmask, kps(cx, cy), kps(cx + dx, cy + dy)


def _human_fraction(mask: np.ndarray, patch: int = 16) -> float:
    g = mask.shape[0] // patch
    return float((mask.reshape(g, patch, g, patch).max(axis=(1, 3)) > 0).mean())


def build_shards(out: Path, source: str = "synthetic", n_shards: int = 2, per_shard: int = 16,
                 size: int = 256, seed: int = 0, keypoints: bool = True, silhouettes: bool = True,
                 corrupt_every: int = 0, no_person_every: int = 0, first_index: int = 0,
                 corrupt_from: int | None = None, drop: dict[int, tuple[str, ...]] | None = None) -> Path:
    """Write ``n_shards`` finished shards of ``per_shard`` pairs into ``out``; returns ``out``.

    ``corrupt_every=k`` replaces every k-th target JPEG with garbage bytes, ``corrupt_from=i`` the
    target JPEG of every pair from index i on; ``no_person_every=k`` makes every k-th pair
    person-free (empty silhouettes); ``silhouettes=False`` omits the masks; ``drop={i: suffixes}``
    omits those members of pair i (in every shard). ``per_shard=0`` writes empty tars.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for s in range(first_index, first_index + n_shards):
        name = layout.shard_name(source, s)
        rows = []
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(per_shard):
                key = sample_key(source, s, i)
                person = not (no_person_every and i % no_person_every == no_person_every - 1)
                tgt, ref, tmask, rmask, kpt, kpr = make_pair(rng, size, person)
                tjpg, rjpg = encode_jpeg(tgt), encode_jpeg(ref)
                kind = ("cross_view", "cross_pose")[i % 2]
                row = {
                    "key": key, "shard": f"{name}.tar", "source": source, "kind": kind, "split": "train",
                    "subject": f"body{i % 3}", "sequence": f"seq{s}", "track": "0",
                    "camera_target": "cam0", "camera_reference": "cam1" if kind == "cross_view" else "cam0",
                    "frame_target": 2 * i, "frame_reference": 2 * i + (kind == "cross_pose"),
                    "time_gap_s": 0.5 if kind == "cross_pose" else None,
                    "human_fraction_target": _human_fraction(tmask),
                    "human_fraction_reference": _human_fraction(rmask),
                    "silhouette_method": "render", "image_size": size,
                    "jpeg_bytes_target": len(tjpg), "jpeg_bytes_reference": len(rjpg),
                    "has_depth": False, "has_keypoints": keypoints, "seed": seed,
                }
                rows.append(row)
                meta = dict(row)
                if keypoints:
                    meta["keypoints_target"], meta["keypoints_reference"] = kpt, kpr
                if (corrupt_every and i % corrupt_every == corrupt_every - 1) or \
                        (corrupt_from is not None and i >= corrupt_from):
                    tjpg = b"\xff\xd8 not a jpeg"
                members = encode_sample(key, tjpg, rjpg, tmask, rmask, meta)
                if not silhouettes:
                    members = {k: v for k, v in members.items() if "mask" not in k}
                members = {k: v for k, v in members.items() if k not in (drop or {}).get(i, ())}
                for suffix, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        layout.tar_path(out, name).write_bytes(buf.getvalue())
        mpath = layout.manifest_path(out, name)
        mpath.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows_to_table([manifest_row(r) for r in rows]), mpath)
        layout.write_json_atomic(layout.stats_path(out, name), {"samples": per_shard})
    return out


if __name__ == "__main__":  # python tests/trainer_shards.py OUT [n_shards] [per_shard]
    import sys

    build_shards(Path(sys.argv[1]), n_shards=int(sys.argv[2]) if len(sys.argv) > 2 else 4,
                 per_shard=int(sys.argv[3]) if len(sys.argv) > 3 else 64)
