"""InterHand2.6M (v1.0, 5 fps or 30 fps release): multi-view hand images with 3D joints.

Unit = one (split, capture, sequence): ``"<split>/Capture<N>/<seq_name>"``. Tracks are the hands,
``"right"`` and ``"left"`` (an image whose hand_type is ``interacting`` shows both). One
observation per (hand, camera, frame) where the hand is visible: its 21 joints (InterHand
per-hand order: thumb, index, middle, ring, pinky, each tip first, then the wrist) projected
from ``world_coord`` with the camera, valid where annotated, in front of the camera and inside
the image; a hand needs ``min_hand_joints`` (default 8) such joints. Cross-view = same hand and
frame in two cameras; cross-pose = same hand and camera at two frames.

Readings chosen where the documentation is UNCERTAIN:

- **Time.** ``frame_idx`` does not count frames of the release: in the 5 fps release train
  sequences step by 18 and val/test by 6; in the 30 fps release by 3 and 1
  (facebookresearch/InterHand2.6M#147: some captures are numbered at 90 fps, others at 30 fps;
  all are "properly downsampled to 5 fps or 30 fps"). The reader takes the commonest step ``s``
  between consecutive frames of a camera and sets ``Unit.fps`` (frame ids per second) to
  ``release_fps * s``; the release (5 or 30) is the option ``fps`` or, when not given, the one
  value for which the numbering rate is 90 or 30 (s = 18 or 6 -> 5 fps; s = 3 or 1 -> 30 fps).
  Unknown steps fall back to 90 frame ids per second. time = frame_idx / Unit.fps.
- **Joint validity.** A joint is used when ``joint_3d`` marks it valid and, where the image has
  an annotation in ``_data.json``, that annotation's ``joint_valid`` too. With
  ``hand_type_valid`` and hand_type ``right``/``left``, the other hand is not observed.
- **Image size.** From ``_data.json`` ``width``/``height``; the known cam400412 bug (images
  334x512) only matters for the inside-the-image test, and the cropper works on decoded pixels.
  Without ``_data.json`` (it is optional: the 30 fps train file is ~4 GB) images come from the
  folder listing and are assumed 512x334.
- **Subject.** ``images[].subject`` of ``_data.json``; without it, ``Capture<N>``.
- **Units.** Calibration in mm (world = mm), so view angles come from mm camera centres.

The MANO fit (``smpl`` silhouette) is used only when the user passes ``--mano-model`` (a
directory with MANO_RIGHT/LEFT .pkl, or one of the files): meshes come from
``_MANO_NeuralAnnot.json`` (world axis-angle pose 48, shape 10, trans in metres; left-hand
shapedirs sign fix as in the official tools).

Missing image files/camera folders (listed in ``_data.json`` but absent) and cameras absent
from the calibration are dropped and counted in ``unit.skipped`` ((part, reason, detail) tuples).
Malformed ``_camera.json`` / ``_joint_3d.json`` / ``_data.json`` raise :class:`BadUnit` for
the affected units (the whole split when the file does not parse, one capture when its entry
is malformed).
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, CameraModel, Observation, Reader, Unit

SPLITS = ("train", "val", "test")
HANDS = ("right", "left")  # right = joints 0..20, left = 21..41
DEFAULT_SIZE = (512, 334)  # W x H
MIN_HAND_JOINTS = 8  # visible joints a hand needs (default of --reader-option min_hand_joints)
_CAM_DIR = re.compile(r"^cam(\d+)$")
_IMAGE = re.compile(r"^image(\d+)\.jpg$")
_CAPTURE = re.compile(r"^Capture(\d+)$")

_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 6


def _cached(path: Path, parse):
    """Parse a (possibly large) annotation file once per process; keyed by path, size, mtime.
    A parse error is cached too (re-raised as the same BadUnit)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns, parse.__name__)
    with _CACHE_LOCK:
        if key in _CACHE:
            val = _CACHE[key]
            if isinstance(val, BadUnit):
                raise val
            return val
    try:
        val = parse(path)
    except BadUnit as e:
        val = e
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeDecodeError) as e:
        val = BadUnit(f"{path.name}: malformed ({type(e).__name__}: {str(e)[:120]})")
    with _CACHE_LOCK:
        while len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = val
    if isinstance(val, BadUnit):
        raise val
    return val


def _load_json(path: Path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def _parse_camera(path: Path) -> dict:
    d = _load_json(path)
    if not isinstance(d, dict):
        raise BadUnit(f"{path.name}: malformed (top level is not an object)")
    return d


def _parse_joints(path: Path) -> dict:
    d = _load_json(path)
    if not isinstance(d, dict):
        raise BadUnit(f"{path.name}: malformed (top level is not an object)")
    return d


def _parse_data(path: Path) -> dict:
    """_data.json -> {(capture, seq_name): [(cam, frame, file_name, w, h, subject, ann | None)]}."""
    d = _load_json(path)
    anns: dict[int, dict] = {}
    for a in d.get("annotations", []):
        anns[int(a["image_id"])] = {"joint_valid": np.asarray(a.get("joint_valid", []), np.float32).reshape(-1),
                                    "hand_type": a.get("hand_type"),
                                    "hand_type_valid": a.get("hand_type_valid", 0),
                                    "bbox": a.get("bbox")}
    index: dict[tuple[int, str], list] = {}
    for im in d["images"]:
        key = (int(im["capture"]), str(im["seq_name"]))
        index.setdefault(key, []).append((
            str(im["camera"]), int(im["frame_idx"]), str(im["file_name"]),
            int(im.get("width") or DEFAULT_SIZE[0]), int(im.get("height") or DEFAULT_SIZE[1]),
            im.get("subject"), anns.get(int(im["id"]))))
    return index


def _image_file(paths: dict, cam: str, frame: int) -> Path:
    return paths[(cam, frame)]


def _joints_of(world: dict, valid: dict, track: str, frame: int) -> np.ndarray:
    sl = slice(0, 21) if track == "right" else slice(21, 42)
    out = np.array(world[frame][sl], np.float64)
    out[~valid[frame][sl]] = np.nan
    return out


def release_fps_and_rate(step: int, release: float | None) -> float:
    """Frame ids per second for a sequence whose consecutive frames differ by ``step``."""
    if release:
        return float(release) * step
    for rate in (90.0, 30.0):
        if rate / step in (5.0, 30.0):
            return rate
    return 90.0


class InterHandReader(Reader):
    name = "interhand"
    summary = "InterHand2.6M (5/30 fps): multi-view hands, 3D joints; one crop per hand; cross-view and cross-pose"
    needs = ("--root with images/ and annotations/ (InterHand2.6M v1.0, 5 fps or 30 fps release); "
             "optional --mano-model (MANO_RIGHT/LEFT.pkl) for --silhouette smpl")
    layout = ("ROOT/images/{train,val,test}/Capture<N>/<seq_name>/cam<ID>/image<frame_idx>.jpg\n"
              "ROOT/annotations/{skeleton.txt,subject.txt}\n"
              "ROOT/annotations/<split>/InterHand2.6M_<split>_{data,camera,joint_3d}.json "
              "[+ _MANO_NeuralAnnot.json]")
    option_help = {"fps": "the release, 5 or 30 (default: told from the steps between frame ids)",
                   "min_hand_joints": f"visible joints a hand needs to be cropped (default {MIN_HAND_JOINTS})"}

    # -- paths ----------------------------------------------------------------------------
    def _opt(self, key, default=None):
        o = self.options
        v = o.get(key) if isinstance(o, dict) else getattr(o, key, None)
        return default if v is None else v

    @property
    def ann_dir(self) -> Path:
        return Path(self._opt("annotations") or self.root / "annotations")

    def _ann(self, split: str, what: str) -> Path:
        return self.ann_dir / split / f"InterHand2.6M_{split}_{what}.json"

    def _splits(self) -> list[str]:
        return [s for s in SPLITS if (self.root / "images" / s).is_dir()
                and self._ann(s, "camera").is_file() and self._ann(s, "joint_3d").is_file()]

    def check(self) -> None:
        if not (self.root / "images").is_dir():
            raise ValueError(f"{self.root}: no images/ folder (expected {self.layout.splitlines()[0]})")
        if not self.ann_dir.is_dir():
            raise ValueError(f"{self.ann_dir}: no annotations folder")
        if not self._splits():
            raise ValueError(f"{self.root}: no split with images/<split>/ and "
                             "annotations/<split>/InterHand2.6M_<split>_{camera,joint_3d}.json")
        _ = self.release_fps, self.min_hand_joints  # validates the options

    @property
    def release_fps(self) -> float | None:
        """``--reader-option fps``: the release (5 or 30), None when not given. Values from the
        command line are strings."""
        raw = self._opt("fps")
        if raw in (None, ""):
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = None
        if value not in (5.0, 30.0):
            raise ValueError(f"interhand: --reader-option fps={raw}: the release, 5 or 30")
        return value

    @property
    def min_hand_joints(self) -> int:
        raw = self._opt("min_hand_joints", MIN_HAND_JOINTS)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            value = 0
        if not 1 <= value <= 21:
            raise ValueError(f"interhand: --reader-option min_hand_joints={raw}: a whole number in [1, 21]")
        return value

    def unit_names(self) -> list[tuple[str, str]]:
        out = []
        for split in self._splits():
            caps = []
            for c in os.scandir(self.root / "images" / split):
                m = _CAPTURE.match(c.name)
                if m and c.is_dir():
                    caps.append((int(m.group(1)), c.name, c.path))
            for _, cname, cpath in sorted(caps):
                for seq in sorted(e.name for e in os.scandir(cpath) if e.is_dir()):
                    out.append((f"{split}/{cname}/{seq}", split))
        return out

    # -- annotations --------------------------------------------------------------------------
    def _calibration(self, split: str, capture: int) -> dict[str, CameraModel]:
        path = self._ann(split, "camera")
        cams = _cached(path, _parse_camera)
        if cams is None:
            raise BadUnit(f"{path.name}: missing")
        entry = cams.get(str(capture))
        if entry is None:
            raise BadUnit(f"{path.name}: no capture {capture}")
        out = {}
        try:
            for cam, pos in entry["campos"].items():
                R = np.asarray(entry["camrot"][cam], np.float64)
                c = np.asarray(pos, np.float64).reshape(3)
                f = np.asarray(entry["focal"][cam], np.float64).reshape(2)
                p = np.asarray(entry["princpt"][cam], np.float64).reshape(2)
                if R.shape != (3, 3) or not (np.isfinite(R).all() and np.isfinite(c).all()):
                    raise ValueError(f"camrot of camera {cam} is not a finite 3x3 matrix")
                K = np.array([[f[0], 0, p[0]], [0, f[1], p[1]], [0, 0, 1.0]])
                out[str(cam)] = CameraModel(K=K, R=R, t=-R @ c)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadUnit(f"{path.name}: capture {capture} malformed ({type(e).__name__}: {str(e)[:100]})") from None
        return out

    def _capture_entry(self, split: str, kind: str, capture: int, missing: str = "missing") -> dict:
        """The per-capture dict of an annotation file keyed by capture (joint_3d, MANO_NeuralAnnot)."""
        path = self._ann(split, kind)
        table = _cached(path, _parse_joints)
        if table is None:
            raise BadUnit(f"{path.name}: {missing}")
        entry = table.get(str(capture))
        if not isinstance(entry, dict):
            raise BadUnit(f"{path.name}: no capture {capture}")
        return entry

    def _joints3d(self, split: str, capture: int):
        return self._capture_entry(split, "joint_3d", capture)

    def _data(self, split: str, capture: int, seq: str) -> list | None:
        path = self._ann(split, "data")
        if not path.is_file():
            return None
        index = _cached(path, _parse_data)
        return index.get((capture, seq), [])

    def _listing(self, seq_dir: Path) -> dict[str, dict[int, Path]]:
        out: dict[str, dict[int, Path]] = {}
        if not seq_dir.is_dir():
            return out
        for c in os.scandir(seq_dir):
            m = _CAM_DIR.match(c.name)
            if not (m and c.is_dir()):
                continue
            files = {}
            for f in os.scandir(c.path):
                mm = _IMAGE.match(f.name)
                if mm:
                    files[int(mm.group(1))] = Path(f.path)
            out[m.group(1)] = files
        return out

    # -- a unit ---------------------------------------------------------------------------------
    def load(self, name: str) -> Unit:
        try:
            split, cname, seq = name.split("/", 2)
            capture = int(_CAPTURE.match(cname).group(1))
        except (ValueError, AttributeError):
            raise BadUnit(f"not an InterHand unit name: {name}") from None
        calib = self._calibration(split, capture)
        joints = self._joints3d(split, capture)
        img_root = self.root / "images" / split
        listing = self._listing(img_root / cname / seq)
        records = self._data(split, capture, seq)
        skipped: list[tuple[str, str, str]] = []
        missing_cam: Counter = Counter()
        missing_file = 0
        subject = None
        images: list[tuple] = []  # (cam, frame, path, w, h, ann)
        if records is None:  # no _data.json: the folder listing is the index
            for cam, files in listing.items():
                for fr, p in files.items():
                    images.append((cam, fr, p, DEFAULT_SIZE[0], DEFAULT_SIZE[1], None))
        else:
            for cam, fr, fn, w, h, subj, ann in records:
                if subject is None and subj is not None:
                    subject = str(subj)
                if cam not in listing:
                    missing_cam[cam] += 1
                    continue
                p = listing[cam].get(fr)
                if p is None:
                    missing_file += 1
                    continue
                images.append((cam, fr, p, w, h, ann))
        for cam, n in sorted(missing_cam.items()):
            skipped.append((f"cam{cam}", "image folder missing", f"{n} images skipped"))
        if missing_file:
            skipped.append(("images", "image files listed in _data.json missing", f"{missing_file} images"))
        if not images:
            raise BadUnit(f"{name}: no images" + (f" ({'; '.join(f'{p}: {r}' for p, r, _ in skipped)})" if skipped else ""))
        uncal = Counter(cam for cam, *_ in images if cam not in calib)
        for cam, n in sorted(uncal.items()):
            skipped.append((f"cam{cam}", "not in the calibration", f"{n} images skipped"))
        images = [im for im in images if im[0] in calib]

        world: dict[int, np.ndarray] = {}
        valid3: dict[int, np.ndarray] = {}
        no_joints = 0
        min_joints = self.min_hand_joints
        observations: dict[tuple[str, str, int], Observation] = {}
        paths: dict[tuple[str, int], Path] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for cam, fr, p, w, h, ann in sorted(images, key=lambda r: (r[0], r[1])):
            if fr not in world:
                e = joints.get(str(fr))
                if e is None:
                    no_joints += 1
                    continue
                try:
                    X = np.asarray(e["world_coord"], np.float64)
                    v = np.asarray(e.get("joint_valid", np.ones(42)), np.float64).reshape(-1)
                    if X.shape != (42, 3) or v.shape != (42,):
                        raise ValueError(f"world_coord {X.shape}, joint_valid {v.shape}")
                except (KeyError, TypeError, ValueError, AttributeError) as ex:
                    raise BadUnit(f"{self._ann(split, 'joint_3d').name}: capture {capture} frame {fr} "
                                  f"malformed ({str(ex)[:100]})") from None
                world[fr] = X
                valid3[fr] = (v > 0) & np.isfinite(X).all(1)
            paths[(cam, fr)] = p
            sizes.setdefault(cam, (w, h))
            cm = calib[cam]
            uv, z = cm.project(np.nan_to_num(world[fr]))
            ok = valid3[fr] & (z > 1e-6)
            ok &= (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
            hand_type = None
            if ann is not None:
                jv = ann["joint_valid"]
                if jv.shape == (42,):
                    ok &= jv > 0
                if ann.get("hand_type_valid") and ann.get("hand_type") in HANDS:
                    hand_type = ann["hand_type"]
            for hi, hand in enumerate(HANDS):
                if hand_type is not None and hand != hand_type:
                    continue
                sl = slice(21 * hi, 21 * hi + 21)
                okh = ok[sl]
                if okh.sum() < min_joints:
                    continue
                pts = uv[sl]
                kps = np.concatenate([pts, okh[:, None].astype(np.float64)], axis=1)
                kps[~okh, :2] = 0.0
                q = pts[okh]
                box = np.array([q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()])
                observations[(hand, cam, fr)] = Observation(box=box, keypoints=kps)
        if no_joints:
            skipped.append(("images", "images without 3D joints", f"{no_joints} images skipped"))
        for cam, (w, h) in sizes.items():
            calib[cam].width, calib[cam].height = w, h
        if not observations:
            raise BadUnit(f"{name}: no visible hand" + (f" ({'; '.join(f'{p}: {r}' for p, r, _ in skipped)})" if skipped else ""))

        frames = sorted({fr for (_, fr) in paths})
        cameras = sorted({cam for (cam, _) in paths})
        steps: Counter = Counter()
        for cam in cameras:
            fs = sorted(fr for (c, fr) in paths if c == cam)
            steps.update(int(d) for d in np.diff(fs) if d > 0)
        release = self.release_fps
        fps = release_fps_and_rate(steps.most_common(1)[0][0], release) if steps else 90.0

        unit = Unit(
            name=name, split=split, subject=subject or cname, fps=fps, frames=frames, cameras=cameras,
            observations=observations, images=("files", functools.partial(_image_file, paths)),
            calibration={c: calib[c] for c in cameras},
            joints3d=functools.partial(_joints_of, world, valid3),
            kind="hand", silhouette_default="keypoints")
        unit.meshes = self._meshes(split, capture)
        unit.skipped = skipped
        return unit

    # -- MANO (optional) ---------------------------------------------------------------------
    def _meshes(self, split: str, capture: int):
        model = self._opt("mano_model")
        if not model:
            return None
        entry = self._capture_entry(split, "MANO_NeuralAnnot", capture, "missing (needed by --mano-model)")
        return functools.partial(_mano_mesh, str(model), entry)


@functools.lru_cache(maxsize=4)
def _mano_layers(model: str) -> dict:
    import smplx
    import torch

    from pairgen import safe_pickle

    p = Path(model)
    if p.is_file():
        p = p.parent
    # smplx would unpickle MANO_{RIGHT,LEFT}.pkl with plain pickle: hand it the restricted loader's arrays
    try:
        data = {h: safe_pickle.body_model_struct(p, "mano", is_rhand=(h == "right")) for h in HANDS}
    except safe_pickle.RefusedPickle as exc:
        raise BadUnit(f"--mano-model: {exc}") from None
    layers = {h: smplx.MANO(str(p), is_rhand=(h == "right"), use_pca=False, flat_hand_mean=False, data_struct=data[h])
              for h in HANDS}
    # smplx loads the left MANO with the right hand's first shape direction (known sign bug)
    if torch.sum(torch.abs(layers["left"].shapedirs[:, 0, :] - layers["right"].shapedirs[:, 0, :])) < 1:
        layers["left"].shapedirs[:, 0, :] *= -1
    return layers


def _mano_mesh(model: str, entry: dict, track: str, frame: int):
    import torch

    e = (entry.get(str(frame)) or {}).get(track)
    if not e:
        raise BadUnit(f"no MANO fit for the {track} hand at frame {frame}")
    layer = _mano_layers(model)[track]
    pose = torch.as_tensor(np.asarray(e["pose"], np.float32).reshape(1, 48))
    shape = torch.as_tensor(np.asarray(e["shape"], np.float32).reshape(1, 10))
    trans = torch.as_tensor(np.asarray(e["trans"], np.float32).reshape(1, 3))
    with torch.no_grad():
        out = layer(global_orient=pose[:, :3], hand_pose=pose[:, 3:], betas=shape, transl=trans)
    verts = out.vertices[0].numpy().astype(np.float64) * 1000.0  # metres -> mm (world)
    return verts, np.asarray(layer.faces, np.int64)


class InterHandSource(RealSource):
    reader_cls = InterHandReader
