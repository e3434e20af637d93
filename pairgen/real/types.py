"""The reader contract for real datasets: what a dataset module hands to the shared machinery.

A dataset module (``pairgen/sources/<name>.py``) implements :class:`Reader`: it lists the units of
work (sequences) and loads one unit's annotations into a :class:`Unit`. It never decodes images
and never writes. The shared machinery (:mod:`pairgen.real.source`) then mines pairs
(:mod:`pairgen.real.mining`), plans which frames to decode (:mod:`pairgen.real.frames`), crops
(:mod:`pairgen.real.crop`) and computes silhouettes (:mod:`pairgen.real.silhouette`).

Coordinates: pixels of the original frame, x = column, y = row, origin top-left, pixel centres
at integers (OpenCV). Cameras are OpenCV: x_cam = R @ X + t, u = fx*x/z + cx (+ distortion).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


class BadUnit(Exception):
    """A unit (or a part of it) cannot be used: malformed annotation, missing camera or file.
    The message is the reason recorded in the stats; the build goes on."""


@dataclass
class CameraModel:
    """A calibrated camera (OpenCV conventions; world units as the dataset's, e.g. cm, m or mm)."""

    K: np.ndarray  # [3, 3]
    R: np.ndarray  # [3, 3] world -> camera rotation
    t: np.ndarray  # [3]
    dist: np.ndarray | None = None  # OpenCV distortion (k1, k2, p1, p2, k3) or None
    width: int | None = None
    height: int | None = None

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    def project(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, 3] world points -> ([N, 2] pixels, [N] depth), with distortion when given."""
        import cv2

        X = np.ascontiguousarray(X, dtype=np.float64).reshape(-1, 3)  # OpenCV 5 rejects strided input
        z = X @ self.R[2] + self.t[2]
        if self.dist is not None and np.any(self.dist):
            rvec, _ = cv2.Rodrigues(self.R)
            uv, _ = cv2.projectPoints(X, rvec, self.t.astype(np.float64), self.K, self.dist)
            return uv.reshape(-1, 2), z
        pc = X @ self.R.T + self.t
        uv = pc[:, :2] / pc[:, 2:3] * np.array([self.K[0, 0], self.K[1, 1]]) + np.array([self.K[0, 2], self.K[1, 2]])
        return uv, z


@dataclass
class Observation:
    """One person (or hand) seen by one camera at one instant.

    At least one of ``box`` / ``keypoints`` is set. ``keypoints`` are [J, 3] (x, y, confidence or
    visibility > 0 = usable) in original-frame pixels: COCO-17 for bodies, 21 joints for hands
    (InterHand order). ``box`` is [x0, y0, x1, y1] pixels.
    """

    box: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    # other named joint sets in frame pixels ([J, 3]), e.g. {"pennaction13": ...}: they travel into the
    # sample JSON as "<name>_target" / "<name>_reference", mapped into the crops
    extra_keypoints: dict[str, np.ndarray] | None = None
    head_box: np.ndarray | None = None  # [x0, y0, x1, y1] of the head, when annotated (PoseTrack bbox_head)


@dataclass
class Unit:
    """One unit of work (a sequence/capture) with everything the miner and the cropper need.

    - ``frames``: frame ids of the unit (the synchronised instants), sorted; ``fps`` converts
      frame ids to seconds (``time = frame / fps``).
    - ``cameras``: camera names; ``calibration[cam]`` when calibrated (for view angles, meshes).
    - ``observations[(track, cam, frame)]``: who is seen where. Cross-view pairs need the same
      (track, frame) in two cameras; cross-pose pairs the same (track, cam) at two frames.
    - ``images``: how to get pixels: ``("video", {cam: path})`` — frame id i is the i-th frame of
      the video at ``fps`` — or ``("files", fn)`` with ``fn(cam, frame) -> Path``.
    - ``meshes``: optional ``fn(track, frame) -> (vertices [V, 3] world, faces [F, 3])`` for the
      ``smpl`` silhouette (a body/hand model fit; None when the user gave no model files).
    - ``joints3d``: optional ``fn(track, frame) -> [J, 3]`` world joints (for crops and checks).
    - ``kind``: "body" or "hand" (hands get one crop per visible hand; tracks are "left"/"right").
    - ``skipped``: what the reader dropped while loading, as (part, reason, detail), e.g.
      ("camera 60", "project.txt disagrees with K R [I|-C]", "relative error 0.2"); each becomes a
      counted dropped part (not a pair: what it held was never planned) named ``<unit>/<part>``
      in the stats of the shard that builds the unit. Whatever a reader leaves out of
      ``observations`` for a reason (malformed, non-finite, ...) belongs here, not silently away.
    - ``frame_sizes``: ``{cam: (width, height)}`` the annotations' pixels refer to, when the
      dataset states it; a decoded frame of another size is skipped with that reason.
    """

    name: str
    split: str
    subject: str
    fps: float
    frames: list[int]
    cameras: list[str]
    observations: dict[tuple[str, str, int], Observation]
    images: tuple[str, object]
    calibration: dict[str, CameraModel] = field(default_factory=dict)
    meshes: Callable[[str, int], tuple[np.ndarray, np.ndarray]] | None = None
    joints3d: Callable[[str, int], np.ndarray] | None = None
    kind: str = "body"
    silhouette_default: str = "keypoints"  # the source's sensible default method
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (part, reason, detail) the reader dropped
    track_subjects: dict[str, str] = field(default_factory=dict)  # per-track identity, when it differs per track
    # cam -> (width, height) of the frames the annotations are in, where the dataset states it (e.g.
    # Penn Action's ``dimensions``): a frame of another size is skipped with that reason
    frame_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def image_path(self, cam: str, frame: int) -> Path:
        mode, spec = self.images
        if mode != "files":
            raise TypeError("unit images are videos")
        return Path(spec(cam, frame))


class Reader:
    """A dataset: lists units and loads them. Subclasses set the class attributes for `pairgen sources`."""

    name = ""
    summary = ""
    needs = ""
    layout = ""  # the expected root layout, shown by `pairgen sources` and the README
    silhouettes: tuple[str, ...] = ("keypoints", "bgsub", "smpl", "box")  # methods that suit the data
    # the --reader-option keys the reader reads, key -> one-line help (with the default); any other
    # key is refused before the build starts (RealSource.check). ``options`` also holds the
    # generic settings set from flags (annotations, videos, split, smpl_model, mano_model).
    option_help: dict[str, str] = {}

    def __init__(self, root: str | None, options: dict | None = None):
        self.root = Path(root) if root else None
        self.options = options or {}

    def number_option(self, key: str, default: float, lo: float = 0.0, hi: float = float("inf")) -> float:
        """A numeric ``--reader-option KEY=VALUE`` in (lo, hi], or ``default`` when not given."""
        raw = self.options.get(key)
        if raw in (None, ""):
            return float(default)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if not lo < value <= hi:  # NaN fails too
            raise ValueError(f"{self.name}: --reader-option {key}={raw} must be a number in ({lo:g}, {hi:g}]")
        return value

    def check(self) -> None:
        """Raise ValueError (one line) if the root does not look like this dataset."""

    def unit_names(self) -> list[tuple[str, str]]:
        """[(unit name, split)], sorted (deterministic)."""
        raise NotImplementedError

    def load(self, name: str) -> Unit:
        """Annotations of one unit; raise BadUnit with a reason for malformed or missing data."""
        raise NotImplementedError
