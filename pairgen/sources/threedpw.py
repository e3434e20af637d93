"""3DPW (3D Poses in the Wild): one or two people filmed by a hand-held (moving) phone camera at 30 fps.

Layout (ROOT is the unpacked 3DPW folder)::

    ROOT/sequenceFiles/{train,validation,test}/<sequence>.pkl   Python-2 pickles, one per sequence
    ROOT/imageFiles/<sequence>/image_%05d.jpg                    the video as JPEG frames

``--annotations DIR`` may point at the ``sequenceFiles`` folder and ``--videos DIR`` at the
``imageFiles`` folder when they are not under ROOT.

Unit = one sequence (its name, e.g. ``courtyard_basketball_00``); track = the actor index ("0",
"1") of the pickle's per-actor lists; one camera, ``cam0``. Cross-pose pairs only (one camera).
Image ``image_%05d.jpg`` number i is row i of ``poses`` / ``trans`` / ``cam_poses`` /
``poses2d`` (not ``img_frame_ids``, which counts 60 Hz IMU frames); frame id i is at time i / 30 s.
An actor's frame is used only where ``campose_valid[actor][i]`` is true (the camera pose is aligned
with the image there) and the image file exists.

Readings chosen (see docs/datasets.md section 3):

- Pickles are read with ``encoding="latin1"`` by the restricted unpickler of
  :mod:`pairgen.safe_pickle` (arrays and plain data only: a crafted file is refused, BadUnit, and
  runs no code); key spellings ``genders`` and ``poses2d`` (the readme's ``gender`` / ``poses2D``
  are accepted too).
- Splits: the folder name, with ``validation`` written as ``val`` (``--split val``), like the other
  sources; ``train`` and ``test`` as they are.
- Subject: the sequence name (3DPW does not identify actors across sequences); the person of a
  pair is (subject, track).
- 2D keypoints: ``poses2d[actor][i]`` is [x; y; conf] x 18 OpenPose COCO-18 joints, mapped to
  COCO-17 by index (the neck is dropped); joints with conf > 0 are used. Where a frame has fewer
  than 4 such joints (OpenPose found nobody, all zeros), the fallback is the actor's
  ``jointPositions`` (24 SMPL joints, world) projected with ``cam_poses[i]`` (w2c) and
  ``cam_intrinsics``: COCO body joints from the SMPL joints and the nose slot from SMPL's head
  joint (eyes and ears left out, confidence 0); joints behind the camera are dropped.
- Image size: not stored; taken as (2 cx, 2 cy) from ``cam_intrinsics`` as the official demo does
  (used only to drop projected joints far outside the frame).
- The camera moves, so its pose changes every frame while ``Unit.calibration`` holds one model per
  camera. The unit therefore works in *each frame's camera coordinates*: ``calibration["cam0"]``
  is identity R, zero t and K = ``cam_intrinsics``, and ``meshes(track, frame)`` /
  ``joints3d(track, frame)`` return points already mapped into frame ``frame``'s camera
  (``X_cam = cam_poses[frame] @ [X_world; 1]``), so projecting them with cam0 gives that frame's
  pixels.
- Meshes (the ``smpl`` silhouette, the default when ``--smpl-model`` is given): the user's SMPL
  model through smplx, ``betas[actor][:10]``, ``poses[actor][i]`` (axis-angle, world) and
  ``trans[actor][i]``. ``--smpl-model`` is either one SMPL file (used for every actor; the
  gender-neutral model is fine) or a folder holding smplx's ``SMPL_MALE.pkl`` / ``SMPL_FEMALE.pkl``
  (/ ``SMPL_NEUTRAL.pkl``), then the actor's ``genders`` entry picks the file. Without it the
  default silhouette is ``keypoints`` (``bgsub`` assumes a static camera, which 3DPW does not have).

Partial problems do not fail the sequence: an actor with malformed arrays, image files missing for
annotated frames, an actor with fewer than two usable frames ("track too short") are listed on
``unit.skipped`` as (part, reason, detail). An unreadable pickle, missing keys, a missing image
folder or no usable frame at all raise BadUnit.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pairgen import safe_pickle
from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, CameraModel, Observation, Reader, Unit

FPS = 30.0
CAMERA = "cam0"
SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test"}
IMAGE_RE = re.compile(r"^image_(\d{5})\.jpg$")
# COCO-17 joint i is OpenPose COCO-18 joint OP18_TO_COCO[i]
# (OpenPose-18: nose, neck, r_sho, r_elb, r_wri, l_sho, l_elb, l_wri, r_hip, r_knee, r_ank, l_hip, l_knee, l_ank,
#  r_eye, l_eye, r_ear, l_ear)
OP18_TO_COCO = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
# COCO-17 joint i from SMPL joint SMPL_TO_COCO[i] (-1: none); the nose slot takes SMPL's head joint
SMPL_TO_COCO = (15, -1, -1, -1, -1, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8)
MIN_JOINTS = 4  # fewer usable 2D joints: fall back to the projected SMPL joints (or not seen)
MIN_DEPTH = 0.05  # metres in front of the camera
OUTSIDE_FRACTION = 0.5  # projected joints further outside the image than this fraction are dropped
REQUIRED = ("cam_poses", "cam_intrinsics", "campose_valid")


def load_pickle(path: Path) -> dict:
    """A 3DPW sequence pickle (Python 2: latin1 strings); BadUnit naming the file if unreadable."""
    try:
        data = safe_pickle.restricted_load(path, "sequence pickle", encoding="latin1")
    except safe_pickle.RefusedPickle as exc:
        raise BadUnit(str(exc)) from None
    except Exception as exc:  # unpickling garbage raises assorted errors
        raise BadUnit(f"malformed sequence pickle {path.name}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise BadUnit(f"malformed sequence pickle {path.name}: a {type(data).__name__}, not a dict")
    return data


def _per_actor(data: dict, key: str, n_actors: int) -> list | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, np.ndarray) and v.dtype != object:
        v = list(v)
    if not isinstance(v, (list, tuple)) or len(v) != n_actors:
        raise BadUnit(f"malformed {key}: expected a list of {n_actors} per-actor entries")
    return list(v)


def op18_to_coco(p2d: np.ndarray) -> np.ndarray:
    """[3, 18] (x; y; conf) OpenPose COCO-18 -> [17, 3] COCO-17 (x, y, conf); non-finite -> conf 0."""
    k = np.asarray(p2d, np.float64).T[list(OP18_TO_COCO)].copy()
    bad = ~np.isfinite(k).all(1) | (k[:, 2] <= 0)
    k[bad] = 0.0
    return k


def project_smpl_joints(joints_cam: np.ndarray, K: np.ndarray, width: float, height: float) -> np.ndarray:
    """[24, 3] SMPL joints in camera coordinates -> [17, 3] COCO-17 keypoints (conf 1 / 0)."""
    z = joints_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = joints_cam[:, :2] / z[:, None] * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
    ok = (z > MIN_DEPTH) & np.isfinite(uv).all(1)
    ok &= (uv[:, 0] > -OUTSIDE_FRACTION * width) & (uv[:, 0] < (1 + OUTSIDE_FRACTION) * width)
    ok &= (uv[:, 1] > -OUTSIDE_FRACTION * height) & (uv[:, 1] < (1 + OUTSIDE_FRACTION) * height)
    out = np.zeros((17, 3))
    for i, j in enumerate(SMPL_TO_COCO):
        if j >= 0 and ok[j]:
            out[i] = (uv[j, 0], uv[j, 1], 1.0)
    return out


def to_camera(points: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    return points @ w2c[:3, :3].T + w2c[:3, 3]


class ThreeDPWReader(Reader):
    name = "3dpw"
    summary = "3DPW: 1-2 people filmed by a moving phone camera (30 fps) with SMPL fits; cross-pose pairs"
    needs = ("--root: the unpacked 3DPW folder (sequenceFiles/, imageFiles/); optional --smpl-model FILE or "
             "folder (SMPL_MALE/FEMALE.pkl) for `smpl` silhouettes")
    layout = ("ROOT/sequenceFiles/{train,validation,test}/<sequence>.pkl\n"
              "ROOT/imageFiles/<sequence>/image_%05d.jpg")

    def __init__(self, root: str, options: dict | None = None):
        super().__init__(root, options)
        self.seq_dir = Path(self.options.get("annotations") or self.root / "sequenceFiles")
        self.img_dir = Path(self.options.get("videos") or self.root / "imageFiles")
        self._units: dict[str, tuple[str, Path]] | None = None
        self._models: dict[str, object] = {}

    # listing ----------------------------------------------------------------------------------
    def _find(self) -> dict[str, tuple[str, Path]]:
        if self._units is None:
            found: dict[str, tuple[str, Path]] = {}
            for folder, split in SPLIT_DIRS.items():
                d = self.seq_dir / folder
                for p in sorted(d.glob("*.pkl")) if d.is_dir() else ():
                    if p.stem in found:
                        raise ValueError(f"3dpw: sequence {p.stem} is in two split folders "
                                         f"({found[p.stem][1].parent.name} and {folder})")
                    found[p.stem] = (split, p)
            self._units = found
        return self._units

    def check(self) -> None:
        if not self._find():
            raise ValueError(f"3dpw: no sequence pickles under {self.seq_dir}/{{train,validation,test}}/ "
                             "(give the unpacked 3DPW folder as --root, or --annotations DIR/sequenceFiles)")
        if not self.img_dir.is_dir():
            raise ValueError(f"3dpw: no image folder {self.img_dir} (the imageFiles/ of 3DPW; or --videos DIR)")
        if self.options.get("smpl_model"):
            self._model("neutral")

    def unit_names(self) -> list[tuple[str, str]]:
        want = self.options.get("split")
        return [(n, s) for n, (s, _) in sorted(self._find().items()) if not want or s == want]

    # body model -------------------------------------------------------------------------------
    def _model(self, gender: str):
        """smplx SMPL for a gender ("male"/"female"/"neutral"); one file serves every gender."""
        path = Path(self.options["smpl_model"])
        key = gender if path.is_dir() else "any"
        if key not in self._models:
            import smplx

            try:
                model_file = path
                if path.is_dir():  # the actor's gender, else neutral, else whichever file is there
                    order = [gender] + [g for g in ("neutral", "male", "female") if g != gender]
                    files = [p for p in (path / f"SMPL_{g.upper()}.pkl" for g in order) if p.is_file()]
                    if not files:
                        raise ValueError("no SMPL_MALE.pkl, SMPL_FEMALE.pkl or SMPL_NEUTRAL.pkl in the folder")
                    model_file = files[0]
                # smplx would unpickle the file with plain pickle: hand it the restricted loader's arrays
                model = smplx.SMPL(model_path=str(model_file), num_betas=10,
                                   data_struct=safe_pickle.body_model_struct(model_file, "smpl"))
            except Exception as exc:  # smplx raises assorted errors for malformed files
                raise ValueError(f"--smpl-model {path}: not a loadable SMPL-format model ({exc})") from exc
            self._models[key] = model
        return self._models[key]

    # one sequence -----------------------------------------------------------------------------
    def load(self, name: str) -> Unit:
        entry = self._find().get(name)
        if entry is None:
            raise BadUnit(f"no such sequence pickle: {name}")
        split, pkl = entry
        data = load_pickle(pkl)
        missing = [k for k in REQUIRED if k not in data]
        if "jointPositions" not in data and "poses2d" not in data and "poses2D" not in data:
            missing.append("jointPositions or poses2d")
        if missing:
            raise BadUnit(f"malformed sequence pickle {pkl.name}: missing {', '.join(missing)}")
        try:
            cam_poses = np.asarray(data["cam_poses"], np.float64)
            K = np.asarray(data["cam_intrinsics"], np.float64)
        except (TypeError, ValueError) as exc:
            raise BadUnit(f"malformed cam_poses/cam_intrinsics: {exc}") from None
        if cam_poses.ndim != 3 or cam_poses.shape[1:] != (4, 4) or not np.isfinite(cam_poses).all():
            raise BadUnit(f"malformed cam_poses: shape {cam_poses.shape}, expected (N, 4, 4) finite")
        if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0):
            raise BadUnit(f"malformed cam_intrinsics: {K.tolist()}")
        N = len(cam_poses)
        valid_l = data["campose_valid"]
        n_actors = len(valid_l) if isinstance(valid_l, (list, tuple, np.ndarray)) else 0
        if n_actors == 0:
            raise BadUnit("campose_valid lists no actor")
        valid_l = _per_actor(data, "campose_valid", n_actors)
        joints_l = _per_actor(data, "jointPositions", n_actors)
        p2d_l = _per_actor(data, "poses2d" if "poses2d" in data else "poses2D", n_actors)
        poses_l = _per_actor(data, "poses", n_actors)
        trans_l = _per_actor(data, "trans", n_actors)
        betas_l = _per_actor(data, "betas", n_actors)
        genders = data.get("genders", data.get("gender"))
        genders = list(genders) if isinstance(genders, (list, tuple)) and len(genders) == n_actors else None

        img_dir = self.img_dir / name
        if not img_dir.is_dir():
            raise BadUnit(f"missing image folder {img_dir.name}/ under {self.img_dir.name}/")
        present = {int(m.group(1)) for m in map(IMAGE_RE.match, _listdir(img_dir)) if m}
        width, height = 2 * K[0, 2], 2 * K[1, 2]

        skipped: list[tuple[str, str, str]] = []
        observations: dict[tuple[str, str, int], Observation] = {}
        actors: dict[str, dict] = {}
        missing_images: set[int] = set()
        for a in range(n_actors):
            part = f"actor{a}"
            try:
                valid = np.asarray(valid_l[a]).astype(bool).reshape(-1)
                joints = None if joints_l is None else np.asarray(joints_l[a], np.float64).reshape(N, 24, 3)
                p2d = None if p2d_l is None else np.asarray(p2d_l[a], np.float64).reshape(N, 3, 18)
            except (TypeError, ValueError) as exc:
                skipped.append((part, "malformed actor arrays", str(exc)))
                continue
            if len(valid) != N:
                skipped.append((part, "malformed actor arrays", f"campose_valid has {len(valid)} rows, cam_poses {N}"))
                continue
            actors[str(a)] = {"joints": joints, "index": a}
            n_obs = 0
            for i in np.nonzero(valid)[0]:
                i = int(i)
                if i not in present:
                    missing_images.add(i)
                    continue
                kps = op18_to_coco(p2d[i]) if p2d is not None else None
                if (kps is None or (kps[:, 2] > 0).sum() < MIN_JOINTS) and joints is not None:
                    kps = project_smpl_joints(to_camera(joints[i], cam_poses[i]), K, width, height)
                if kps is None or (kps[:, 2] > 0).sum() < MIN_JOINTS:
                    continue  # the actor is not in view here
                observations[(str(a), CAMERA, i)] = Observation(keypoints=kps)
                n_obs += 1
            if n_obs < 2:
                skipped.append((part, "track too short", f"{n_obs} usable frame(s)"))
                for key in [k for k in observations if k[0] == str(a)]:
                    del observations[key]
        for i in sorted(missing_images):
            skipped.append((f"image_{i:05d}.jpg", "missing image", "frame listed in the annotation"))
        if not observations:
            raise BadUnit("no usable frame (campose_valid false, images missing or nobody in view)")

        def image_fn(cam: str, frame: int) -> Path:
            return img_dir / f"image_{frame:05d}.jpg"

        def joints_fn(track: str, frame: int) -> np.ndarray:
            """The actor's 24 SMPL joints in frame ``frame``'s camera coordinates (see the docstring)."""
            j = actors[track]["joints"]
            if j is None:
                raise KeyError("no jointPositions")
            return to_camera(j[frame], cam_poses[frame])

        meshes = None
        if self.options.get("smpl_model"):
            meshes = self._meshes_fn(poses_l, trans_l, betas_l, genders, cam_poses, N)

        frames = sorted({f for (_, _, f) in observations})
        unit = Unit(
            name=name, split=split, subject=name, fps=FPS, frames=frames, cameras=[CAMERA],
            observations=observations, images=("files", image_fn),
            calibration={CAMERA: CameraModel(K=K.copy(), R=np.eye(3), t=np.zeros(3),
                                             width=int(round(width)), height=int(round(height)))},
            meshes=meshes, joints3d=joints_fn if joints_l is not None else None, kind="body",
            silhouette_default="smpl" if meshes is not None else "keypoints",
        )
        unit.skipped = skipped
        return unit

    def _meshes_fn(self, poses_l, trans_l, betas_l, genders, cam_poses: np.ndarray, N: int):
        def meshes(track: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
            import torch

            a = int(track)
            if poses_l is None or trans_l is None or betas_l is None:
                raise BadUnit("the sequence pickle has no poses/trans/betas")
            try:
                pose = np.asarray(poses_l[a], np.float64).reshape(N, 72)[frame]
                trans = np.asarray(trans_l[a], np.float64).reshape(N, 3)[frame]
                betas = np.zeros(10)
                b = np.asarray(betas_l[a], np.float64).reshape(-1)[:10]
                betas[:len(b)] = b
            except (TypeError, ValueError, IndexError) as exc:
                raise BadUnit(f"malformed poses/trans/betas of actor {a}: {exc}") from None
            g = {"m": "male", "f": "female"}.get(str(genders[a]).lower()[:1], "neutral") if genders else "neutral"
            model = self._model(g)
            f32 = lambda x: torch.as_tensor(np.asarray(x, np.float32)[None])  # noqa: E731
            with torch.no_grad():
                out = model(betas=f32(betas), global_orient=f32(pose[:3]), body_pose=f32(pose[3:]),
                            transl=f32(trans))
            verts = out.vertices[0].numpy().astype(np.float64)
            return to_camera(verts, cam_poses[frame]), np.asarray(model.faces, np.int64)

        return meshes


def _listdir(d: Path) -> list[str]:
    try:
        return [p.name for p in d.iterdir()]
    except OSError:
        return []


class ThreeDPWSource(RealSource):
    reader_cls = ThreeDPWReader
