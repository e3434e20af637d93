"""AIST++ annotations + AIST Dance Video Database videos: one solo dancer, 9 static studio cameras.

Layout (see ``AistReader.layout``): the AIST++ annotation directory (motions/, keypoints2d/,
keypoints3d/, cameras/, splits/, ignore_list.txt) and the videos ``<video_name>.mp4`` where the
video name is the sequence name with ``cAll`` replaced by ``c01``..``c09``. By default both live
under ``--root`` (annotations at ROOT, ROOT/aist_plusplus_final or ROOT/annotations; videos at
ROOT/videos or ROOT); ``--annotations DIR`` / ``--videos DIR`` point at them explicitly.

One unit = one sequence (``gBR_sBM_cAll_d04_mBR1_ch02``); track "0" (one dancer); subject = the
dancer id (``d04``); 60 fps, frame i of every view = annotation row i. Cameras come from
``cameras/mapping.txt`` and ``cameras/<setting>.json`` (OpenCV w2c, Rodrigues rotation, world in
cm, y up). Observations come from ``keypoints2d`` (COCO-17; joints with NaN or confidence <= 0
are unusable; a (camera, frame) with fewer than ``MIN_JOINTS`` usable joints is dropped).
``joints3d`` reads ``keypoints3d_optim`` (else ``keypoints3d``); ``meshes`` (for ``--silhouette
smpl``) evaluates the user's SMPL file (``--smpl-model``) on ``motions/<seq>.pkl`` as
``smpl_scaling * SMPL(pose, betas=0) + smpl_trans`` (world cm).

Choices on the UNCERTAIN points of the format notes:

- ``ignore_list.txt`` is read at the annotation root and, when present, also under ``splits/``
  (the union is dropped).
- Splits: ``splits/pose_{train,val,test}.txt``; without them ``crossmodal_{train,val,test}.txt``.
  A sequence listed in no split file (or when there are no split files) is put in ``train``:
  the pose split lists all 1,408 sequences, so this only happens without split files.
- ``smpl_poses`` is accepted as (N, 72) or (N, 24, 3).
- ``keypoints2d``: the released schema (an array (9, N, 17, 3) with ``det_scores``) and the
  whole-body alternative (nested views -> frames -> people -> (133, 3); the first person's
  first 17 joints are COCO-17) are both read. ``det_scores`` is not used (the joints' own
  confidences decide).
- Videos are probed (container header only, nothing decoded): a camera whose video is missing
  or unreadable is skipped for that sequence, and so is one whose size does not match its
  calibration (a same-aspect rescaled video is accepted: intrinsics and keypoints are rescaled).
  Hard-coded known bad views: c05 of ``gBR_sBM_cAll_d04_mBR0_ch01`` (not synchronised) is always
  dropped; c07 of ``gJB_sBM_cAll_d07_mJB3_ch05`` (a 640x480 video) is kept only if its
  calibration describes that size (otherwise the size rule drops it). Skipped cameras are listed
  in ``unit.skipped`` as ``(cam, reason, detail)`` (counted and named ``<seq>/<cam>`` in the stats).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from pairgen import safe_pickle
from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, CameraModel, Observation, Reader, Unit

VIEWS = tuple(f"c{i:02d}" for i in range(1, 10))
FPS = 60.0
MIN_JOINTS = 4  # usable joints for an observation to count
SEQ_RE = re.compile(r"^(g[A-Z]{2})_(s[A-Z]{2})_(c\d{2}|cAll)_(d\d{2})_(m[A-Z]{2}\d)_(ch\d{2})$")
SPLITS = ("train", "val", "test")
NOT_SYNCED = {("gBR_sBM_cAll_d04_mBR0_ch01", "c05")}
SMALL_VIDEO = {("gJB_sBM_cAll_d07_mJB3_ch05", "c07")}


def seq_name_of(name: str) -> str:
    """Sequence name of a video or sequence name (camera field -> cAll; extensions stripped)."""
    name = Path(name.strip()).name
    for ext in (".mp4", ".pkl"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    parts = name.split("_")
    if len(parts) >= 3 and re.fullmatch(r"c(\d{2}|All)", parts[2]):
        parts[2] = "cAll"
    return "_".join(parts)


def video_name(seq: str, cam: str) -> str:
    return seq.replace("cAll", cam)


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [seq_name_of(line.split()[0]) for line in path.read_text().splitlines() if line.strip()
            and not line.lstrip().startswith("#")]


def _load_pickle(path: Path, what: str):
    """A dataset pickle through the restricted unpickler (arrays and plain data only: a crafted
    file cannot run code); a refused or malformed file is a BadUnit (the unit is skipped)."""
    try:
        return safe_pickle.restricted_load(path, what)
    except FileNotFoundError as exc:
        raise BadUnit(f"missing {what}") from exc
    except safe_pickle.RefusedPickle as exc:
        raise BadUnit(str(exc)) from None
    except Exception as exc:  # truncated / garbage pickles raise assorted errors
        raise BadUnit(f"malformed {what} ({type(exc).__name__})") from exc


def probe_video(path: Path) -> tuple[int, int, int | None]:
    """(width, height, frame count or None) from the container header; raises on unreadable files."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        w, h = int(stream.codec_context.width), int(stream.codec_context.height)
        n = int(stream.frames or 0)
        if not n and stream.duration and stream.time_base:
            n = int(np.floor(float(stream.duration * stream.time_base) * FPS + 1e-6))
        if w <= 0 or h <= 0:
            raise ValueError("no video size")
        return w, h, (n or None)


def parse_keypoints2d(data) -> np.ndarray:
    """Either schema -> float64 [V, N, 17, 3] (x, y, conf); NaN where nothing was detected."""
    if not isinstance(data, dict) or "keypoints2d" not in data:
        raise ValueError("no 'keypoints2d' key")
    kp = data["keypoints2d"]
    if isinstance(kp, np.ndarray) and kp.dtype != object:
        if kp.ndim != 4 or kp.shape[-1] != 3 or kp.shape[2] < 17:
            raise ValueError(f"keypoints2d has shape {kp.shape}, expected (views, frames, 17, 3)")
        return np.ascontiguousarray(kp[:, :, :17], np.float64)
    # whole-body alternative: views -> frames -> people -> (133, 3)
    views = []
    for per_view in kp:
        rows = []
        for people in per_view:
            arr = None
            if people is not None and len(people):
                first = np.asarray(people[0], np.float64)
                if first.ndim == 1 and first.size % 3 == 0:
                    first = first.reshape(-1, 3)
                if first.ndim == 2 and first.shape[0] >= 17 and first.shape[1] >= 3:
                    arr = first[:17, :3]
            rows.append(arr if arr is not None else np.full((17, 3), np.nan))
        views.append(rows)
    n = max((len(r) for r in views), default=0)
    out = np.full((len(views), n, 17, 3), np.nan)
    for v, rows in enumerate(views):
        if rows:
            out[v, : len(rows)] = np.stack(rows)
    return out


def parse_cameras(data) -> dict[str, CameraModel]:
    """cameras/<setting>.json (a list of 9 dicts; a {name: dict} mapping is accepted too)."""
    import cv2

    items = list(data.values()) if isinstance(data, dict) else list(data)
    if isinstance(data, dict):
        for name, d in data.items():
            d.setdefault("name", name)
    cams = {}
    for d in items:
        K = np.asarray(d["matrix"], np.float64).reshape(3, 3)
        rvec = np.asarray(d["rotation"], np.float64)
        R = cv2.Rodrigues(rvec.reshape(3, 1))[0] if rvec.size == 3 else rvec.reshape(3, 3)
        t = np.asarray(d["translation"], np.float64).reshape(3)
        dist = d.get("distortions")
        dist = None if dist is None else np.asarray(dist, np.float64).reshape(-1)
        size = d.get("size") or [None, None]
        cams[str(d["name"])] = CameraModel(K=K, R=R, t=t, dist=dist, width=size[0] and int(size[0]),
                                           height=size[1] and int(size[1]))
    return cams


def _rescale(cam: CameraModel, s: float, w: int, h: int) -> CameraModel:
    K = cam.K.copy()
    K[0, 0] *= s
    K[1, 1] *= s
    K[0, 2] = (K[0, 2] + 0.5) * s - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * s - 0.5
    return CameraModel(K=K, R=cam.R, t=cam.t, dist=cam.dist, width=w, height=h)


@lru_cache(maxsize=2)
def _smpl_model(path: str):
    import smplx

    try:  # smplx would unpickle the file with plain pickle: hand it the restricted loader's arrays
        return smplx.SMPL(model_path=str(path), data_struct=safe_pickle.body_model_struct(path, "smpl"))
    except safe_pickle.RefusedPickle as exc:
        raise BadUnit(f"--smpl-model: {exc}") from None
    except Exception as exc:  # smplx raises assorted errors for malformed files
        raise BadUnit(f"--smpl-model is not a loadable SMPL-format file ({type(exc).__name__})") from exc


class SmplMotion:
    """World-space (cm) SMPL meshes of one sequence, evaluated per frame on demand."""

    def __init__(self, model_path: str, poses: np.ndarray, trans: np.ndarray, scaling: float):
        self.model_path, self.poses, self.trans, self.scaling = model_path, poses, trans, scaling
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, track: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        model = _smpl_model(self.model_path)
        if frame not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            p = torch.as_tensor(self.poses[frame : frame + 1], dtype=torch.float32)
            with torch.no_grad():
                out = model(global_orient=p[:, :3], body_pose=p[:, 3:],
                            betas=torch.zeros((1, model.num_betas), dtype=torch.float32))
            v = out.vertices[0].numpy().astype(np.float64)
            self._cache[frame] = np.ascontiguousarray(v * self.scaling + self.trans[frame])
        return self._cache[frame], np.asarray(model.faces, np.int64)


class AistReader(Reader):
    name = "aist"
    summary = "AIST++ dance (annotations) + AIST Dance DB videos: 1 dancer, 9 calibrated static cameras, 60 fps"
    needs = ("AIST++ annotations (motions/, keypoints2d/, keypoints3d/, cameras/, splits/, ignore_list.txt) and the "
             "AIST Dance videos (<video>.mp4); optional --smpl-model FILE for --silhouette smpl")
    layout = """ROOT/                         (or --annotations DIR / --videos DIR)
  keypoints2d/<seq>.pkl         e.g. gBR_sBM_cAll_d04_mBR0_ch01.pkl
  keypoints3d/<seq>.pkl
  motions/<seq>.pkl             (SMPL fits, for --silhouette smpl --smpl-model FILE)
  cameras/mapping.txt           "<seq> <setting>" per line
  cameras/<setting>.json
  splits/pose_{train,val,test}.txt
  ignore_list.txt
  videos/<seq with cAll -> c01..c09>.mp4   (or the .mp4 files directly in ROOT)"""

    def __init__(self, root, options: dict | None = None):
        super().__init__(root if root is not None else ".", options)
        opts = self.options
        self.anno_dir = Path(opts["annotations"]) if opts.get("annotations") else self._find_annotations()
        self.video_dir = Path(opts["videos"]) if opts.get("videos") else self._find_videos()
        self.smpl_model = opts.get("smpl_model")
        self._mapping: dict[str, str] | None = None
        self._splits: dict[str, str] | None = None
        self._settings: dict[str, dict[str, CameraModel]] = {}

    # -- locations ------------------------------------------------------------------------------
    def _find_annotations(self) -> Path:
        for cand in (self.root, self.root / "aist_plusplus_final", self.root / "annotations"):
            if (cand / "keypoints2d").is_dir():
                return cand
        return self.root

    def _find_videos(self) -> Path:
        for cand in (self.root / "videos", self.root / "video"):
            if cand.is_dir():
                return cand
        return self.root

    def check(self) -> None:
        a = self.anno_dir
        if not (a / "keypoints2d").is_dir() or not (a / "cameras" / "mapping.txt").is_file():
            raise ValueError(f"{a} is not an AIST++ annotation directory (needs keypoints2d/ and cameras/mapping.txt;"
                             " pass --annotations DIR if it is elsewhere)")
        if not self.video_dir.is_dir() or not any(self.video_dir.glob("*.mp4")):
            raise ValueError(f"no AIST Dance videos (*.mp4) in {self.video_dir} (pass --videos DIR)")

    # -- listing --------------------------------------------------------------------------------
    def ignored(self) -> set[str]:
        return set(_read_names(self.anno_dir / "ignore_list.txt")) | set(
            _read_names(self.anno_dir / "splits" / "ignore_list.txt"))

    def splits(self) -> dict[str, str]:
        if self._splits is None:
            self._splits = self._read_splits()
        return self._splits

    def _read_splits(self) -> dict[str, str]:
        d = self.anno_dir / "splits"
        for prefix in ("pose", "crossmodal"):
            files = {s: d / f"{prefix}_{s}.txt" for s in SPLITS}
            if any(p.is_file() for p in files.values()):
                out = {}
                for s, p in files.items():
                    for n in _read_names(p):
                        out.setdefault(n, s)
                return out
        return {}

    def unit_names(self) -> list[tuple[str, str]]:
        ignored = self.ignored()
        split_of = self.splits()
        want = self.options.get("split")
        out = []
        for p in sorted((self.anno_dir / "keypoints2d").glob("*.pkl")):
            seq = seq_name_of(p.name)
            if seq in ignored:
                continue
            split = split_of.get(seq, "train")
            if want and split != want:
                continue
            out.append((seq, split))
        return out

    # -- annotations ----------------------------------------------------------------------------
    def mapping(self) -> dict[str, str]:
        if self._mapping is None:
            m = {}
            for line in (self.anno_dir / "cameras" / "mapping.txt").read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    m[seq_name_of(parts[0])] = parts[1]
            self._mapping = m
        return self._mapping

    def setting(self, name: str) -> dict[str, CameraModel]:
        if name not in self._settings:
            stem = name[:-5] if name.endswith(".json") else name
            path = self.anno_dir / "cameras" / f"{stem}.json"
            try:
                self._settings[name] = parse_cameras(json.loads(path.read_text()))
            except FileNotFoundError as exc:
                raise BadUnit(f"missing camera setting {path.name}") from exc
            except Exception as exc:
                raise BadUnit(f"malformed camera setting {path.name} ({type(exc).__name__})") from exc
        return self._settings[name]

    def load(self, name: str) -> Unit:
        seq = seq_name_of(name)
        m = SEQ_RE.match(seq)
        subject = m.group(4) if m else (seq.split("_")[3] if seq.count("_") >= 3 else "unknown")
        split = self.splits().get(seq, "train")
        setting_name = self.mapping().get(seq)
        if setting_name is None:
            raise BadUnit("sequence not in cameras/mapping.txt")
        calib_all = self.setting(setting_name)

        data = _load_pickle(self.anno_dir / "keypoints2d" / f"{seq}.pkl", "keypoints2d pickle")
        try:
            kp2d = parse_keypoints2d(data)
        except Exception as exc:
            raise BadUnit(f"malformed keypoints2d pickle ({exc})") from exc
        n_frames = kp2d.shape[1]
        if n_frames == 0:
            raise BadUnit("keypoints2d has no frames")

        cameras, calibration, videos, skipped = [], {}, {}, []
        limits: dict[str, int] = {}
        for v, cam in enumerate(VIEWS[: kp2d.shape[0]]):
            if (seq, cam) in NOT_SYNCED:
                skipped.append((cam, "camera not synchronised (known AIST issue)", ""))
                continue
            if cam not in calib_all:
                skipped.append((cam, "camera not in its calibration setting", setting_name))
                continue
            path = self.video_dir / f"{video_name(seq, cam)}.mp4"
            if not path.is_file():
                skipped.append((cam, "missing video", str(path)))
                continue
            try:
                w, h, nv = probe_video(path)
            except Exception as exc:
                skipped.append((cam, "unreadable video", f"{path.name}: {type(exc).__name__}: {exc}"))
                continue
            cal = calib_all[cam]
            cw, ch = cal.width or w, cal.height or h
            scale = 1.0
            if (w, h) != (cw, ch):
                if abs(w / h - cw / ch) > 0.01 * cw / ch:
                    skipped.append((cam, "video size does not match calibration", f"video {w}x{h}, calibration {cw}x{ch}"))
                    continue
                scale = w / cw
                cal = _rescale(cal, scale, w, h)
            elif cal.width is None:
                cal = CameraModel(K=cal.K, R=cal.R, t=cal.t, dist=cal.dist, width=w, height=h)
            k = kp2d[v].copy()
            if scale != 1.0:
                k[..., :2] = (k[..., :2] + 0.5) * scale - 0.5
            kp2d[v] = k
            cameras.append(cam)
            calibration[cam] = cal
            videos[cam] = path
            limits[cam] = min(n_frames, nv) if nv else n_frames
        if not cameras:
            raise BadUnit("no usable camera: " + "; ".join(sorted({r for _, r, _ in skipped})))

        observations = {}
        for cam in cameras:
            v = VIEWS.index(cam)
            k = kp2d[v, : limits[cam]]
            ok = np.isfinite(k).all(-1) & (np.nan_to_num(k[..., 2]) > 0)
            good = np.nonzero(ok.sum(1) >= MIN_JOINTS)[0]
            for f in good:
                kk = np.where(ok[f][:, None], k[f], 0.0)
                observations[("0", cam, int(f))] = Observation(keypoints=np.ascontiguousarray(kk, np.float32))

        unit = Unit(name=seq, split=split, subject=subject, fps=FPS, frames=list(range(n_frames)),
                    cameras=cameras, observations=observations, images=("video", videos),
                    calibration=calibration, joints3d=self._joints3d(seq, n_frames),
                    meshes=self._meshes(seq, n_frames), silhouette_default="bgsub", skipped=skipped)
        return unit

    def _joints3d(self, seq: str, n_frames: int):
        path = self.anno_dir / "keypoints3d" / f"{seq}.pkl"
        if not path.is_file():
            return None
        try:
            d = _load_pickle(path, "keypoints3d pickle")
            j = d.get("keypoints3d_optim")
            if j is None:
                j = d["keypoints3d"]
            j = np.ascontiguousarray(j, np.float64)
            if j.ndim != 3 or j.shape[2] != 3 or j.shape[0] == 0:
                return None
        except Exception:
            return None  # 3D joints are optional: a bad file only loses them
        return lambda track, frame: np.ascontiguousarray(j[min(frame, len(j) - 1), :17])

    def _meshes(self, seq: str, n_frames: int):
        if not self.smpl_model:
            return None
        d = _load_pickle(self.anno_dir / "motions" / f"{seq}.pkl", "motions pickle")
        try:
            poses = np.asarray(d["smpl_poses"], np.float64).reshape(-1, 72)
            trans = np.asarray(d["smpl_trans"], np.float64).reshape(-1, 3)
            scaling = float(np.asarray(d.get("smpl_scaling", 1.0), np.float64).reshape(-1)[0])
        except Exception as exc:
            raise BadUnit(f"malformed motions pickle ({type(exc).__name__})") from exc
        if len(poses) != len(trans) or len(poses) < n_frames:
            raise BadUnit("motions pickle has fewer frames than keypoints2d")
        _smpl_model(str(self.smpl_model))  # a bad model file fails here, as a bad unit, not mid-shard
        return SmplMotion(str(self.smpl_model), poses, trans, scaling)


class AistSource(RealSource):
    reader_cls = AistReader
