"""Anatomical degrees of freedom with joint limits, mapped onto a body model's bones.

A pose is a vector of named joint angles (radians), each with a range from the usual
range-of-motion tables (rounded, and kept conservative so renders stay plausible). Angles are
rotations about axes of the canonical body frame at rest: +X = the person's left, +Y = behind
the person, +Z = up (anny's frame). Left/right DOFs mirror each other (an axial vector mirrored
through the sagittal plane is (x, -y, -z)).

Each model-specific mapping (:class:`AnnyRig`) turns the angle vector into per-bone rotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dof:
    name: str
    lo: float
    hi: float


# Ranges in radians. Sign conventions: positive = flexion forward / abduction outward / knee bend.
_BILATERAL = (
    ("hip_flex", -0.45, 2.0),
    ("hip_abd", -0.3, 0.8),
    ("hip_twist", -0.5, 0.5),
    ("knee", 0.0, 2.3),
    ("ankle", -0.45, 0.6),
    ("clavicle", -0.15, 0.3),
    ("shoulder_abd", -0.65, 2.3),
    ("shoulder_flex", -0.8, 2.6),
    ("shoulder_twist", -0.9, 0.9),
    ("elbow", 0.0, 2.4),
    ("wrist", -0.7, 0.7),
)
_AXIAL = (
    ("spine_flex", -0.4, 1.3),
    ("spine_bend", -0.5, 0.5),
    ("spine_twist", -0.7, 0.7),
    ("neck_flex", -0.6, 0.8),
    ("neck_bend", -0.5, 0.5),
    ("neck_twist", -1.1, 1.1),
)

DOFS: tuple[Dof, ...] = tuple(
    [Dof(f"{s}_{n}", lo, hi) for n, lo, hi in _BILATERAL for s in ("l", "r")]
    + [Dof(n, lo, hi) for n, lo, hi in _AXIAL]
)
DOF_NAMES = tuple(d.name for d in DOFS)
DOF_INDEX = {n: i for i, n in enumerate(DOF_NAMES)}
LOWER = np.array([d.lo for d in DOFS])
UPPER = np.array([d.hi for d in DOFS])


def clamp(angles: np.ndarray) -> np.ndarray:
    """Clip a [..., D] angle array to the joint limits."""
    return np.clip(angles, LOWER, UPPER)


def mirror(angles: np.ndarray) -> np.ndarray:
    """Left/right mirror of a [..., D] pose (swap sides, negate lateral bends and twists)."""
    out = angles.copy()
    for n, _, _ in _BILATERAL:
        li, ri = DOF_INDEX[f"l_{n}"], DOF_INDEX[f"r_{n}"]
        out[..., li], out[..., ri] = angles[..., ri], angles[..., li]
    for n in ("spine_bend", "spine_twist", "neck_bend", "neck_twist"):
        out[..., DOF_INDEX[n]] *= -1
    return out


def axis_angle_to_matrix(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues: unit axis [3] and angles [...] -> rotation matrices [..., 3, 3]."""
    a = axis / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    s = np.sin(angle)[..., None, None]
    c = np.cos(angle)[..., None, None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def _mirror_axis(axis) -> np.ndarray:
    x, y, z = axis
    return np.array([x, -y, -z], dtype=np.float64)


class AnnyRig:
    """Maps DOF angles onto anny's 104-bone ``local-ref`` pose parameters ([B, 104, 4, 4]).

    Each DOF is a list of (bone, axis, share): the bone rotates by share*angle about the axis.
    Rotations of one bone compose in DOF order. Hinge axes of the elbows are computed from the
    rest skeleton so that flexion swings the forearm forward whatever the model's rest arm angle.
    """

    def __init__(self, bone_labels: list[str], rest_heads: np.ndarray):
        self.bone_labels = list(bone_labels)
        self.bone_index = {b: i for i, b in enumerate(bone_labels)}
        heads = np.asarray(rest_heads, dtype=np.float64)
        X, Y, Z = np.eye(3)
        fwd = -Y
        spine = [b for b in ("spine01", "spine02", "spine03", "spine04", "spine05") if b in self.bone_index]
        neck = [b for b in ("neck01", "neck02", "neck03", "head") if b in self.bone_index]
        self.terms: list[tuple[int, int, np.ndarray, float]] = []  # (dof, bone, axis, share)

        def add(dof: str, bone: str, axis, share: float = 1.0) -> None:
            self.terms.append((DOF_INDEX[dof], self.bone_index[bone], np.asarray(axis, float), share))

        for side, sfx in (("l", ".L"), ("r", ".R")):
            m = (lambda a: np.asarray(a, float)) if side == "l" else _mirror_axis
            forearm = heads[self.bone_index["wrist" + sfx]] - heads[self.bone_index["lowerarm01" + sfx]]
            forearm /= np.linalg.norm(forearm)
            elbow_axis = np.cross(forearm, fwd)
            elbow_axis /= np.linalg.norm(elbow_axis)
            upperarm = heads[self.bone_index["lowerarm01" + sfx]] - heads[self.bone_index["upperarm01" + sfx]]
            upperarm /= np.linalg.norm(upperarm)
            add(f"{side}_hip_flex", "upperleg01" + sfx, -X)
            add(f"{side}_hip_abd", "upperleg01" + sfx, m(-Y))
            add(f"{side}_hip_twist", "upperleg01" + sfx, m(Z))
            add(f"{side}_knee", "lowerleg01" + sfx, X)
            add(f"{side}_ankle", "foot" + sfx, X)
            add(f"{side}_clavicle", "clavicle" + sfx, m(-Y))
            add(f"{side}_shoulder_abd", "upperarm01" + sfx, m(-Y))
            add(f"{side}_shoulder_flex", "upperarm01" + sfx, -X)
            add(f"{side}_shoulder_twist", "upperarm01" + sfx, upperarm)
            add(f"{side}_elbow", "lowerarm01" + sfx, elbow_axis)
            add(f"{side}_wrist", "wrist" + sfx, elbow_axis)
        for b in spine:
            share = 1.0 / len(spine)
            add("spine_flex", b, X, share)
            add("spine_bend", b, Y, share)
            add("spine_twist", b, Z, share)
        for b in neck:
            share = 1.0 / len(neck)
            add("neck_flex", b, X, share)
            add("neck_bend", b, Y, share)
            add("neck_twist", b, Z, share)

    def pose_parameters(self, angles: np.ndarray) -> np.ndarray:
        """[B, D] angles -> [B, n_bones, 4, 4] relative bone transforms (identity = rest)."""
        angles = np.atleast_2d(angles)
        B = angles.shape[0]
        out = np.tile(np.eye(4), (B, len(self.bone_labels), 1, 1))
        for dof, bone, axis, share in self.terms:
            R = axis_angle_to_matrix(axis, share * angles[:, dof])
            out[:, bone, :3, :3] = out[:, bone, :3, :3] @ R
        return out
