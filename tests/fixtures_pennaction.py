"""A tiny Penn Action in the real on-disk layout, rendered from synthetic people.

``make_pennaction_fixture(root, body)`` writes ``root/Penn_Action/frames/<vid %04d>/<frame %06d>.jpg``
(1-based) and ``root/Penn_Action/labels/<vid %04d>.mat`` (scipy.io.savemat, the real variables:
action, pose, x [T,13], y [T,13], visibility [T,13] logical, train (1 / -1), bbox [T,4],
dimensions [H W T], nframes) for four videos (two train, two test; 16-20 frames each) of one
annotated anny person performing a motion from :mod:`pairgen.synthetic.motions`, filmed by one
static camera in front of a static background (a little sensor noise per frame).

Video 0001 also shows a second, unannotated person behind the target who walks the other way
and crosses it (composited by depth: the nearer surface wins). Video 0003 writes its bbox as
[x y w h] (the reader must detect it); the others [x1 y1 x2 y2]. Video 0002 marks the left wrist
invisible in frames 3-5 (its coordinates kept, as Penn Action does).

The 13 joints are written in the README order (head, left/right shoulder, elbow, wrist, hip,
knee, ankle); "head" is the projected centre of anny's eyes and ears.

Returns the ground truth per video: ``masks[frame]`` (the target's visible pixels),
``other[frame]`` (the second person's, video 0001 only), ``joints[frame]`` ([13, 2] the labelled
joints), ``coco[frame]`` ([17, 2] projected COCO joints), ``visibility``, ``bbox_format``,
``split``, ``action``, plus what the faults did.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import hard_cases

FPS = 30.0
# video id -> (frames, train, bbox format, with a second person)
VIDEOS = {1: (16, True, "xyxy", True), 2: (18, True, "xyxy", False), 3: (16, False, "xywh", False),
          4: (20, False, "xyxy", False)}
COCO_OF_PENN = (None, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)  # README order; head from eyes/ears
FAULTS = ("bad_mat", "corrupt_jpeg", "missing_frames", "single_frame")
MOTIONS = ("walk", "jumping_jacks", "throw", "kick", "boxing", "run", "squat")
# the hard variant (``hard=True``: its first video, >= 24 frames): frame (1-based) -> where the camera
# (panning, zooming) puts the person; frames where nobody is labelled; damaged frame files
HARD_PANS = {5: "left", 6: "left", 7: "right", 8: "right", 9: "top", 10: "top", 11: "bottom", 12: "bottom",
             13: "corner", 14: "corner", 15: "tiny", 16: "tiny"}
HARD_UNLABELLED = (1, 2, 23, 24)  # no joint visible, no box: the person's track starts late and ends early
HARD_OCCLUDED = (17, 18)  # every joint marked invisible (the box kept): fully occluded
HARD_CORRUPT, HARD_HALF_SIZE, HARD_MISSING = 19, 20, 21


def _camera(width: int, height: int, rng):
    from pairgen.synthetic.camera import look_at
    from pairgen.synthetic.render import Camera

    centre = np.array([rng.uniform(-0.4, 0.4), -4.5, rng.uniform(1.0, 1.6)])
    R, t = look_at(centre, np.array([0.0, 0.0, 0.85]))
    f = 1.5 * height * rng.uniform(0.97, 1.03)
    return Camera(R=R, t=t, fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height)


def _person(body, rng, frames: int, start: np.ndarray, end: np.ndarray, motions):
    """World vertices [T, V, 3], COCO joints [T, 17, 3] and the clip of one person moving start -> end."""
    from pairgen.synthetic.motions import sample_clip

    clip = sample_clip(rng, motions)
    times = np.arange(1, frames + 1) / FPS
    pheno = rng.random((1, 6))
    pheno[0, 1] = 0.5 + 0.4 * pheno[0, 1]  # adults
    pheno[0, 4] = 0.3 + 0.6 * pheno[0, 4]
    yaw = np.full(frames, rng.uniform(-1.2, 1.2))  # facing the camera (-Y) give or take 70 degrees
    posed = body.forward(np.repeat(pheno, frames, 0), clip.angles(times), yaw)
    a = np.linspace(0, 1, frames)[:, None]
    pos = (1 - a) * start + a * end
    verts, kps = posed.vertices.astype(np.float64), posed.keypoints.astype(np.float64)
    lift = pos - np.array([0.0, 0.0, 1.0]) * verts[:, :, 2].min(1, keepdims=True)
    return verts + lift[:, None], kps + lift[:, None], clip, float(yaw[0])


def _motion_names(motions: tuple[str, ...]) -> tuple[str, ...]:
    from pairgen.synthetic.motions import MOTION_NAMES

    have = tuple(m for m in motions if m in MOTION_NAMES)
    return have or MOTION_NAMES


def penn_joints(cam, coco3d: np.ndarray) -> np.ndarray:
    """[13, 2] Penn joints (README order) in pixels from COCO-17 world joints."""
    pts = np.stack([coco3d[1:5].mean(0)] + [coco3d[c] for c in COCO_OF_PENN[1:]])
    return cam.project(pts)[0]


def _savemat(path: Path, labels: dict) -> None:
    import scipy.io

    scipy.io.savemat(str(path), labels, do_compression=False)


def make_pennaction_fixture(root: Path, body, *, videos: dict = VIDEOS, width: int = 480, height: int = 270,
                            faults=(), seed: int = 0, keep_masks: bool = True, hard: bool = False) -> dict:
    """Write the dataset under ``root/Penn_Action`` and return the ground truth (module docstring).

    ``body`` is an AnnyBody. 1920x1080 gives full-HD frames for benchmarks (``keep_masks=False``
    there). ``faults`` (any of FAULTS) are injected by :func:`inject_faults`.

    ``hard``: in the first video (>= 24 frames) the camera pans so that the person crosses each
    frame edge and a corner, and zooms out so that they are tiny (HARD_PANS); nobody is labelled in
    its first and last two frames (HARD_UNLABELLED), every joint is invisible in HARD_OCCLUDED,
    frame HARD_CORRUPT is garbage, HARD_HALF_SIZE is written at half size and HARD_MISSING is
    deleted. ``gt["cameras"][frame]`` is each frame's camera; ``truth["hard"]`` what was done.
    """
    import simplejpeg

    from pairgen.synthetic import appearance, background
    from pairgen.synthetic.gl import GLBodyRenderer

    if set(faults) - set(FAULTS):
        raise ValueError(f"unknown faults {sorted(set(faults) - set(FAULTS))}")
    base = Path(root) / "Penn_Action"
    (base / "labels").mkdir(parents=True, exist_ok=True)
    renderer = GLBodyRenderer(width, body.faces, body.uv, 256, height=height)
    regions = appearance.region_map(body.uv, body.faces, body.regions, 256)
    motions = _motion_names(MOTIONS)
    truth = {"root": base, "width": width, "height": height, "fps": FPS, "seed": seed, "videos": {}, "faults": {}}
    try:
        for n, (vid, (T, train, bbox_format, second)) in enumerate(sorted(videos.items())):
            rng = np.random.default_rng([seed, vid])
            cam = _camera(width, height, rng)
            hard_video = hard and n == 0
            bg = background.procedural_background(np.random.default_rng([seed, vid, 1]), max(width, height))
            bg = bg[:height, :width]
            direction = 1 if rng.random() < 0.5 else -1
            start, end = np.array([-0.35 * direction, 0, 0]), np.array([0.35 * direction, 0, 0])
            people = [_person(body, rng, T, start, end, (motions[n % len(motions)],))]
            cams = {f: cam for f in range(1, T + 1)}
            if hard_video:  # the person's box with the still camera decides each pan
                for f, edge in HARD_PANS.items():
                    v = people[0][0][f - 1]
                    uv, _ = cam.project(v[:: max(1, len(v) // 2000)])
                    cams[f] = hard_cases.moved(cam, edge, np.array([*uv.min(0), *uv.max(0)]), width, height)
            if second:  # behind the target, walking the other way: the two cross in the image
                people.append(_person(body, rng, T, np.array([0.9 * direction, 2.0, 0]),
                                      np.array([-0.9 * direction, 2.0, 0]), ("walk",) if "walk" in motions else motions))
            looks = [(appearance.random_outfit_texture(rng, regions)[0], *appearance.random_lighting(rng))
                     for _ in people]
            folder = base / "frames" / f"{vid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            gt = {"camera": cam, "split": "train" if train else "test", "bbox_format": bbox_format,
                  "frames": list(range(1, T + 1)), "masks": {}, "other": {}, "joints": {}, "coco": {},
                  "action": people[0][2].motion}
            x, y, vis, bbox = np.zeros((T, N := 13)), np.zeros((T, N)), np.zeros((T, N), bool), np.zeros((T, 4))
            for i in range(T):
                f = i + 1
                renders = []
                for (verts, _, _, _), (tex, ambient, lights) in zip(people, looks):
                    renders.append(renderer.render([(*body.surface(verts[i]), cams[f])], tex, ambient, lights)[0])
                img = bg.astype(np.float64)
                depth = np.full((height, width), np.inf)
                owner = np.full((height, width), -1)
                for p, (colour, d) in enumerate(renders):
                    nearer = (d > 0) & (d < depth)
                    img[nearer] = colour[nearer]
                    depth[nearer] = d[nearer]
                    owner[nearer] = p
                img = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
                (folder / f"{f:06d}.jpg").write_bytes(simplejpeg.encode_jpeg(img, quality=90))
                mask = owner == 0
                uv = penn_joints(cams[f], people[0][1][i])
                x[i], y[i] = uv[:, 0], uv[:, 1]
                vis[i] = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
                ys, xs = np.nonzero(renders[0][1] > 0)  # the annotated box spans the whole person
                bbox[i] = [xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2]
                if hard_video and f in HARD_UNLABELLED:
                    vis[i], bbox[i] = False, 0.0
                if keep_masks:
                    gt["masks"][f] = mask
                    gt["other"][f] = owner == 1 if second else None
                gt["joints"][f] = uv
                gt["coco"][f] = cams[f].project(people[0][1][i])[0]
            if vid == 2:  # an occluded-wrist label: position kept, visibility 0
                vis[2:5, 5] = False
            if hard_video:
                vis[[f - 1 for f in HARD_OCCLUDED]] = False
                gt["cameras"] = cams
            gt["visibility"] = vis.copy()
            gt["bbox"] = bbox.copy()  # x1 y1 x2 y2
            if bbox_format == "xywh":
                bbox = np.column_stack([bbox[:, :2], bbox[:, 2:] - bbox[:, :2]])
            yaw = people[0][3]
            pose = "front" if abs(yaw) < 0.5 else "side"
            _savemat(base / "labels" / f"{vid:04d}.mat", {
                "action": gt["action"], "pose": pose, "x": x, "y": y, "visibility": vis,
                "train": np.array([[1.0 if train else -1.0]]), "bbox": bbox,
                "dimensions": np.array([[float(height), float(width), float(T)]]), "nframes": np.array([[float(T)]])})
            truth["videos"][vid] = gt
            if hard_video:
                truth["hard"] = make_hard(base, vid)
    finally:
        renderer.close()
    inject_faults(truth, faults)
    return truth


def make_hard(base: Path, vid: int) -> dict:
    """The damaged frame files of the hard variant (see :func:`make_pennaction_fixture`)."""
    folder = base / "frames" / f"{vid:04d}"
    hard_cases.write_garbage(folder / f"{HARD_CORRUPT:06d}.jpg")
    hard_cases.write_half_size(folder / f"{HARD_HALF_SIZE:06d}.jpg")
    (folder / f"{HARD_MISSING:06d}.jpg").unlink()
    return {"video": f"{vid:04d}", "pans": dict(HARD_PANS), "unlabelled": HARD_UNLABELLED,
            "occluded": HARD_OCCLUDED, "corrupt": HARD_CORRUPT, "half_size": HARD_HALF_SIZE, "missing": HARD_MISSING}


def inject_faults(truth: dict, faults, base: Path | None = None) -> dict:
    """Damage the dataset written by :func:`make_pennaction_fixture` (or a copy of it at ``base``);
    records in ``truth["faults"]`` what was done (video ids as 4-digit names) and returns it.

    - bad_mat: labels/0004.mat cut to its first 300 bytes (scipy cannot read it).
    - corrupt_jpeg: frames/0002/000001.jpg replaced by garbage bytes.
    - missing_frames: frames 6-9 of video 0003 deleted (nframes still lists them).
    - single_frame: a new video 0005 (train) with one frame (a copy of 0001's first frame and labels).
    """
    import scipy.io

    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}")
    base = Path(base or truth["root"])
    rng = np.random.default_rng([truth["seed"], 99])
    f = truth["faults"] = {}
    if "bad_mat" in faults:
        p = base / "labels" / "0004.mat"
        p.write_bytes(p.read_bytes()[:300])
        f["bad_mat"] = "0004"
    if "corrupt_jpeg" in faults:
        (base / "frames" / "0002" / "000001.jpg").write_bytes(rng.bytes(4000))
        f["corrupt_jpeg"] = ("0002", 1)
    if "missing_frames" in faults:
        for fr in range(6, 10):
            (base / "frames" / "0003" / f"{fr:06d}.jpg").unlink()
        f["missing_frames"] = ("0003", 6, 9)
    if "single_frame" in faults:
        (base / "frames" / "0005").mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "frames" / "0001" / "000001.jpg", base / "frames" / "0005" / "000001.jpg")
        m = scipy.io.loadmat(str(base / "labels" / "0001.mat"))
        one = {k: v[:1] for k, v in m.items() if k in ("x", "y", "visibility", "bbox")}
        dims = m["dimensions"].copy()
        dims[0, 2] = 1
        _savemat(base / "labels" / "0005.mat", {**one, "action": str(m["action"][0]), "pose": str(m["pose"][0]),
                                                "train": np.array([[1.0]]), "dimensions": dims,
                                                "nframes": np.array([[1.0]])})
        f["single_frame"] = "0005"
    return f
