"""PoseTrack 2018 and PoseTrack21: monocular web/MPII videos with per-video person tracks.

Layouts (ROOT is the extracted dataset; both are recognised)::

    PoseTrack18:  ROOT/images/{train,val,test}/<seq>/<%06d>.jpg
                  ROOT/annotations/{train,val}/<seq>.json            (or posetrack_data/annotations/...)
    PoseTrack21:  ROOT/images/{train,val}/<seq>/<%06d>.jpg
                  ROOT/posetrack_data/{train,val}/<seq>.json

One COCO-style JSON per video: ``images[]`` (file_name "images/...", id, frame_id, vid_id, nframes,
is_labeled, ignore_regions_x/y) and ``annotations[]`` (image_id, track_id, keypoints 17 x [x, y, v]
in PoseTrack order, bbox / bbox_head [x, y, w, h]; PoseTrack21 adds person_id).

Unit = one video (sequence folder, e.g. ``000001_bonn_train``); one camera, ``cam0``; track = the
JSON's ``track_id`` (as a string). Only cross-pose pairs: two labelled frames of one track.

Readings chosen where the documentation is uncertain (docs/datasets.md section 5):

- Annotation folder: the first of ``posetrack_data/{train,val}`` (PoseTrack21),
  ``annotations/{train,val}``, ``posetrack_data/annotations/{train,val}`` (PoseTrack18) that
  exists; ``--annotations DIR`` (a folder holding train/ and val/) overrides. Images are looked up
  relative to the folder holding ``images/``: ROOT, ``ROOT/posetrack_data`` or ``--videos DIR``.
- Split = the annotation sub-folder (train / val; val video names end in ``_test``). The test
  split has no public annotations and is not listed.
- Frame id = the number of the image file (``000042.jpg`` -> 42), i.e. the frame index within the
  video; ``frame_id % 10000`` when the file name is not a number. FPS is not in the annotations:
  ``--reader-option fps=N`` (default 25), time = frame / fps.
- Frames: only images with ``is_labeled`` true (missing key: labelled) are used, and only people
  with at least 4 labelled keypoints (PoseTrack21 box-only people give no silhouette). A labelled
  frame whose image file is missing is dropped and recorded.
- Keypoints -> COCO-17: nose and joints 5..16 are copied (v > 0 -> confidence 1); COCO eyes and
  ears get confidence 0 (PoseTrack's ears are zero placeholders). ``head_bottom`` / ``head_top``
  are not COCO joints: they (and ``bbox_head``, ``bbox``) only widen the person box.
- Ignore regions: a person whose box lies mostly (> 50 %) inside the frame's ignore polygons is
  dropped (recorded once per track).
- Subject: PoseTrack21 ``person_id`` when present, else ``<seq>/<track_id>``, per track in
  ``unit.track_subjects`` (the manifest's subject); ``unit.subject`` is the video name.

Partial problems (a missing image, a malformed annotation entry, a track labelled in one frame
only, people inside ignore regions, labelled joints stored as NaN: left out, and the person
dropped when fewer than 4 joints remain) are listed on ``unit.skipped``; a malformed or empty JSON
raises BadUnit.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, Observation, Reader, Unit

CAMERA = "cam0"
DEFAULT_FPS = 25.0
SPLITS = ("train", "val")
# (annotation folder relative to ROOT, format) in the order they are tried
ANNOTATION_DIRS = (("posetrack_data", "posetrack21"), ("annotations", "posetrack18"),
                   ("posetrack_data/annotations", "posetrack18"))
MIN_KEYPOINTS = 4  # labelled joints a person needs to be used
IGNORE_FRACTION = 0.5  # people whose box lies more than this inside ignore regions are dropped
# COCO-17 joint i is PoseTrack joint PT_OF_COCO[i] (None: absent -> confidence 0)
PT_OF_COCO = (0, None, None, None, None, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
HEAD_BOTTOM, HEAD_TOP = 1, 2
FRAME_RE = re.compile(r"^(\d+)$")


def frame_index(image: dict) -> int:
    """Frame index within the video: the image file's number, else ``frame_id``'s last 4 digits."""
    stem = Path(str(image.get("file_name", ""))).stem
    m = FRAME_RE.match(stem)
    if m:
        return int(m.group(1))
    fid = image.get("frame_id", image.get("id"))
    if isinstance(fid, (int, float)) and math.isfinite(fid):
        return int(fid) % 10000
    raise ValueError(f"no frame index in image entry {image.get('file_name')!r}")


def _xywh(v) -> np.ndarray | None:
    """[x0, y0, x1, y1] of a COCO [x, y, w, h] box (None when absent or degenerate)."""
    try:
        b = np.asarray(v, np.float64).reshape(4)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(b).all() or b[2] <= 0 or b[3] <= 0:
        return None
    return np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]])


def convert_keypoints(raw) -> tuple[np.ndarray, np.ndarray]:
    """PoseTrack 17 x [x, y, v] (flat 51 numbers) -> (COCO-17 [17, 3] with confidence 0/1,
    PoseTrack [17, 3] with v > 0 as 1). Raises ValueError when malformed."""
    k = np.asarray(raw, np.float64)
    if k.size != 51:
        raise ValueError(f"keypoints has {k.size} numbers, expected 51")
    k = k.reshape(17, 3)
    ok = np.isfinite(k).all(1) & (k[:, 2] > 0)
    pt = np.where(ok[:, None], np.column_stack([k[:, :2], np.ones(17)]), 0.0)
    coco = np.zeros((17, 3))
    for c, p in enumerate(PT_OF_COCO):
        if p is not None:
            coco[c] = pt[p]
    return coco, pt


def ignore_polygons(image: dict) -> list[np.ndarray]:
    """The image's ignore regions as [N, 2] polygons (malformed ones are left out)."""
    xs, ys = image.get("ignore_regions_x") or [], image.get("ignore_regions_y") or []
    if xs and not isinstance(xs[0], (list, tuple)):  # a single polygon as flat lists
        xs, ys = [xs], [ys]
    out = []
    for px, py in zip(xs, ys):
        try:
            poly = np.column_stack([np.asarray(px, np.float64), np.asarray(py, np.float64)])
        except (TypeError, ValueError):
            continue
        if len(poly) >= 3 and np.isfinite(poly).all():
            out.append(poly)
    return out


def fraction_inside(box: np.ndarray, polygons: list[np.ndarray], res: int = 64) -> float:
    """Fraction of ``box`` [x0, y0, x1, y1] covered by the polygons (rasterised at <= res px)."""
    import cv2

    if not polygons:
        return 0.0
    x0, y0, x1, y1 = box
    s = res / max(x1 - x0, y1 - y0, 1e-6)
    w, h = max(1, int(round((x1 - x0) * s))), max(1, int(round((y1 - y0) * s)))
    mask = np.zeros((h, w), np.uint8)
    pts = [np.round((p - [x0, y0]) * s * 4).astype(np.int32) for p in polygons]
    cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=2)
    return float(mask.mean())


class PoseTrackReader(Reader):
    name = "posetrack"
    summary = "PoseTrack 2018 / PoseTrack21: monocular videos, person tracks; cross-pose pairs along tracks"
    needs = ("--root: the PoseTrack18 or PoseTrack21 folder holding images/ and the per-video JSONs; "
             "optional --reader-option fps=N (default 25), --annotations DIR (holding train/ val/)")
    layout = ("ROOT/images/{train,val}/<seq>/<%06d>.jpg + ROOT/annotations/{train,val}/<seq>.json (PoseTrack18; "
              "or posetrack_data/annotations/...) or ROOT/posetrack_data/{train,val}/<seq>.json (PoseTrack21)")
    option_help = {"fps": f"frame rate of the videos, not stated by the annotations (default {DEFAULT_FPS:g})"}

    def __init__(self, root: str, options: dict | None = None):
        super().__init__(root, options)
        self._ann: tuple[Path, str] | None = None
        self._files: dict[str, tuple[Path, str]] | None = None

    # options and folders ----------------------------------------------------------------------
    @property
    def fps(self) -> float:
        return self.number_option("fps", DEFAULT_FPS)

    def annotation_dir(self) -> tuple[Path, str]:
        """(folder holding train/ and val/, format name)."""
        if self._ann is not None:
            return self._ann
        given = self.options.get("annotations")
        if given:
            d = Path(given)
            if not any((d / s).is_dir() for s in SPLITS):
                raise ValueError(f"--annotations {given}: no train/ or val/ folder of per-video JSONs")
            fmt = "posetrack21" if d.name == "posetrack_data" else "posetrack18"
            self._ann = (d, fmt)
            return self._ann
        for rel, fmt in ANNOTATION_DIRS:
            d = self.root / rel
            if any((d / s).is_dir() and any((d / s).glob("*.json")) for s in SPLITS):
                self._ann = (d, fmt)
                return self._ann
        raise ValueError(f"--root {self.root}: no per-video JSONs under annotations/{{train,val}}, "
                         "posetrack_data/annotations/{train,val} (PoseTrack18) or posetrack_data/{train,val} "
                         "(PoseTrack21)")

    def image_base(self) -> Path:
        """The folder the JSONs' ``images/...`` file names are relative to."""
        cands = [Path(self.options["videos"])] if self.options.get("videos") else []
        cands += [self.root, self.root / "posetrack_data"]
        for c in cands:
            if (c / "images").is_dir():
                return c
        raise ValueError(f"--root {self.root}: no images/ folder (nor under posetrack_data/ or --videos)")

    def _index(self) -> dict[str, tuple[Path, str]]:
        if self._files is None:
            d, _ = self.annotation_dir()
            files: dict[str, tuple[Path, str]] = {}
            for split in SPLITS:
                for p in sorted((d / split).glob("*.json")) if (d / split).is_dir() else ():
                    if p.stem in files:
                        raise ValueError(f"posetrack: video {p.stem} is in two splits ({files[p.stem][0]} and {p})")
                    files[p.stem] = (p, split)
            self._files = files
        return self._files

    # the contract -----------------------------------------------------------------------------
    def check(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"--root {self.root}: not a directory")
        self.annotation_dir()
        self.image_base()
        _ = self.fps
        if not self._index():
            raise ValueError(f"--root {self.root}: no per-video JSON under {self.annotation_dir()[0]}")

    def unit_names(self) -> list[tuple[str, str]]:
        idx = self._index()
        return sorted(((name, split) for name, (_, split) in idx.items()), key=lambda x: (SPLITS.index(x[1]), x[0]))

    def load(self, name: str) -> Unit:
        entry = self._index().get(name)
        if entry is None:
            raise BadUnit(f"no annotation JSON for video {name}")
        path, split = entry
        try:
            doc = json.loads(path.read_text(errors="replace"))
        except (OSError, ValueError) as exc:
            raise BadUnit(f"malformed {path.name}: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
                or not isinstance(doc.get("annotations", []), list):
            raise BadUnit(f"malformed {path.name}: expected an object with images[] and annotations[]")
        base = self.image_base()
        skipped: list[tuple[str, str, str]] = []

        # labelled frames whose image exists
        frames: dict[object, tuple[int, Path, list[np.ndarray]]] = {}  # image id -> (frame, path, ignore polys)
        files: dict[int, Path] = {}
        for i, im in enumerate(doc["images"]):
            if not isinstance(im, dict) or "file_name" not in im or not isinstance(im.get("id"), (int, str)):
                skipped.append((f"image entry {i}", "malformed image entry", "needs file_name and an id"))
                continue
            if im.get("is_labeled", True) is False:
                continue
            try:
                fr = frame_index(im)
            except ValueError as exc:
                skipped.append((f"image entry {i}", "malformed image entry", str(exc)))
                continue
            p = base / str(im["file_name"])
            if not p.is_file():
                skipped.append((f"frame {fr:06d}", "missing image", str(im["file_name"])))
                continue
            if fr in files:
                skipped.append((f"frame {fr:06d}", "frame listed twice", str(im["file_name"])))
                continue
            files[fr] = p
            frames[im["id"]] = (fr, p, ignore_polygons(im))
        if not files and doc["images"]:
            if not any(isinstance(im, dict) and im.get("is_labeled", True) is not False for im in doc["images"]):
                raise BadUnit("no labelled frame")
            raise BadUnit(f"no image of the labelled frames found under {base} (e.g. "
                          f"{next(iter(im.get('file_name') for im in doc['images'] if isinstance(im, dict)), '?')})")

        observations: dict[tuple[str, str, int], Observation] = {}
        subjects: dict[str, str] = {}
        ignored: dict[str, list[int]] = defaultdict(list)
        not_finite: dict[tuple[str, bool], list[int]] = defaultdict(list)  # (track, dropped) -> frames
        for i, ann in enumerate(doc.get("annotations", [])):
            if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), (int, str)) \
                    or ann["image_id"] not in frames:
                continue  # unlabelled or missing frame (or an entry of another image)
            fr, _, polys = frames[ann["image_id"]]
            tid = ann.get("track_id")
            if not isinstance(tid, (int, str)) or isinstance(tid, bool):
                skipped.append((f"annotation {ann.get('id', i)}", "malformed annotation", "no track_id"))
                continue
            track = str(tid)
            if ann.get("keypoints") is None:
                continue  # box-only person (PoseTrack21)
            try:
                coco, pt = convert_keypoints(ann["keypoints"])
            except (TypeError, ValueError) as exc:
                skipped.append((f"annotation {ann.get('id', i)}", "malformed annotation", str(exc)))
                continue
            raw = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
            nan = bool((~np.isfinite(raw).all(1) & (raw[:, 2] != 0)).any())  # labelled joints stored as NaN/inf
            if int((pt[:, 2] > 0).sum()) < MIN_KEYPOINTS:
                if nan:  # too few joints left because of them: dropped, and said so
                    not_finite[(track, True)].append(fr)
                continue  # else a box-only person (PoseTrack21): not used, not an error
            if nan:
                not_finite[(track, False)].append(fr)
            labelled = pt[pt[:, 2] > 0, :2]
            box = np.array([*labelled.min(0), *labelled.max(0)])
            for b in (_xywh(ann.get("bbox")), _xywh(ann.get("bbox_head"))):
                if b is not None:
                    box = np.array([min(box[0], b[0]), min(box[1], b[1]), max(box[2], b[2]), max(box[3], b[3])])
            if polys and fraction_inside(box, polys) > IGNORE_FRACTION:
                ignored[track].append(fr)
                continue
            key = (track, CAMERA, fr)
            if key in observations:
                skipped.append((f"track {track} frame {fr:06d}", "track annotated twice in one frame", ""))
                continue
            observations[key] = Observation(box=box, keypoints=coco, head_box=_xywh(ann.get("bbox_head")))
            pid = ann.get("person_id")
            if track not in subjects and isinstance(pid, (int, str)) and not isinstance(pid, bool) and pid != -1:
                subjects[track] = str(pid)
        for track, frs in sorted(ignored.items()):
            skipped.append((f"track {track}", "inside an ignore region",
                            f"{len(frs)} frames: " + ", ".join(f"{f:06d}" for f in sorted(frs)[:8])))
        for (track, dropped), frs in sorted(not_finite.items()):
            skipped.append((f"track {track}", "keypoints not finite (NaN)" if dropped else
                            "some keypoints not finite (NaN): those joints left out",
                            f"{len(frs)} frames: " + ", ".join(f"{f:06d}" for f in sorted(frs)[:8])))

        per_track: dict[str, list[int]] = defaultdict(list)
        for track, _, fr in observations:
            per_track[track].append(fr)
        for track, frs in sorted(per_track.items()):
            if len(frs) < 2:
                skipped.append((f"track {track}", "labelled in one frame only: no pair", f"frame {frs[0]:06d}"))
                del observations[(track, CAMERA, frs[0])]
        if not observations:
            nan = sum(len(frs) for (_, dropped), frs in not_finite.items() if dropped)
            raise BadUnit("no track labelled in two usable frames"
                          + (f" ({nan} people dropped: keypoints not finite)" if nan else ""))

        used = sorted({fr for (_, _, fr) in observations})

        def image_fn(cam: str, frame: int) -> Path:
            return files[frame]

        unit = Unit(name=name, split=split, subject=name, fps=self.fps, frames=used, cameras=[CAMERA],
                    observations=observations, images=("files", image_fn), kind="body",
                    silhouette_default="keypoints")
        unit.skipped = skipped
        # per-track subject (PoseTrack21 person_id, else <seq>/<track>): RealWorker records unit.subject today
        unit.track_subjects = {t: subjects.get(t, f"{name}/{t}") for t in sorted(per_track) if len(per_track[t]) >= 2}
        return unit


class PoseTrackSource(RealSource):
    reader_cls = PoseTrackReader
