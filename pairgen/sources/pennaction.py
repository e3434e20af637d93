"""Penn Action: 2,326 single-person sports videos (15 actions) with 13 annotated 2D joints per frame.

Layout (ROOT is the ``Penn_Action/`` folder)::

    frames/<video %04d>/<frame %06d>.jpg    frames are 1-based (000001.jpg ... nframes)
    labels/<video %04d>.mat                 MATLAB variables, read with scipy.io.loadmat:
        action 'tennis_serve'  pose 'back'  x [T, 13]  y [T, 13]  visibility [T, 13]
        train (1 = train, else test)  bbox [T, 4]  dimensions [H W T]  nframes T

Unit = one video; one camera ``cam0`` (a video is one view); track ``"0"`` (one annotated person
per video); subject = the video id (Penn Action names no performers); split from ``train``
("train" or "test"). Only cross-pose pairs can be mined (two frames of the video).
``--annotations DIR`` / ``--videos DIR`` point at ``labels/`` / ``frames/`` kept elsewhere.

Readings chosen where the documentation is uncertain (docs/datasets.md section 8):

- Joint order: the README's (1 head, 2 left_shoulder, 3 right_shoulder, 4 left_elbow,
  5 right_elbow, 6 left_wrist, 7 right_wrist, 8 left_hip, 9 right_hip, 10 left_knee,
  11 right_knee, 12 left_ankle, 13 right_ankle). ``--reader-option joint_order=right_first``
  takes the conflicting third-party reading (right before left in every pair). Left/right only
  matters for the keypoints written into the samples, not for silhouettes or crops.
- COCO-17: the 13 joints fill COCO's shoulders, elbows, wrists, hips, knees and ankles; Penn's
  ``head`` (a point on the head, not the nose) goes into COCO's nose slot, so the ``keypoints``
  silhouette's head disc is centred on it; eyes and ears are absent (confidence 0).
  Confidence = 1 where ``visibility`` is true and the coordinates finite, else 0 (Penn still
  stores a guessed position for invisible joints; it is not used).
- bbox: [x1 y1 x2 y2] by default. Per video, ``bbox=auto`` (default) switches to [x y w h] when
  a row has x2 < x1 or y2 < y1, or when the [x y w h] reading holds clearly more of the visible
  joints (by 10 points of the fraction); a video whose chosen box holds less than half of its
  visible joints keeps its joints and drops the box (recorded). ``--reader-option bbox=xyxy|xywh``
  forces a reading. Rows missing at the end of a short ``bbox`` mean "no box" for those frames
  (rows beyond ``nframes`` are ignored).
- fps: not in the labels; ``--reader-option fps=N`` (default 30). time = frame / fps.
- Frames listed by ``nframes`` but absent on disk are dropped and recorded (``unit.skipped``,
  one entry per missing run of frames); a missing frames folder or a malformed .mat raises
  BadUnit. A video whose labels cannot be read at listing time gets split "unknown" (it is only
  built, and then skipped and named, when no ``--split`` is given).
- Visible joints stored as NaN are left out (recorded in ``unit.skipped``, runs of frames); a
  frame left with fewer than 2 usable joints is dropped ("keypoints not finite (NaN)": its
  keypoint silhouette would be empty).
- ``dimensions`` gives the frame size the joints are in (``Unit.frame_sizes``): a frame of another
  size on disk is skipped with that reason, not cropped at the wrong place.
- Silhouettes: default ``keypoints`` (most Penn Action videos are filmed by moving cameras, so
  median background subtraction does not apply; ``bgsub`` is available for static shots).

The 13 raw joints are not written into the samples: the shared Observation carries COCO-17 only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, Observation, Reader, Unit

TRACK = "0"
CAMERA = "cam0"
DEFAULT_FPS = 30.0
N_JOINTS = 13
JOINT_NAMES = ("head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
               "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
# COCO-17 slot of Penn joint j (0-based), per reading of the joint order
PENN_TO_COCO = {
    "readme": (0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16),
    "right_first": (0, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
}
BOX_READINGS = ("auto", "xyxy", "xywh")
VIDEO_RE = re.compile(r"^(\d{4})\.mat$")
FRAME_RE = re.compile(r"^(\d{6})\.jpg$")
REQUIRED = ("x", "y", "visibility", "nframes", "train")
BOX_MIN_HOLD = 0.5  # a box holding fewer of the visible joints than this is ignored
BOX_SLACK = 0.1  # joints this far outside the box (fraction of its size) still count as inside


def split_of(train) -> str:
    return "train" if int(np.asarray(train).ravel()[0]) == 1 else "test"


def read_labels(path: Path) -> dict:
    """The variables of a labels/<id>.mat, checked: x, y, visibility [T, 13] with T = nframes.
    Raises BadUnit naming what is wrong."""
    import scipy.io

    if not path.is_file():
        raise BadUnit(f"missing labels/{path.name}")
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False)
    except Exception as exc:  # scipy raises assorted errors (ValueError, TypeError, OSError...) for bad files
        raise BadUnit(f"malformed {path.name}: {type(exc).__name__}: {exc}") from None
    missing = [k for k in REQUIRED if k not in mat]
    if missing:
        raise BadUnit(f"malformed {path.name}: no variable {', '.join(missing)}")
    try:
        T = int(np.asarray(mat["nframes"]).ravel()[0])
        split = split_of(mat["train"])
        x = np.asarray(mat["x"], np.float64)
        y = np.asarray(mat["y"], np.float64)
        vis = np.asarray(mat["visibility"]).astype(np.float64) > 0
    except (ValueError, TypeError, IndexError) as exc:
        raise BadUnit(f"malformed {path.name}: {exc}") from None
    for key, arr in (("x", x), ("y", y), ("visibility", vis)):
        if arr.shape != (T, N_JOINTS):
            raise BadUnit(f"malformed {path.name}: {key} is {list(arr.shape)}, expected [{T}, {N_JOINTS}] (nframes {T})")
    if T < 1:
        raise BadUnit(f"malformed {path.name}: nframes {T}")
    bbox = None
    if "bbox" in mat:
        b = np.asarray(mat["bbox"], np.float64)
        if b.ndim == 2 and b.shape[1] == 4:
            bbox = b[:T]  # extra rows (none expected) are ignored; missing ones mean no box
        elif b.size:
            raise BadUnit(f"malformed {path.name}: bbox is {list(b.shape)}, expected [{T}, 4]")
    return {"nframes": T, "split": split, "x": x, "y": y, "visibility": vis, "bbox": bbox,
            "action": _text(mat.get("action")), "pose": _text(mat.get("pose")), "size": _size(mat.get("dimensions"))}


def _size(dimensions) -> tuple[int, int] | None:
    """(width, height) from ``dimensions`` [H W T], None when absent or not two positive numbers."""
    try:
        d = np.asarray(dimensions, np.float64).ravel()
    except (TypeError, ValueError):
        return None
    if d.size < 2 or not np.isfinite(d[:2]).all() or (d[:2] < 1).any():
        return None
    return int(round(d[1])), int(round(d[0]))


def _text(v) -> str:
    if v is None:
        return ""
    a = np.asarray(v).ravel()
    return str(a[0]) if a.size else ""


def _hold_fraction(boxes: np.ndarray, x: np.ndarray, y: np.ndarray, ok: np.ndarray) -> float:
    """Fraction of the usable joints inside their frame's box ([N, 4] x0 y0 x1 y1, with slack)."""
    n = min(len(boxes), len(x))
    if n == 0:
        return 0.0
    b, x, y, ok = boxes[:n], x[:n], y[:n], ok[:n]
    ok = ok & np.isfinite(b).all(1, keepdims=True)
    if not ok.any():
        return 0.0
    sx = BOX_SLACK * np.abs(b[:, 2:3] - b[:, 0:1])
    sy = BOX_SLACK * np.abs(b[:, 3:4] - b[:, 1:2])
    inside = (x >= b[:, 0:1] - sx) & (x <= b[:, 2:3] + sx) & (y >= b[:, 1:2] - sy) & (y <= b[:, 3:4] + sy)
    return float((inside & ok).sum() / ok.sum())


def read_boxes(bbox: np.ndarray | None, x: np.ndarray, y: np.ndarray, ok: np.ndarray,
               reading: str = "auto") -> tuple[np.ndarray | None, str, float]:
    """Boxes [n, 4] as x0 y0 x1 y1 (n <= T rows), the reading used ("xyxy"/"xywh") and the fraction
    of visible joints they hold. ``reading`` "auto" decides per video (see the module docstring)."""
    if bbox is None or not len(bbox):
        return None, "none", 0.0
    as_xywh = np.column_stack([bbox[:, 0], bbox[:, 1], bbox[:, 0] + bbox[:, 2], bbox[:, 1] + bbox[:, 3]])
    if reading == "xyxy":
        return bbox, "xyxy", _hold_fraction(bbox, x, y, ok)
    if reading == "xywh":
        return as_xywh, "xywh", _hold_fraction(as_xywh, x, y, ok)
    fin = np.isfinite(bbox).all(1)
    held_xy = _hold_fraction(bbox, x, y, ok)
    held_wh = _hold_fraction(as_xywh, x, y, ok)
    inverted = bool(np.any((bbox[fin, 2] < bbox[fin, 0]) | (bbox[fin, 3] < bbox[fin, 1])))
    if inverted or held_wh > held_xy + 0.1:
        return as_xywh, "xywh", held_wh
    return bbox, "xyxy", held_xy


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs [(first, last)] of sorted integers."""
    out: list[tuple[int, int]] = []
    for i in ids:
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


class PennActionReader(Reader):
    name = "pennaction"
    summary = "Penn Action: single-person sports videos with 13 2D joints per frame; cross-pose"
    needs = ("--root: the Penn_Action/ folder (frames/, labels/); reader options fps=N (default 30), "
             "joint_order=readme|right_first, bbox=auto|xyxy|xywh")
    layout = ("ROOT/                                  (Penn_Action/; or --videos DIR / --annotations DIR)\n"
              "  frames/<video %04d>/<frame %06d>.jpg   1-based: 000001.jpg .. nframes\n"
              "  labels/<video %04d>.mat                action pose x y visibility train bbox dimensions nframes")
    option_help = {"fps": f"frame rate of the frames, not stated by the labels (default {DEFAULT_FPS:g})",
                   "joint_order": "readme (left before right, default) or right_first",
                   "bbox": "auto (default: per video), xyxy ([x1 y1 x2 y2]) or xywh ([x y w h])"}

    def __init__(self, root: str, options: dict | None = None):
        super().__init__(root, options)
        o = self.options
        self.labels_dir = Path(o.get("annotations") or self.root / "labels")
        self.frames_dir = Path(o.get("videos") or self.root / "frames")
        self._names: list[tuple[str, str]] | None = None

    # options ----------------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        return self.number_option("fps", DEFAULT_FPS)

    @property
    def joint_order(self) -> str:
        order = self.options.get("joint_order") or "readme"
        if order not in PENN_TO_COCO:
            raise ValueError(f"pennaction: --reader-option joint_order={order}: use readme or right_first")
        return order

    @property
    def box_reading(self) -> str:
        reading = self.options.get("bbox") or "auto"
        if reading not in BOX_READINGS:
            raise ValueError(f"pennaction: --reader-option bbox={reading}: use {', '.join(BOX_READINGS)}")
        return reading

    # listing ----------------------------------------------------------------------------------
    def check(self) -> None:
        _ = self.fps, self.joint_order, self.box_reading
        if not self.labels_dir.is_dir() or not self.frames_dir.is_dir():
            raise ValueError(f"--root {self.root}: expected Penn Action's frames/ and labels/ folders "
                             f"(missing {self.frames_dir if not self.frames_dir.is_dir() else self.labels_dir})")
        if not self._video_ids():
            raise ValueError(f"{self.labels_dir}: no <video %04d>.mat label files")

    def _video_ids(self) -> list[str]:
        try:
            return sorted(m.group(1) for m in map(VIDEO_RE.match, (p.name for p in self.labels_dir.iterdir())) if m)
        except OSError:
            return []

    def unit_names(self) -> list[tuple[str, str]]:
        """Every labelled video with its split (only the ``train`` variable of each .mat is read)."""
        if self._names is None:
            import scipy.io

            names = []
            for vid in self._video_ids():
                try:
                    mat = scipy.io.loadmat(str(self.labels_dir / f"{vid}.mat"), variable_names=["train"])
                    split = split_of(mat["train"])
                except Exception:  # malformed: load() names the problem when the unit is built
                    split = "unknown"
                names.append((vid, split))
            self._names = names
        return self._names

    # one video --------------------------------------------------------------------------------
    def load(self, name: str) -> Unit:
        if not re.fullmatch(r"\d{4}", name):
            raise BadUnit(f"not a Penn Action video id: {name}")
        labels = read_labels(self.labels_dir / f"{name}.mat")
        T = labels["nframes"]
        folder = self.frames_dir / name
        if not folder.is_dir():
            raise BadUnit(f"missing frames folder frames/{name}")
        on_disk = {int(m.group(1)) for m in map(FRAME_RE.match, (p.name for p in folder.iterdir())) if m}
        skipped: list[tuple[str, str, str]] = []
        missing = [f for f in range(1, T + 1) if f not in on_disk]
        for a, b in _runs(missing):
            part = f"frame {a:06d}" if a == b else f"frames {a:06d}-{b:06d}"
            skipped.append((part, "frames missing on disk", f"{b - a + 1} of the {T} frames listed by nframes"))

        x, y, vis = labels["x"], labels["y"], labels["visibility"]
        ok = vis & np.isfinite(x) & np.isfinite(y)
        not_finite = vis & ~ok  # visible joints stored as NaN/inf: left out, recorded below
        boxes, reading, held = read_boxes(labels["bbox"], x, y, ok, self.box_reading)
        if boxes is not None and held < BOX_MIN_HOLD and ok.any():
            skipped.append(("bbox", "bbox does not hold the joints: ignored",
                            f"read as {reading}, {held:.0%} of the visible joints inside"))
            boxes = None
        slots = list(PENN_TO_COCO[self.joint_order])
        observations: dict[tuple[str, str, int], Observation] = {}
        nan_dropped, nan_kept = [], []
        for f in range(1, T + 1):
            if f not in on_disk:
                continue
            i = f - 1
            if not_finite[i].any():
                if ok[i].sum() < 2:  # no keypoint silhouette to make: the frame is dropped, not planned
                    nan_dropped.append(f)
                    continue
                nan_kept.append(f)
            kps = np.zeros((17, 3))
            kps[slots, 0] = np.where(ok[i], x[i], 0.0)
            kps[slots, 1] = np.where(ok[i], y[i], 0.0)
            kps[slots, 2] = ok[i].astype(np.float64)
            box = None
            if boxes is not None and i < len(boxes) and np.isfinite(boxes[i]).all() \
                    and boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]:
                box = boxes[i].copy()
            if box is None and ok[i].sum() < 2:
                continue  # nobody to crop in this frame
            raw13 = np.stack([np.where(ok[i], x[i], 0.0), np.where(ok[i], y[i], 0.0), ok[i].astype(np.float64)], 1)
            observations[(TRACK, CAMERA, f)] = Observation(box=box, keypoints=kps,
                                                           extra_keypoints={"pennaction13": raw13})
        for frames, reason in ((nan_dropped, "keypoints not finite (NaN)"),
                               (nan_kept, "some keypoints not finite (NaN): those joints left out")):
            for a, b in _runs(frames):
                part = f"frame {a:06d}" if a == b else f"frames {a:06d}-{b:06d}"
                n = int(not_finite[a - 1:b].sum())
                skipped.append((part, reason, f"{n} visible joint(s) not finite in {b - a + 1} frame(s)"))
        if not observations:
            raise BadUnit("no frame with both an image on disk and a labelled person"
                          + (" (keypoints not finite)" if nan_dropped else ""))
        frames_dir = self.frames_dir

        def image_fn(cam: str, frame: int) -> Path:
            return frames_dir / name / f"{frame:06d}.jpg"

        unit = Unit(name=name, split=labels["split"], subject=name, fps=self.fps,
                    frames=sorted(f for (_, _, f) in observations), cameras=[CAMERA], observations=observations,
                    images=("files", image_fn), kind="body", silhouette_default="keypoints")
        unit.skipped = skipped
        if labels["size"] is not None:  # the joints are pixels of frames of this size
            unit.frame_sizes = {CAMERA: labels["size"]}
        return unit


class PennActionSource(RealSource):
    reader_cls = PennActionReader
