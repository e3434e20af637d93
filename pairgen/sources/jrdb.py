"""JRDB (2019/2022) and JRDB-Pose: pedestrians around a mobile robot, 5 individual cameras + a 360° panorama.

Layout (ROOT is a split folder such as ``train_dataset_with_activity/`` or ``train_dataset/``, or a
folder holding such split folders)::

    images/image_{0,2,4,6,8}/<seq>/<%06d>.jpg          individual cameras (752x480)
    images/image_stitched/<seq>/<%06d>.jpg              cylindrical panorama (3760x480)
    labels/labels_2d/<seq>_image<k>.json                 boxes per individual camera
    labels/labels_2d_stitched/<seq>.json                 boxes in the panorama
    labels/labels_2d_pose_coco/<seq>_image<k>.json       JRDB-Pose keypoints per camera (optional)
    labels/labels_2d_pose_stitched_coco/<seq>.json       JRDB-Pose keypoints in the panorama (optional)
    calibration/{cameras.yaml, defaults.yaml}            (not used, see below)

Units. A sequence gives up to two units:

- ``<seq>``: the individual cameras ``image_0`` .. ``image_8`` (those with a labels_2d file).
  Cross-pose pairs: one pedestrian in one camera at two frames. Cross-view pairs: one pedestrian
  at one frame in two individual cameras (adjacent cameras overlap only slightly, so these are
  rare and the person is often cut by an image border in one of the two views).
- ``<seq>@stitched``: the panorama as the single camera ``image_stitched`` (cross-pose only). It is
  a separate unit so that the panorama, which re-projects the individual images, is never paired
  with an individual camera as a "cross-view" pair.

``--reader-option views=individual|stitched|both`` (default both) picks which units are listed.
Track = the pedestrian number N of ``label_id`` ``pedestrian:N`` (other label classes are dropped);
subject = the sequence name (JRDB has no identities across sequences).

Readings chosen on the UNCERTAIN points (docs/datasets.md section 6):

- fps: 15 (``--reader-option fps=F`` overrides); frame id = the file number, time = frame / fps.
- Split: sequences under a ``test*`` folder are "test"; of the train sequences, the 7 of the
  toolkit's suggested validation list are "val", the others "train"
  (``--reader-option val=none`` puts them all in "train").
- Occlusion/truncation filter: boxes more occluded than ``max_occlusion`` (default
  ``Mostly_visible``: Severely_occluded and Fully_occluded are dropped) or truncated
  (``allow_truncated=false``, the default) are dropped. Truncated boxes are the half-people cut
  by an image border; keeping them (``allow_truncated=true``) gives more cross-view pairs, but
  their crops show part of a person. A missing attribute counts as visible / not truncated.
- The panorama wraps around at the 360° seam: a stitched box (or pose) with x + w beyond the
  panorama width (read from the first stitched JPEG's header, else 3760) or x < 0 is skipped
  (recorded per track), not split in two: the crop would show half a person.
- JRDB-Pose keypoints (JRDB order: head, right eye, left eye, right shoulder, neck, left shoulder,
  right elbow, left elbow, tailbone, right hand, right hip, left hip, left hand, right knee, left
  knee, right foot, left foot) are mapped to COCO-17 where a joint exists: eyes, shoulders,
  elbows, hips, knees; hands -> wrists and feet -> ankles (approximations); head (top), neck and
  tailbone have no COCO joint and the nose and ears stay unlabelled. Visibility is read as COCO's
  (0 not labelled, 1 labelled but occluded, 2 visible). Occluded joints lie on whoever stands in
  front, so by default (``occluded_joints=drop``) only visible joints are used: the keypoint
  silhouette then stays off the occluder (``occluded_joints=keep`` uses every labelled joint; a
  file with no joint marked 2 is read as if every labelled joint were visible).
  The frame of a pose image is the number in its ``file_name``
  (``image_id - 1`` when the name has none); ``pose_frame_offset=K`` shifts pose frames by K (a
  third-party loader reports annotations 2 frames off; not confirmed, default 0). Keypoints are
  matched to boxes by (track, frame); a pose without a kept box is not used.
- Keypoints for the individual cameras come only from the per-camera pose files
  (``labels_2d_pose_coco/<seq>_image<k>.json``, the name used by third-party loaders; UNCERTAIN).
  Stitched keypoints are NOT mapped into the individual cameras (the stitching model is not
  exact enough); without per-camera pose files those observations are box-only and the
  ``keypoints`` silhouette falls back to the box shape (poor).
- Calibration is not used: cameras.yaml's extrinsics have uncertain units and direction, so
  ``view_angle_deg`` stays empty (do not pass ``--min-view-angle-deg`` > 0: it would drop every
  cross-view pair).
- Silhouettes: default ``keypoints``. ``bgsub`` assumes a static camera and the robot moves in many
  sequences: use it only for sequences recorded standing still.

Partial problems do not fail a sequence: a camera whose labels or pose JSON is malformed, a camera
without its image folder, labelled frames missing on disk, stitched boxes across the seam and
single-frame tracks are listed on ``unit.skipped`` (counted and named ``<unit>/<part>`` in the
stats). A unit with no usable camera (e.g. a malformed labels_2d_stitched file) raises BadUnit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, Observation, Reader, Unit

FPS = 15.0
STITCHED = "image_stitched"
STITCHED_SUFFIX = "@stitched"
STITCHED_WIDTH = 3760
OCCLUSION = ("Fully_visible", "Mostly_visible", "Severely_occluded", "Fully_occluded")
# suggested validation sequences of the toolkit (detection_eval/README.md)
VAL_SEQUENCES = frozenset((
    "clark-center-2019-02-28_1", "gates-ai-lab-2019-02-08_0", "huang-2-2019-01-25_0", "meyer-green-2019-03-16_0",
    "nvidia-aud-2019-04-18_0", "tressider-2019-03-16_1", "tressider-2019-04-26_2"))
# COCO-17 joint i = JRDB-Pose joint JRDB_TO_COCO[i] (None: no such JRDB joint)
JRDB_TO_COCO = (None, 2, 1, None, None, 5, 3, 7, 6, 12, 9, 11, 10, 14, 13, 16, 15)
CAM_FILE_RE = re.compile(r"^(?P<seq>.+)_image(?P<k>\d+)\.json$")
FRAME_FILE_RE = re.compile(r"^(\d+)\.jpg$")
MIN_JOINTS = 2  # usable keypoints for a pose to be attached to a box


def _bool(text, key: str) -> bool:
    v = str(text).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"--reader-option {key}: expected true or false (got {text!r})")


def _frame_of_name(name: str) -> int | None:
    m = FRAME_FILE_RE.match(Path(str(name)).name)
    return int(m.group(1)) if m else None


def jrdb_to_coco(kps: np.ndarray, min_v: int = 1) -> np.ndarray:
    """[17, 3] JRDB-Pose keypoints (x, y, v) -> [17, 3] COCO-17 (x, y, 1 usable / 0 not); joints
    with visibility below ``min_v`` are not usable."""
    out = np.zeros((17, 3))
    for c, j in enumerate(JRDB_TO_COCO):
        if j is not None and kps[j, 2] >= min_v and kps[j, 2] > 0 and np.isfinite(kps[j, :2]).all():
            out[c] = (kps[j, 0], kps[j, 1], 1.0)
    return out


def read_labels(path: Path) -> tuple[list[tuple[int, int, np.ndarray, dict]], int]:
    """Pedestrian boxes of a labels_2d(_stitched) JSON: ([(track, frame, [x0, y0, x1, y1], attributes)],
    number of malformed entries skipped). Raises BadUnit (the reason) for a malformed file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadUnit(f"malformed {path.parent.name}/{path.name}: {exc}") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        raise BadUnit(f"malformed {path.parent.name}/{path.name}: no 'labels' object")
    out, bad = [], 0
    for name, entries in labels.items():
        frame = _frame_of_name(name)
        if frame is None or not isinstance(entries, list):
            bad += 1
            continue
        for e in entries:
            try:
                lid = str(e["label_id"])
                if not lid.startswith("pedestrian:"):
                    continue
                track = int(lid.split(":")[-1])
                x, y, w, h = (float(v) for v in e["box"])
                attrs = e.get("attributes") or {}
                if not (w > 0 and h > 0 and np.isfinite([x, y, w, h]).all()) or not isinstance(attrs, dict):
                    raise ValueError
            except (KeyError, TypeError, ValueError, AttributeError):
                bad += 1
                continue
            out.append((track, frame, np.array([x, y, x + w, y + h]), attrs))
    return out, bad


def read_pose(path: Path, offset: int = 0) -> dict[tuple[int, int], np.ndarray]:
    """JRDB-Pose COCO-style file -> {(track, frame): [17, 3] JRDB-order keypoints}. Raises BadUnit."""
    try:
        data = json.loads(path.read_text())
        frames = {}
        for im in data["images"]:
            f = _frame_of_name(im.get("file_name", ""))
            frames[int(im["id"])] = (int(im["id"]) - 1 if f is None else f) + offset
        out = {}
        for a in data["annotations"]:
            k = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
            iid = int(a["image_id"])
            frame = frames[iid] if iid in frames else iid - 1 + offset
            out[(int(a["track_id"]), frame)] = k
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadUnit(f"malformed {path.parent.name}/{path.name}: {type(exc).__name__}: {exc}") from None
    return out


def _frames_on_disk(folder: Path) -> set[int] | None:
    try:
        return {int(m.group(1)) for m in map(FRAME_FILE_RE.match, (p.name for p in folder.iterdir())) if m}
    except OSError:
        return None


def _jpeg_width(folder: Path) -> int | None:
    from pairgen.real.frames import jpeg_size  # a JPEG-header reader, no decoding

    try:
        for p in sorted(folder.iterdir())[:3]:
            size = jpeg_size(p)
            if size:
                return size[0]
    except OSError:
        return None
    return None


def _frame_list(frames) -> str:
    frames = sorted(frames)
    return ", ".join(str(f) for f in frames[:10]) + (f" ... ({len(frames)} frames)" if len(frames) > 10 else "")


class JrdbReader(Reader):
    name = "jrdb"
    summary = ("JRDB / JRDB-Pose: pedestrians around a robot; cross-pose along tracks per camera (and the "
               "panorama), rare cross-view pairs where adjacent cameras overlap; no calibration used")
    needs = ("--root: a JRDB split folder (train_dataset_with_activity/ or train_dataset/) or its parent; "
             "--reader-option fps=15 views=both|individual|stitched val=toolkit|none max_occlusion=Mostly_visible "
             "allow_truncated=false occluded_joints=drop pose_frame_offset=0")
    layout = ("ROOT/images/image_{0,2,4,6,8,stitched}/<seq>/<%06d>.jpg, ROOT/labels/labels_2d/<seq>_image<k>.json, "
              "ROOT/labels/labels_2d_stitched/<seq>.json, [ROOT/labels/labels_2d_pose_coco/<seq>_image<k>.json], "
              "[ROOT/labels/labels_2d_pose_stitched_coco/<seq>.json]")
    option_help = {
        "fps": f"frame rate of the frame numbers (default {FPS:g})",
        "views": "both (default), individual (the 5 cameras) or stitched (the panorama)",
        "val": "toolkit (default: the toolkit's 7 suggested val sequences) or none (all train)",
        "max_occlusion": "most occluded box kept: Fully_visible, Mostly_visible (default), Severely_occluded "
                         "or Fully_occluded",
        "allow_truncated": "true or false (default): keep boxes cut by the image border",
        "occluded_joints": "drop (default) or keep the joints JRDB-Pose marks occluded",
        "pose_frame_offset": "integer added to a box's frame to find its pose (default 0)",
    }

    def __init__(self, root: str, options: dict | None = None):
        super().__init__(root, options)
        self._seqs: dict[str, Path] | None = None
        self._parse_options()

    def _parse_options(self) -> None:
        o = self.options
        self.fps = self.number_option("fps", FPS)
        try:
            self.pose_offset = int(o.get("pose_frame_offset", 0))
        except ValueError:
            raise ValueError("jrdb: --reader-option pose_frame_offset takes an integer") from None
        self.views = str(o.get("views", "both"))
        if self.views not in ("both", "individual", "stitched"):
            raise ValueError(f"jrdb: --reader-option views takes both, individual or stitched (got {self.views})")
        self.val = str(o.get("val", "toolkit"))
        if self.val not in ("toolkit", "none"):
            raise ValueError(f"jrdb: --reader-option val takes toolkit or none (got {self.val})")
        occ = str(o.get("max_occlusion", "Mostly_visible"))
        match = [i for i, n in enumerate(OCCLUSION) if n.lower() == occ.lower()]
        if not match:
            raise ValueError(f"jrdb: --reader-option max_occlusion takes one of {', '.join(OCCLUSION)} (got {occ})")
        self.max_occlusion = match[0]
        self.allow_truncated = _bool(o.get("allow_truncated", "false"), "allow_truncated")
        self.occluded_joints = str(o.get("occluded_joints", "drop"))
        if self.occluded_joints not in ("drop", "keep"):
            raise ValueError(f"jrdb: --reader-option occluded_joints takes drop or keep (got {self.occluded_joints})")

    # listing ----------------------------------------------------------------------------------
    def _split_dirs(self) -> list[Path]:
        if (self.root / "labels").is_dir():
            return [self.root]
        try:
            return sorted(d for d in self.root.iterdir() if (d / "labels").is_dir() and (d / "images").is_dir())
        except OSError:
            return []

    def _find(self) -> dict[str, Path]:
        """{sequence: split folder} from the label files."""
        if self._seqs is not None:
            return self._seqs
        found: dict[str, Path] = {}
        for d in self._split_dirs():
            seqs = set()
            lab = d / "labels"
            for p in (lab / "labels_2d").glob("*.json") if (lab / "labels_2d").is_dir() else ():
                m = CAM_FILE_RE.match(p.name)
                if m:
                    seqs.add(m.group("seq"))
            for p in (lab / "labels_2d_stitched").glob("*.json") if (lab / "labels_2d_stitched").is_dir() else ():
                seqs.add(p.stem)
            for s in seqs:
                if s in found:
                    raise ValueError(f"jrdb: sequence {s} is labelled in two split folders ({found[s]} and {d})")
                found[s] = d
        self._seqs = found
        return found

    def check(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"--root {self.root}: not a directory")
        if not self._find():
            raise ValueError(f"--root {self.root}: no JRDB labels (expected labels/labels_2d/<seq>_image<k>.json or "
                             "labels/labels_2d_stitched/<seq>.json under a split folder such as "
                             "train_dataset_with_activity/)")

    def split_of(self, seq: str) -> str:
        if self._find()[seq].name.lower().startswith("test"):
            return "test"
        return "val" if self.val == "toolkit" and seq in VAL_SEQUENCES else "train"

    def unit_names(self) -> list[tuple[str, str]]:
        out = []
        for seq, d in sorted(self._find().items()):
            lab = d / "labels"
            if self.views in ("both", "individual") and any(
                    CAM_FILE_RE.match(p.name) for p in (lab / "labels_2d").glob(f"{glob_escape(seq)}_image*.json")):
                out.append((seq, self.split_of(seq)))
            if self.views in ("both", "stitched") and (lab / "labels_2d_stitched" / f"{seq}.json").is_file():
                out.append((seq + STITCHED_SUFFIX, self.split_of(seq)))
        return sorted(out)

    # one unit ---------------------------------------------------------------------------------
    def load(self, name: str) -> Unit:
        stitched = name.endswith(STITCHED_SUFFIX)
        seq = name[: -len(STITCHED_SUFFIX)] if stitched else name
        d = self._find().get(seq)
        if d is None:
            raise BadUnit(f"no such sequence: {seq}")
        lab = d / "labels"
        skipped: list[tuple[str, str, str]] = []
        if stitched:
            sources = {STITCHED: (lab / "labels_2d_stitched" / f"{seq}.json",
                                  lab / "labels_2d_pose_stitched_coco" / f"{seq}.json")}
        else:
            sources = {}
            for p in sorted((lab / "labels_2d").glob(f"{glob_escape(seq)}_image*.json")):
                m = CAM_FILE_RE.match(p.name)
                if m and m.group("seq") == seq:
                    cam = f"image_{int(m.group('k'))}"
                    sources[cam] = (p, lab / "labels_2d_pose_coco" / f"{seq}_image{int(m.group('k'))}.json")
        observations: dict[tuple[str, str, int], Observation] = {}
        for cam, (label_path, pose_path) in sorted(sources.items(), key=lambda kv: _cam_order(kv[0])):
            try:
                boxes, bad = read_labels(label_path)
            except BadUnit as exc:
                if stitched:
                    raise
                skipped.append((cam, "malformed labels JSON", str(exc)))
                continue
            if bad:
                skipped.append((cam, "malformed label entries", f"{bad} entries in {label_path.name}"))
            img_dir = d / "images" / cam / seq
            on_disk = _frames_on_disk(img_dir)
            if on_disk is None:
                skipped.append((cam, "missing image folder", f"images/{cam}/{seq}"))
                continue
            poses: dict = {}
            if pose_path.is_file():
                try:
                    poses = read_pose(pose_path, self.pose_offset)
                except BadUnit as exc:
                    skipped.append((cam, "malformed pose JSON", str(exc)))
            # occluded joints (v = 1) are dropped unless kept, or unless the file marks no joint visible
            # (then v = 1 cannot mean "occluded" there)
            min_v = 2 if self.occluded_joints == "drop" and any((k[:, 2] == 2).any() for k in poses.values()) else 1
            width = (_jpeg_width(img_dir) or STITCHED_WIDTH) if cam == STITCHED else None
            missing: set[int] = set()
            wraps: dict[int, list[int]] = {}
            for track, frame, box, attrs in boxes:
                if not self._keep(attrs):
                    continue
                if frame not in on_disk:
                    missing.add(frame)
                    continue
                kps = None
                if (track, frame) in poses:
                    kps = jrdb_to_coco(poses[(track, frame)], min_v)
                    if (kps[:, 2] > 0).sum() < MIN_JOINTS:
                        kps = None
                if width is not None:
                    xs = [box[0], box[2]] + ([] if kps is None else list(kps[kps[:, 2] > 0, 0]))
                    if min(xs) < 0 or max(xs) > width:
                        wraps.setdefault(track, []).append(frame)
                        continue
                observations[(str(track), cam, frame)] = Observation(box=box, keypoints=kps)
            if missing:
                skipped.append((cam, "labelled frames missing on disk", _frame_list(missing)))
            for track, frames in sorted(wraps.items()):
                skipped.append((f"{cam} track {track}", "box wraps around the 360-degree seam", _frame_list(frames)))
        if not observations:
            raise BadUnit("no usable pedestrian box" + (f" ({skipped[0][0]}: {skipped[0][2]})" if skipped else ""))
        cams = sorted({c for _, c, _ in observations}, key=_cam_order)
        per_view: dict[tuple[str, str], list[int]] = {}
        for (t, c, f) in observations:
            per_view.setdefault((c, t), []).append(f)
        for cam in cams:
            single = sorted((int(t) for (c, t), fs in per_view.items() if c == cam and len(fs) == 1))
            if single:
                skipped.append((cam, "single-frame tracks (no cross-pose pair)",
                                "tracks " + ", ".join(map(str, single))))

        def image_fn(cam: str, frame: int) -> Path:
            return d / "images" / cam / seq / f"{frame:06d}.jpg"

        return Unit(name=name, split=self.split_of(seq), subject=seq, fps=self.fps,
                    frames=sorted({f for _, _, f in observations}), cameras=cams, observations=observations,
                    images=("files", image_fn), kind="body", silhouette_default="keypoints", skipped=skipped)

    def _keep(self, attrs: dict) -> bool:
        occ = str(attrs.get("occlusion", OCCLUSION[0]))
        level = next((i for i, n in enumerate(OCCLUSION) if n.lower() == occ.lower()), 0)
        if level > self.max_occlusion:
            return False
        trunc = attrs.get("truncated", False)
        truncated = trunc if isinstance(trunc, bool) else str(trunc).strip().lower() == "true"
        return self.allow_truncated or not truncated


def _cam_order(cam: str) -> tuple[int, str]:
    m = re.match(r"^image_(\d+)$", cam)
    return (int(m.group(1)), cam) if m else (10 ** 6, cam)


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


class JrdbSource(RealSource):
    reader_cls = JrdbReader
