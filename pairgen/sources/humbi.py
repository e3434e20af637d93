"""HUMBI, body subset: one subject seen by a ring of ~40-107 synchronised, calibrated cameras.

Layout (ROOT is one bundle such as ``Body_81_140/`` or a folder of bundles)::

    <bundle>/subject_<N>/body/
        intrinsic.txt  extrinsic.txt  project.txt        3 header lines, then one block per camera
        <frame %08d>/image/image<cam %07d>.jpg            1920x1080 views
        <frame %08d>/reconstruction/keypoints.txt        25 x 3 OpenPose BODY_25 joints, metres, world
        <frame %08d>/reconstruction/smpl_vertex.txt      SMPL vertices (6890 x 3), world

Unit = one subject; track "0" (one person per capture). Cross-view pairs come from one frame folder
seen by two cameras, cross-pose pairs from one camera over the subject's frame folders (their
numbers are frame indices at 60 Hz, not consecutive).

Readings chosen where the documentation is uncertain (see docs/datasets.md section 4):

- R in extrinsic.txt is world-to-camera (``X_cam = R (X - C)``, ``t = -R C``), as the official code
  uses it (its comment says otherwise); project.txt's ``M = K R [I | -C]`` is checked against it
  and a camera whose three files disagree is dropped (recorded), not the subject.
- No lens distortion (none is shipped); pixel origin 0-based, centres at integers (OpenCV).
- Image sizes are read from a JPEG header per camera (1920x1080 originals, resized copies work).
- Split: HUMBI has no official split. Subjects whose id is a multiple of 10 are "val", all
  others "train" (deterministic, ~10% held out).
- 2D keypoints: keypoints.txt's BODY_25 joints converted to COCO-17 and projected with each
  camera; joints behind the camera or more than half a frame outside the image are dropped. The
  box spans all 25 projected joints (feet included).
- Silhouettes: default ``keypoints``. Median background subtraction needs the person to move
  across the frame, but HUMBI subjects perform in place at the centre of the dome, so the median
  keeps the person; ``bgsub`` is available for captures where the subject moves. With
  ``--smpl-model FILE`` (the user's SMPL .pkl/.npz, or HUMBI's ``body/model/mesh_tri_smpl.txt``
  face table) the default becomes ``smpl``: smpl_vertex.txt rasterised with the model's faces.

Partial problems (a camera whose calibration disagrees, a frame with a malformed keypoints.txt,
images missing from some frames) do not fail the subject: they are listed on ``unit.skipped`` as
(part, reason, detail) for the stats; a subject without usable cameras or frames raises BadUnit.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pairgen.real.frames import jpeg_size
from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, CameraModel, Observation, Reader, Unit

FPS = 60.0
TRACK = "0"
SUBJECT_RE = re.compile(r"^subject_(\d+)$")
FRAME_RE = re.compile(r"^\d{8}$")
IMAGE_RE = re.compile(r"^image(\d{7})\.jpg$")
# COCO-17 joint i is BODY_25 joint BODY25_TO_COCO[i]
BODY25_TO_COCO = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)
OUTSIDE_FRACTION = 0.5  # joints further outside the image than this fraction of its size are dropped
MIN_DEPTH = 0.05  # metres in front of the camera
MIN_VISIBLE_JOINTS = 4  # fewer projected COCO joints: the person is not in this view
BOX_PAD = 0.10  # box padding around the projected joints, fraction of the box's longer side
PROJECT_TOLERANCE = 1e-3  # relative disagreement allowed between project.txt and K R [I | -C]


def split_of(subject_id: int) -> str:
    """HUMBI ships no split: every 10th subject (id % 10 == 0) is held out as "val"."""
    return "val" if subject_id % 10 == 0 else "train"


# -- camera files ----------------------------------------------------------------------------
def _camera_blocks(path: Path, rows: int, cols: int) -> dict[int, np.ndarray]:
    """Blocks of a HUMBI camera file: 3 header lines, then per camera ``0 <cam_id>`` and ``rows``
    lines of ``cols`` numbers (extrinsic.txt: C then R, 4 x 3).
    Raises BadUnit naming the file and line for anything malformed."""
    if not path.is_file():
        raise BadUnit(f"missing {path.name}")
    lines = [ln.split() for ln in path.read_text(errors="replace").splitlines()[3:]]
    lines = [(i + 4, ln) for i, ln in enumerate(lines) if ln]
    if len(lines) % (rows + 1):
        raise BadUnit(f"malformed {path.name}: {len(lines)} data lines is not a multiple of {rows + 1}")
    out: dict[int, np.ndarray] = {}
    for b in range(0, len(lines), rows + 1):
        lineno, head = lines[b]
        try:
            if len(head) != 2 or float(head[0]) != 0:
                raise ValueError
            cam = int(head[1])
            mat = [[float(v) for v in ln] for _, ln in lines[b + 1:b + 1 + rows]]
        except ValueError:
            raise BadUnit(f"malformed {path.name} at line {lineno}: expected '0 <camera id>' and numbers") from None
        widths = [len(r) for r in mat]
        if len(mat) != rows or any(w != cols for w in widths):
            raise BadUnit(f"malformed {path.name}: camera {cam} block has rows of {widths} numbers")
        block = np.array(mat, np.float64)
        if not np.isfinite(block).all():
            raise BadUnit(f"malformed {path.name}: camera {cam} has non-finite values")
        if cam in out:
            raise BadUnit(f"malformed {path.name}: camera {cam} listed twice")
        out[cam] = block
    return out


def read_cameras(body_dir: Path) -> tuple[dict[int, CameraModel], list[tuple[str, str, str]], set[int]]:
    """Cameras of a subject from intrinsic.txt / extrinsic.txt (checked against project.txt when
    present). Returns (cameras, skipped, listed): skipped names the cameras dropped and why, listed
    is every camera id the files mention."""
    intr = _camera_blocks(body_dir / "intrinsic.txt", 3, 3)
    extr = _camera_blocks(body_dir / "extrinsic.txt", 4, 3)
    proj = _camera_blocks(body_dir / "project.txt", 3, 4) if (body_dir / "project.txt").exists() else {}
    cams: dict[int, CameraModel] = {}
    skipped = []
    for cam in sorted(set(intr) | set(extr)):
        part = f"camera {cam}"
        if cam not in intr or cam not in extr:
            skipped.append((part, "camera not in both intrinsic.txt and extrinsic.txt", ""))
            continue
        K, C, R = intr[cam], extr[cam][0], extr[cam][1:]
        if not (K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], [0, 0, 1], atol=1e-6)):
            skipped.append((part, "bad intrinsics", f"K = {K.tolist()}"))
            continue
        if not (np.allclose(R @ R.T, np.eye(3), atol=2e-3) and np.linalg.det(R) > 0):
            skipped.append((part, "extrinsic R is not a rotation", f"R = {R.tolist()}"))
            continue
        if cam in proj:
            M = K @ R @ np.hstack([np.eye(3), -C[:, None]])
            P = proj[cam]
            scale = np.sum(M * P) / max(np.sum(P * P), 1e-30)  # project.txt may differ by a scale
            err = np.linalg.norm(scale * P - M) / max(np.linalg.norm(M), 1e-30)
            if not err < PROJECT_TOLERANCE:
                skipped.append((part, "project.txt disagrees with K R [I|-C]", f"relative error {err:.3g}"))
                continue
        cams[cam] = CameraModel(K=K.copy(), R=R.copy(), t=-R @ C)
    return cams, skipped, set(intr) | set(extr)


# -- annotations -----------------------------------------------------------------------------
def read_points(path: Path, count: int | None = None) -> np.ndarray:
    """[N, 3] numbers of a keypoints.txt / smpl_vertex.txt (space or comma separated)."""
    try:
        text = path.read_text(errors="replace").replace(",", " ")
        rows = [ln.split() for ln in text.splitlines() if ln.strip()]
        pts = np.array([[float(v) for v in r[:3]] for r in rows if len(r) >= 3], np.float64)
    except (OSError, ValueError) as exc:
        raise BadUnit(f"malformed {path.name}: {exc}") from None
    if len(pts) != len(rows) or pts.ndim != 2 or (count is not None and len(pts) != count):
        raise BadUnit(f"malformed {path.name}: {len(rows)} rows, expected {count or 'N'} rows of 3 numbers")
    if not np.isfinite(pts).all():
        raise BadUnit(f"malformed {path.name}: non-finite values")
    return pts




def load_faces(model_path: str) -> np.ndarray:
    """Triangle faces [F, 3] (0-based) of the user's SMPL model: a .pkl/.npz read by smplx, or a
    text face table such as HUMBI's body/model/mesh_tri_smpl.txt (1-based indices accepted)."""
    p = Path(model_path)
    if p.suffix == ".txt":
        faces = np.loadtxt(p, dtype=np.float64).astype(np.int64).reshape(-1, 3)
        return faces - 1 if faces.min() == 1 else faces
    import smplx

    from pairgen import safe_pickle

    try:  # smplx would unpickle the file with plain pickle: hand it the restricted loader's arrays
        model = smplx.SMPL(model_path=str(p), data_struct=safe_pickle.body_model_struct(p, "smpl"))
    except Exception as exc:  # smplx raises assorted errors for malformed files
        raise ValueError(f"--smpl-model {model_path}: not a loadable SMPL-format file ({exc})") from exc
    return np.asarray(model.faces, np.int64)


def project_observation(cam: CameraModel, body25: np.ndarray, valid: np.ndarray) -> Observation | None:
    """COCO-17 keypoints and a box of the BODY_25 world joints seen by ``cam`` (None: not in view)."""
    uv, z = cam.project(body25)
    W, H = cam.width, cam.height
    ok = valid & (z > MIN_DEPTH) & np.isfinite(uv).all(1)
    ok &= (uv[:, 0] > -OUTSIDE_FRACTION * W) & (uv[:, 0] < (1 + OUTSIDE_FRACTION) * W)
    ok &= (uv[:, 1] > -OUTSIDE_FRACTION * H) & (uv[:, 1] < (1 + OUTSIDE_FRACTION) * H)
    idx = list(BODY25_TO_COCO)
    kps = np.zeros((17, 3))
    kps[ok[idx], :2] = uv[idx][ok[idx]]
    kps[ok[idx], 2] = 1.0
    if ok[idx].sum() < MIN_VISIBLE_JOINTS:
        return None
    p = uv[ok]
    x0, y0 = p.min(0)
    x1, y1 = p.max(0)
    pad = BOX_PAD * max(x1 - x0, y1 - y0)
    return Observation(box=np.array([x0 - pad, y0 - pad, x1 + pad, y1 + pad]), keypoints=kps)


# -- the reader ------------------------------------------------------------------------------
class HumbiReader(Reader):
    name = "humbi"
    summary = "HUMBI body: one subject in a dome of ~40-107 calibrated cameras; cross-view and cross-pose"
    needs = ("--root: a HUMBI body bundle (Body_<a>_<b>/) or a folder of bundles; optional --smpl-model FILE "
             "for `smpl` silhouettes (SMPL .pkl/.npz, or HUMBI's body/model/mesh_tri_smpl.txt)")
    layout = ("ROOT/[Body_<a>_<b>/]subject_<N>/body/{intrinsic,extrinsic,project}.txt, "
              "<frame %08d>/image/image<cam %07d>.jpg, <frame %08d>/reconstruction/{keypoints,smpl_vertex}.txt")

    def __init__(self, root: str, options: dict | None = None):
        super().__init__(root, options)
        self._subjects: dict[str, Path] | None = None
        self._faces: np.ndarray | None = None

    # listing ----------------------------------------------------------------------------------
    def _find_subjects(self) -> dict[str, Path]:
        if self._subjects is not None:
            return self._subjects
        found: dict[str, Path] = {}
        bundles = [self.root] + sorted(p for p in self.root.iterdir() if p.is_dir() and not SUBJECT_RE.match(p.name))
        for bundle in bundles:
            for d in sorted(bundle.iterdir()) if bundle.is_dir() else ():
                if SUBJECT_RE.match(d.name) and (d / "body").is_dir():
                    if d.name in found:
                        raise ValueError(f"humbi: {d.name} is in two bundles ({found[d.name].parent.parent} and "
                                         f"{bundle}); keep one copy")
                    found[d.name] = d / "body"
        self._subjects = found
        return found

    def check(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"--root {self.root}: not a directory")
        if not self._find_subjects():
            raise ValueError(f"--root {self.root}: no subject_<N>/body folders (give a HUMBI body bundle such as "
                             "Body_81_140/ or a folder of bundles)")
        smpl = self.options.get("smpl_model")
        if smpl:
            self.faces()

    def unit_names(self) -> list[tuple[str, str]]:
        names = sorted(self._find_subjects(), key=lambda n: int(SUBJECT_RE.match(n).group(1)))
        return [(n, split_of(int(SUBJECT_RE.match(n).group(1)))) for n in names]

    def faces(self) -> np.ndarray | None:
        if self._faces is None and self.options.get("smpl_model"):
            self._faces = load_faces(self.options["smpl_model"])
        return self._faces

    # one subject ------------------------------------------------------------------------------
    def load(self, name: str) -> Unit:
        body = self._find_subjects().get(name)
        if body is None:
            raise BadUnit(f"no such subject folder: {name}")
        sid = int(SUBJECT_RE.match(name).group(1))
        cams, skipped, listed = read_cameras(body)
        if not cams:
            raise BadUnit("no calibrated camera")
        frames = sorted(int(d.name) for d in body.iterdir() if FRAME_RE.match(d.name) and d.is_dir())
        if not frames:
            raise BadUnit("no frame folders")

        joints: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        images: dict[int, set[int]] = {}
        for fr in frames:
            fdir = body / f"{fr:08d}"
            kp_path = fdir / "reconstruction" / "keypoints.txt"
            if not kp_path.is_file():
                skipped.append((f"frame {fr:08d}", "missing keypoints.txt", ""))
                continue
            try:
                pts = read_points(kp_path, 25)
            except BadUnit as exc:
                skipped.append((f"frame {fr:08d}", "malformed keypoints.txt", str(exc)))
                continue
            valid = np.abs(pts).sum(1) > 0  # OpenPose writes undetected joints as zeros
            joints[fr] = (pts, valid)
            img_dir = fdir / "image"
            images[fr] = ({int(m.group(1)) for m in map(IMAGE_RE.match, _listdir(img_dir)) if m}
                          if img_dir.is_dir() else set())
        if not joints:
            raise BadUnit("no frame with a readable keypoints.txt")

        # cameras that appear in the images: a camera never imaged is simply not part of the capture
        seen = set().union(*images.values())
        for cam in sorted(seen - listed):
            skipped.append((f"camera {cam}", "images without calibration", ""))
        for cam in sorted(set(cams) & seen):
            if not self._set_size(body, cams[cam], cam, [fr for fr in frames if cam in images.get(fr, ())]):
                skipped.append((f"camera {cam}", "no readable JPEG header", ""))
                del cams[cam]
            elif not (0 <= cams[cam].K[0, 2] <= cams[cam].width and 0 <= cams[cam].K[1, 2] <= cams[cam].height):
                skipped.append((f"camera {cam}", "principal point outside the image (intrinsics for another size?)",
                                f"image {cams[cam].width}x{cams[cam].height}"))
                del cams[cam]
        used = sorted(set(cams) & seen)
        for fr in sorted(joints):
            if not images[fr]:
                skipped.append((f"frame {fr:08d}", "missing image folder", ""))
                del joints[fr]
                continue
            for cam in used:
                if cam not in images[fr]:
                    skipped.append((f"frame {fr:08d} camera {cam}", "missing image", ""))

        observations: dict[tuple[str, str, int], Observation] = {}
        for fr, (pts, valid) in joints.items():
            for cam in used:
                if cam in images[fr]:
                    obs = project_observation(cams[cam], pts, valid)
                    if obs is not None:
                        observations[(TRACK, str(cam), fr)] = obs
        if not observations:
            raise BadUnit("the person is not seen by any camera")

        def image_fn(cam: str, frame: int) -> Path:
            return body / f"{frame:08d}" / "image" / f"image{int(cam):07d}.jpg"

        def joints_fn(track: str, frame: int) -> np.ndarray:
            pts, valid = joints[frame]
            out = pts[list(BODY25_TO_COCO)].copy()
            out[~valid[list(BODY25_TO_COCO)]] = np.nan
            return out

        faces = self.faces()
        meshes = None
        if faces is not None:
            def meshes(track: str, frame: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: F811
                verts = read_points(body / f"{frame:08d}" / "reconstruction" / "smpl_vertex.txt")
                if faces.max() >= len(verts):
                    raise BadUnit(f"smpl_vertex.txt of frame {frame:08d} has {len(verts)} vertices; the SMPL "
                                  f"model's faces need {faces.max() + 1}")
                return verts, faces

        unit = Unit(
            name=name, split=split_of(sid), subject=str(sid), fps=FPS, frames=sorted(joints),
            cameras=[str(c) for c in used], observations=observations, images=("files", image_fn),
            calibration={str(c): cams[c] for c in used}, meshes=meshes, joints3d=joints_fn, kind="body",
            silhouette_default="smpl" if meshes is not None else "keypoints",
        )
        unit.skipped = skipped  # partial problems for the stats (see the module docstring)
        return unit

    def _set_size(self, body: Path, cam: CameraModel, cam_id: int, frames: list[int], tries: int = 3) -> bool:
        """Width/height of a camera's images from the first readable JPEG header."""
        for fr in frames[:tries]:
            size = jpeg_size(body / f"{fr:08d}" / "image" / f"image{cam_id:07d}.jpg")
            if size:
                cam.width, cam.height = size
                return True
        return False


def _listdir(d: Path) -> list[str]:
    try:
        return sorted(p.name for p in d.iterdir())
    except OSError:
        return []


class HumbiSource(RealSource):
    reader_cls = HumbiReader
