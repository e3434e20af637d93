"""AMASS motions (``*.npz``) as clips for the SMPL body: ``--motions DIR``.

Reads the SMPL+H release (``poses`` [T, 156], ``mocap_framerate``) and the SMPL-X release
(``poses`` [T, 165], ``mocap_frame_rate``): root (0:3) and 21 body joints (3:66), with zeros for
SMPL's two hand joints. Files without poses (``shape.npz``) or unreadable ones are skipped and
counted; so are files whose arrays would need pickles (read with ``allow_pickle=False``: a
crafted npz cannot run code). Poses are played at their frame rate (nearest frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class AmassClip:
    name: str
    poses: np.ndarray  # [T, 72] SMPL axis-angle (root + 23 joints)
    fps: float

    @property
    def duration(self) -> float:
        return len(self.poses) / self.fps

    def angles(self, t) -> np.ndarray:
        idx = np.clip(np.round(np.atleast_1d(np.asarray(t, float)) * self.fps).astype(int), 0, len(self.poses) - 1)
        return self.poses[idx]

    def describe(self) -> dict:
        return {"motion": f"amass:{self.name}", "fps": self.fps, "frames": len(self.poses)}


def load_amass(path: Path) -> AmassClip:
    """One AMASS file as a clip; raises ValueError if it holds no usable motion.

    AMASS files are plain numeric arrays: they are read with ``allow_pickle=False``, so an array
    that holds pickled Python objects (which would run code when unpickled) is refused with a
    one-line error naming the file (a ``ValueError``: the file is skipped like any bad motion)."""
    from pairgen.safe_pickle import RefusedPickle, npz_array

    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for damaged archives
        if "allow_pickle" in str(exc):  # a pickle (or an object .npy) named .npz
            raise RefusedPickle(f"AMASS motion {path.name}: refused to load: it is a pickle, not an npz of "
                                "plain arrays") from None
        raise ValueError(f"unreadable npz ({exc})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("not an npz archive")
    with data:
        if "poses" not in data.files:
            raise ValueError("no 'poses' (shape-only file)")
        poses = np.asarray(npz_array(data, "poses", path, "AMASS motion"), dtype=np.float32)
        if poses.ndim != 2 or poses.shape[1] < 66 or len(poses) < 2:
            raise ValueError(f"poses of shape {poses.shape}")
        fps_key = "mocap_framerate" if "mocap_framerate" in data.files else "mocap_frame_rate"
        fps = float(npz_array(data, fps_key, path, "AMASS motion")) if fps_key in data.files else 0.0
    if not fps > 0:
        raise ValueError("no frame rate")
    smpl = np.zeros((len(poses), 72), np.float32)
    smpl[:, :66] = poses[:, :66]
    return AmassClip(path.stem, smpl, fps)


class MotionBank:
    """The usable AMASS files under a directory; clips load lazily and are cached."""

    def __init__(self, files: list[Path], skipped: dict[str, str]):
        self.files = files
        self.skipped = skipped
        self._cache: dict[int, AmassClip] = {}

    @classmethod
    def from_directory(cls, directory: str) -> "MotionBank":
        files = sorted(Path(directory).rglob("*.npz"))
        usable, skipped = [], {}
        for f in files:
            try:
                load_amass(f)
                usable.append(f)
            except ValueError as exc:
                skipped[str(f)] = str(exc)
        if not usable:
            raise ValueError(f"--motions {directory}: no usable AMASS .npz ({len(files)} files, {len(skipped)} skipped)")
        return cls(usable, skipped)

    def sample(self, rng: np.random.Generator) -> AmassClip:
        i = int(rng.integers(len(self.files)))
        if i not in self._cache:
            self._cache[i] = load_amass(self.files[i])
        return self._cache[i]
