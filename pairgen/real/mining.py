"""Pair mining on a real unit: which (track, camera, frame) pairs to build. Deterministic per unit.

cross_view: one (track, frame) seen by two cameras; with calibration, the angle between the two
cameras' directions towards the person is recorded (and must reach ``min_view_angle_deg``).
cross_pose: one (track, camera) at two frames whose gap is drawn uniformly in
[min_gap_s, max_gap_s] (the nearest observed frame to the drawn time is taken, and must keep the
gap in range); never the same frame twice; poses that barely moved are skipped.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pairgen.real.types import Unit


@dataclass(frozen=True)
class PairSpec:
    unit: str
    kind: str
    track: str
    cam_target: str
    cam_reference: str
    frame_target: int
    frame_reference: int
    view_angle_deg: float | None = None
    time_gap_s: float | None = None
    motion: float | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def unit_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def person_center(unit: Unit, track: str, frame: int) -> np.ndarray | None:
    if unit.joints3d is None:
        return None
    try:
        j = np.asarray(unit.joints3d(track, frame), np.float64)
    except (KeyError, IndexError, ValueError):
        return None
    j = j[np.isfinite(j).all(1)]
    return j.mean(0) if len(j) else None


def view_angle(unit: Unit, cam_a: str, cam_b: str, center: np.ndarray | None) -> float | None:
    """Angle (deg) between the directions from each camera to the person (or between optical axes);
    None when a camera is not calibrated or a direction is undefined (zero or not finite)."""
    ca, cb = unit.calibration.get(cam_a), unit.calibration.get(cam_b)
    if ca is None or cb is None:
        return None
    if center is not None:
        da, db = center - ca.center, center - cb.center
    else:
        da, db = ca.R[2], cb.R[2]
    norms = float(np.linalg.norm(da) * np.linalg.norm(db))
    if not (np.isfinite(norms) and norms > 0):  # the person at a camera centre, or a broken calibration
        return None
    cos = float(np.dot(da, db) / norms)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _motion(unit: Unit, track: str, cam: str, fa: int, fb: int) -> float | None:
    """Mean displacement of the joints seen in both frames, over the person's box height."""
    a = unit.observations[(track, cam, fa)].keypoints
    b = unit.observations[(track, cam, fb)].keypoints
    if a is None or b is None:
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1) & (a[:, 2] > 0) & (b[:, 2] > 0)
    if ok.sum() < 3:
        return None
    h = max(np.ptp(a[ok, 1]), np.ptp(a[ok, 0]), 1.0)
    return float(np.linalg.norm(a[ok, :2] - b[ok, :2], axis=1).mean() / h)


def mine_pairs(unit: Unit, n_cross_view: int, n_cross_pose: int, seed: int, min_view_angle_deg: float = 0.0,
               min_gap_s: float = 0.25, max_gap_s: float = 1.5, min_motion: float = 0.01) -> list[PairSpec]:
    """Up to the requested numbers of distinct pairs of each kind (fewer when the unit has fewer)."""
    rng = unit_rng(seed, unit.name)
    by_instant: dict[tuple[str, int], list[str]] = defaultdict(list)
    by_view: dict[tuple[str, str], list[int]] = defaultdict(list)
    for (track, cam, frame) in sorted(unit.observations):
        by_instant[(track, frame)].append(cam)
        by_view[(track, cam)].append(frame)
    out: list[PairSpec] = []
    seen: set = set()

    instants = [k for k, cams in sorted(by_instant.items()) if len(cams) >= 2]
    tries = 0
    while instants and sum(p.kind == "cross_view" for p in out) < n_cross_view and tries < 20 * n_cross_view + 20:
        tries += 1
        track, frame = instants[int(rng.integers(len(instants)))]
        cams = by_instant[(track, frame)]
        a, b = (cams[i] for i in rng.choice(len(cams), 2, replace=False))
        key = ("cv", track, frame, a, b)
        if key in seen:
            continue
        angle = view_angle(unit, a, b, person_center(unit, track, frame))
        if min_view_angle_deg > 0 and (angle is None or angle < min_view_angle_deg):
            continue
        seen.add(key)
        out.append(PairSpec(unit.name, "cross_view", track, a, b, frame, frame, view_angle_deg=angle))

    views = [k for k, frames in sorted(by_view.items()) if len(frames) >= 2]
    tries = 0
    while views and sum(p.kind == "cross_pose" for p in out) < n_cross_pose and tries < 20 * n_cross_pose + 20:
        tries += 1
        track, cam = views[int(rng.integers(len(views)))]
        frames = np.array(by_view[(track, cam)])
        fa = int(frames[int(rng.integers(len(frames)))])
        gap = rng.uniform(min_gap_s, max_gap_s) * (1 if rng.random() < 0.5 else -1)
        fb = int(frames[np.argmin(np.abs(frames - (fa + gap * unit.fps)))])
        dt = abs(fb - fa) / unit.fps
        if fb == fa or not (min_gap_s - 0.5 / unit.fps <= dt <= max_gap_s + 0.5 / unit.fps):
            continue
        key = ("cp", track, cam, min(fa, fb), max(fa, fb))
        if key in seen:
            continue
        seen.add(key)
        motion = _motion(unit, track, cam, fa, fb)
        if motion is not None and motion < min_motion:
            continue
        out.append(PairSpec(unit.name, "cross_pose", track, cam, cam, fa, fb, time_gap_s=round(dt, 6),
                            motion=None if motion is None else round(motion, 6)))
    return out
