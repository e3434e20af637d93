"""A tiny PoseTrack dataset in the real layouts (PoseTrack18 and PoseTrack21), rendered with known
ground truth.

``make_posetrack_fixture(root, body)`` renders two videos seen by one static camera:

- ``000001_bonn_train`` (train): persons A (track 0) and B (track 1) walk past each other at
  different depths (B appears in A's crops, without overlapping A);
- ``000342_mpii_test`` (val): A and B again, plus C (track 2) waving in the background inside the
  frames' ignore region (the reader must drop C).

Each person is rendered alone with the GL renderer and the renders are composited by depth over a
static background (+ sensor noise); the GT mask of a person is its ``depth > 0`` where it is the
nearest surface. Frames are 25 fps. Train labels every frame but 0, 7 and the last; val labels every
second frame (the others are listed with ``is_labeled`` false and no annotation).

Trees written (``formats``): ``root/pt18/`` = ``images/{split}/<seq>/%06d.jpg`` +
``annotations/{split}/<seq>.json``; ``root/pt21/`` = the same images + ``posetrack_data/{split}/<seq>.json``
(adds ``person_id`` and ``has_labeled_person``). Keypoints are in PoseTrack semantics (nose,
head_bottom, head_top, zero ears, COCO body joints), boxes [x, y, w, h] from the person's own render.

Returns the ground truth: per video the camera, labelled frames and per track the COCO-17 joints in
pixels, GT masks per frame, person_id; ``roots[fmt]``; what the faults did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import hard_cases

FPS = 25.0
FORMATS = ("pt18", "pt21")
FAULTS = ("malformed_json", "corrupt_jpeg", "missing_frames", "single_frame_track")
# (video, split, source id T for image ids, sequence index)
VIDEOS = (("000001_bonn_train", "train", 2, 1), ("000342_mpii_test", "val", 1, 342))
BAD_VIDEO = ("000003_mpiinew_train", "train")
PT_NAMES = ["nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
            "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
            "right_knee", "left_ankle", "right_ankle"]
SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
            [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
# people: (track id, start [x, y] m, velocity [vx, vy] m/s, motion)
PEOPLE = ((0, (-0.95, 0.2), (0.95, -0.5), "walk"), (1, (1.25, 1.2), (-0.8, -0.3), "walk"))
BYSTANDER = (2, (-2.5, 3.0), (0.0, 0.0), "wave")  # val only, inside the ignore region
# the hard variant (``hard=True``, train video, >= 24 frames): frame -> where the camera (panning and
# zooming) puts person A (track 0), and the file problems
HARD_PANS = {3: "left", 4: "left", 5: "right", 6: "right", 8: "top", 9: "top", 10: "bottom", 11: "bottom",
             12: "corner", 13: "corner", 14: "tiny", 15: "tiny"}
HARD_UNLABELLED = {1: (8, 9, 10)}  # track -> labelled frames whose annotation of that person is left out
HARD_TRACK_SPAN = {1: (4, 19)}  # track -> first and last frame it is annotated in (a track starting mid-video)
HARD_MISSING, HARD_CORRUPT, HARD_HALF_SIZE = 20, 2, 16  # labelled frames: file deleted, garbage, half-size JPEG


def labelled_frames(split: str, n: int) -> list[int]:
    if split == "train":
        return [f for f in range(n) if f not in (0, 7, n - 1)]
    return list(range(0, n, 2))


def image_id(T: int, seq: int, frame: int) -> int:
    return T * 10_000_000_000 + seq * 10_000 + frame


def _box_xywh(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def make_posetrack_fixture(root: Path, body, *, formats=FORMATS, frames: int = 16, width: int = 384,
                           height: int = 288, faults=(), seed: int = 0, keep_masks: bool = True,
                           videos=VIDEOS, hard: bool = False) -> dict:
    """Write the trees under ``root`` and return the ground truth (see the module docstring).
    1920x1080 gives full-HD frames for the benchmark (``keep_masks=False`` there). ``videos``: a
    subset of VIDEOS.

    ``hard`` (the train video; ``frames`` >= 24): the camera pans so that A crosses each frame edge
    and a corner and zooms out so that everyone is tiny (HARD_PANS), B is unannotated for a few
    frames and annotated only from frame 4 to 19 (HARD_UNLABELLED, HARD_TRACK_SPAN), frame
    HARD_MISSING's image is deleted, HARD_CORRUPT's is garbage and HARD_HALF_SIZE's is written at
    half size. ``truth["videos"][v]["cameras"][frame]`` is each frame's camera, ``truth["hard"]``
    what was done.
    """
    import simplejpeg

    from pairgen.synthetic import appearance, background
    from pairgen.synthetic.camera import look_at
    from pairgen.synthetic.gl import GLBodyRenderer
    from pairgen.synthetic.motions import sample_clip
    from pairgen.synthetic.render import Camera

    root = Path(root)
    renderer = GLBodyRenderer(width, body.faces, body.uv, 256, height=height)
    regions = appearance.region_map(body.uv, body.faces, body.regions, 256)
    times = np.arange(frames) / FPS
    f = 400.0 * height / 288.0
    R, t = look_at(np.array([0.0, -6.0, 1.4]), np.array([0.0, 0.0, 0.95]))
    cam = Camera(R=R, t=t, fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height)
    truth = {"root": root, "roots": {fmt: root / fmt for fmt in formats}, "width": width, "height": height,
             "frames": frames, "fps": FPS, "videos": {}, "faults": {}, "seed": seed}
    docs: dict[str, dict] = {}
    try:
        for vi, (video, split, T, seq_idx) in enumerate(VIDEOS):
            if (video, split, T, seq_idx) not in videos:
                continue
            hard_video = hard and split == "train"
            cams = [cam] * frames
            if hard_video:  # A's box (standing, 0.6 m wide, 1.8 m tall) with the still camera decides each pan
                _, start, vel, _ = PEOPLE[0]
                for fi, edge in HARD_PANS.items():
                    foot = np.array([*(np.array(start) + np.array(vel) * times[fi]), 0.0])
                    cams[fi] = hard_cases.moved(cam, edge, hard_cases.standing_box(cam, foot), width, height)
            rng = np.random.default_rng([seed, vi])
            bg = background.procedural_background(rng, max(width, height))[:height, :width]
            people = PEOPLE + ((BYSTANDER,) if split == "val" else ())
            renders = {}  # track -> (colours [T], depths [T], joints2d [T,17,2], pt17 [T,17,3])
            for tid, start, vel, motion in people:
                prng = np.random.default_rng([seed, vi, tid])
                clip = sample_clip(prng, (motion,))
                vel = np.array(vel, np.float64)
                heading = vel if np.linalg.norm(vel) > 0 else np.array([0.3, -1.0])  # standing: face the camera
                heading = heading / np.linalg.norm(heading)
                yaw = np.full(frames, np.arctan2(heading[1], heading[0]) + np.pi / 2)
                pheno = prng.random((1, 6))
                pheno[0, 1] = 0.5 + 0.4 * pheno[0, 1]
                pheno[0, 4] = 0.3 + 0.6 * pheno[0, 4]
                posed = body.forward(np.repeat(pheno, frames, 0), clip.angles(times), yaw)
                texture, _ = appearance.random_outfit_texture(prng, regions)
                ambient, lights = appearance.random_lighting(prng)
                cols, deps, j2d, pts = [], [], [], []
                for fi in range(frames):
                    verts = posed.vertices[fi].astype(np.float64)
                    pos = np.array([*(np.array(start) + vel * times[fi]), 0.0])
                    lift = np.array([0.0, 0.0, -verts[:, 2].min()]) + pos
                    verts = verts + lift
                    kps = posed.keypoints[fi].astype(np.float64) + lift
                    (colour, depth), = renderer.render([(*body.surface(verts), cams[fi])], texture, ambient,
                                                       lights)
                    cols.append(colour)
                    deps.append(depth)
                    uv, _ = cams[fi].project(kps)
                    j2d.append(uv)
                    # PoseTrack joints: nose, head_bottom, head_top, ears (placeholders), body as COCO
                    neck = (kps[5] + kps[6]) / 2
                    head_bottom = neck + 0.5 * (kps[0] - neck)
                    centre = kps[1:5].mean(0)
                    near = verts[np.linalg.norm(verts - centre, axis=1) < 0.2]
                    head_top = near[np.argmax(near[:, 2])]
                    p3 = np.concatenate([kps[:1], [head_bottom, head_top], np.zeros((2, 3)), kps[5:]])
                    puv, _ = cams[fi].project(p3)
                    inside = (puv[:, 0] >= 0) & (puv[:, 0] < width) & (puv[:, 1] >= 0) & (puv[:, 1] < height)
                    inside[3:5] = False
                    pts.append(np.where(inside[:, None], np.column_stack([puv, np.ones(17)]), 0.0))
                renders[tid] = (cols, deps, np.array(j2d), np.array(pts))
            tracks = {tid: {"joints2d": {}, "masks": {}, "boxes": {}, "person_id": 1000 + 10 * vi + tid}
                      for tid in renders}
            images = []
            for fi in range(frames):
                depth = np.stack([renders[tid][1][fi] for tid in renders])  # [P, H, W]
                d = np.where(depth > 0, depth, np.inf)
                nearest = np.argmin(d, axis=0)
                any_fg = np.isfinite(d).any(0)
                img = bg.copy()
                for pi, tid in enumerate(renders):
                    own = any_fg & (nearest == pi)
                    img[own] = renders[tid][0][fi][own]
                    tr = tracks[tid]
                    tr["joints2d"][fi] = renders[tid][2][fi]
                    tr["boxes"][fi] = _box_xywh(depth[pi] > 0) if (depth[pi] > 0).any() else None
                    if keep_masks:
                        tr["masks"][fi] = own
                img = np.clip(img.astype(np.int16) + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
                jpeg = simplejpeg.encode_jpeg(img, quality=90)
                name = f"images/{split}/{video}/{fi:06d}.jpg"
                for fmt in formats:
                    p = root / fmt / name
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(jpeg)
                images.append(name)
            # ignore region: C's extent over the video, grown (val only)
            ignore = None
            if 2 in tracks:
                b = np.array([tracks[2]["boxes"][fi] for fi in range(frames)])
                x0, y0 = b[:, 0].min(), b[:, 1].min()
                x1, y1 = (b[:, 0] + b[:, 2]).max(), (b[:, 1] + b[:, 3]).max()
                gx, gy = 0.15 * (x1 - x0), 0.1 * (y1 - y0)
                ignore = ([[x0 - gx, x1 + gx, x1 + gx, x0 - gx]], [[y0 - gy, y0 - gy, y1 + gy, y1 + gy]])
            labelled = labelled_frames(split, frames)
            truth["videos"][video] = {"split": split, "camera": cam, "labelled": labelled, "tracks": tracks,
                                      "ignored_track": 2 if ignore else None, "ignore_region": ignore,
                                      "cameras": cams}
            for fmt in formats:
                doc = {"images": [], "annotations": [], "categories": [
                    {"supercategory": "person", "id": 1, "name": "person", "keypoints": PT_NAMES,
                     "skeleton": SKELETON}]}
                for fi, name in enumerate(images):
                    iid = image_id(T, seq_idx, fi)
                    lab = fi in labelled
                    im = {"has_no_densepose": True, "is_labeled": lab, "file_name": name, "nframes": frames,
                          "frame_id": iid, "vid_id": f"{seq_idx:06d}", "id": iid}
                    if fmt == "pt21":
                        im["has_labeled_person"] = lab
                    if ignore is not None:
                        im["ignore_regions_x"], im["ignore_regions_y"] = ignore
                    doc["images"].append(im)
                    if not lab:
                        continue
                    for pi, tid in enumerate(renders):
                        first, last = HARD_TRACK_SPAN.get(tid, (0, frames)) if hard_video else (0, frames)
                        if hard_video and (fi in HARD_UNLABELLED.get(tid, ()) or not first <= fi <= last):
                            continue  # not annotated there
                        if tracks[tid]["boxes"][fi] is None:
                            continue  # out of the picture (the camera panned away)
                        pt = renders[tid][3][fi]
                        top, bottom = pt[2, :2], pt[1, :2]
                        side = float(np.linalg.norm(top - bottom))
                        c = (top + bottom) / 2
                        ann = {"bbox_head": [float(c[0] - side / 2), float(c[1] - side / 2), side, side],
                               "keypoints": [round(float(v), 3) for v in pt.reshape(-1)], "track_id": tid,
                               "image_id": iid, "bbox": tracks[tid]["boxes"][fi], "scores": [], "category_id": 1,
                               "id": iid * 100 + pi}
                        if fmt == "pt21":
                            ann["person_id"] = tracks[tid]["person_id"]
                        doc["annotations"].append(ann)
                docs[(fmt, video)] = doc
                jp = annotation_path(root / fmt, fmt, split, video)
                jp.parent.mkdir(parents=True, exist_ok=True)
                jp.write_text(json.dumps(doc))
            if hard_video:
                truth["hard"] = make_hard(root, formats, split, video)
    finally:
        renderer.close()
    truth["docs"] = docs
    for fmt in formats:
        if faults:
            truth["faults"][fmt] = inject_faults(truth, faults, fmt)
    return truth


def make_hard(root: Path, formats, split: str, video: str) -> dict:
    """The file problems of the hard variant (see :func:`make_posetrack_fixture`)."""
    for fmt in formats:
        folder = root / fmt / "images" / split / video
        (folder / f"{HARD_MISSING:06d}.jpg").unlink()
        hard_cases.write_garbage(folder / f"{HARD_CORRUPT:06d}.jpg")
        hard_cases.write_half_size(folder / f"{HARD_HALF_SIZE:06d}.jpg")
    return {"video": video, "pans": dict(HARD_PANS), "unlabelled": dict(HARD_UNLABELLED),
            "track_span": dict(HARD_TRACK_SPAN), "missing": HARD_MISSING, "corrupt": HARD_CORRUPT,
            "half_size": HARD_HALF_SIZE}


def annotation_path(tree: Path, fmt: str, split: str, video: str) -> Path:
    sub = "posetrack_data" if fmt == "pt21" else "annotations"
    return Path(tree) / sub / split / f"{video}.json"


def inject_faults(truth: dict, faults, fmt: str, tree: Path | None = None) -> dict:
    """Damage the ``fmt`` tree (or a copy at ``tree``); returns what was done."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}")
    tree = Path(tree or truth["roots"][fmt])
    rng = np.random.default_rng([truth["seed"], 99])
    train, val = VIDEOS[0][0], VIDEOS[1][0]
    out: dict = {}
    if "malformed_json" in faults:  # a third video whose JSON is cut in half
        video, split = BAD_VIDEO
        text = json.dumps(truth["docs"][(fmt, train)]).replace(train, video)
        p = annotation_path(tree, fmt, split, video)
        p.write_text(text[: len(text) // 2])
        src = tree / "images" / "train" / train
        shutil.copytree(src, tree / "images" / split / video, dirs_exist_ok=True)
        out["malformed_json"] = video
    if "corrupt_jpeg" in faults:  # garbage bytes under a labelled JPEG name
        fr = truth["videos"][train]["labelled"][3]
        (tree / "images" / "train" / train / f"{fr:06d}.jpg").write_bytes(rng.bytes(4000))
        out["corrupt_jpeg"] = (train, fr)
    if "missing_frames" in faults:  # labelled frames listed in the JSON, image files gone
        frs = truth["videos"][val]["labelled"][2:4]
        for fr in frs:
            (tree / "images" / "val" / val / f"{fr:06d}.jpg").unlink()
        out["missing_frames"] = (val, list(frs))
    if "single_frame_track" in faults:  # track 1 of the train video labelled in one frame only
        p = annotation_path(tree, fmt, "train", train)
        doc = json.loads(p.read_text())
        keep = truth["videos"][train]["labelled"][5]
        keep_id = image_id(VIDEOS[0][2], VIDEOS[0][3], keep)
        doc["annotations"] = [a for a in doc["annotations"] if a["track_id"] != 1 or a["image_id"] == keep_id]
        p.write_text(json.dumps(doc))
        out["single_frame_track"] = (train, "1", keep)
    return out
