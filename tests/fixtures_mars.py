"""A tiny MARS-like dataset in the real on-disk layout, rendered from synthetic people.

``make_mars_fixture(root, body)`` renders a short scene (``n_frames`` instants at ``fps``) in which
three people walk, seen by three static calibrated cameras (C1-C3) over a static background per
camera. People 1 and 2 walk one behind the other along X, 1 m apart (both in
most frames; seen from the oblique cameras one's box often holds part of the other), person 3
walks alone. Each person's frames in a camera where their whole body is in the image form
runs; each run is cut into tracklets of at most ``max_tracklet`` frames. Every image is the
person's detector-like box (full-body bounding box, 10% taller, at least half as wide as tall,
jittered a little) cut from the full frame and resized to 128x256 (W x H) like MARS, written as::

    ROOT/bbox_train/<pid %04d>/<pid>C<cam>T<tracklet %04d>F<frame %03d>.jpg   people 1 and 2
    ROOT/bbox_test/<pid %04d>/...                                              person 3
    ROOT/bbox_test/00-1/00-1C1T0001F00k.jpg    junk: background crops (pid -1)
    ROOT/bbox_test/0000/0000C2T0001F00k.jpg    distractors: background crops (pid 0)
    ROOT/info/train_name.txt, ROOT/info/tracks_train_info.mat (var track_train_info, rows
        [start, end, pid, camid], 1-based inclusive into train_name.txt)

F counts the frames of a tracklet from 001 (consecutive at ``fps``). The full frames are rendered
at ``width`` x ``height`` (320x240 in tests; 1920x1080 for the benchmark): the crops are always
256x128, as in MARS.

Returns the ground truth ``truth["images"][(track, F)]`` = {"split", "pid", "cam", "path",
"mask" (own body, 256x128 bool, the nearer surface where people overlap), "others" (the other
people in the crop), "joints" (COCO-17 [17, 2] in crop pixels), "box" (the crop in frame pixels),
"instant" (index on the scene's timeline)}, plus ``truth["tracklets"]`` {track: [F, ...]}.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import hard_cases

CROP_W, CROP_H = 128, 256
CAMERAS = {  # MARS camera id -> (centre, look-at target), metres, +Z up
    1: ((0.0, -6.0, 2.2), (0.0, 0.3, 0.9)),
    2: ((4.8, -3.8, 2.6), (0.2, 0.3, 0.9)),
    3: ((-4.6, -3.4, 2.4), (-0.2, 0.3, 0.9)),
}
PEOPLE = {  # pid -> (split, start position, heading, speed m/s)
    1: ("train", (-1.2, 0.0), (1.0, 0.0), 1.2),
    2: ("train", (-0.2, 0.0), (1.0, 0.0), 1.2),
    3: ("test", (1.9, -1.0), (0.2, 1.0), 1.1),
}
FAULTS = ("corrupt_jpeg", "short_tracklet", "missing_listed_files", "missing_listed_tracklet", "malformed_info_mat")


def _camera(cid: int, width: int, height: int):
    from pairgen.synthetic.camera import look_at
    from pairgen.synthetic.render import Camera

    centre, target = (np.array(v, np.float64) for v in CAMERAS[cid])
    R, t = look_at(centre, target)
    f = 300.0 * width / 320.0
    return Camera(R=R, t=t, fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height)


def _warp(img: np.ndarray, box: np.ndarray, interp: int) -> np.ndarray:
    """The box [x0, y0, x1, y1] (pixel edges) of a frame resized to 128x256, replicating at borders."""
    import cv2

    x0, y0, x1, y1 = box
    sx, sy = CROP_W / (x1 - x0), CROP_H / (y1 - y0)
    M = np.array([[sx, 0, sx * (0.5 - x0) - 0.5], [0, sy, sy * (0.5 - y0) - 0.5]])
    return cv2.warpAffine(img, M, (CROP_W, CROP_H), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def to_crop_pixels(uv: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Frame pixels (centres at integers) -> pixels of the 128x256 crop of ``box``."""
    x0, y0, x1, y1 = box
    sx, sy = CROP_W / (x1 - x0), CROP_H / (y1 - y0)
    return np.stack([(uv[:, 0] + 0.5 - x0) * sx - 0.5, (uv[:, 1] + 0.5 - y0) * sy - 0.5], 1)


def make_mars_fixture(root: Path, body, *, n_frames: int = 24, fps: float = 25.0, width: int = 320,
                      height: int = 240, max_tracklet: int = 12, faults=(), seed: int = 0, hard: bool = False) -> dict:
    """Write the dataset under ``root`` and return the ground truth (see the module docstring).

    ``hard``: see :func:`make_hard` (every MARS crop already crosses all four edges of its square
    crop: the person box spans the image height).
    """
    import cv2
    import simplejpeg
    from scipy.io import savemat

    from pairgen.synthetic import appearance, background
    from pairgen.synthetic.gl import GLBodyRenderer
    from pairgen.synthetic.motions import sample_clip

    if set(faults) - set(FAULTS):
        raise ValueError(f"unknown faults {sorted(set(faults) - set(FAULTS))}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    cams = {cid: _camera(cid, width, height) for cid in CAMERAS}
    bgs = {cid: background.procedural_background(np.random.default_rng([seed, cid]), max(width, height))
           [:height, :width] for cid in cams}
    times = np.arange(n_frames) / fps
    regions = appearance.region_map(body.uv, body.faces, body.regions, 256)
    renderer = GLBodyRenderer(width, body.faces, body.uv, 256, height=height)
    # render every person alone in every camera: colour, depth, COCO-17 pixels
    renders: dict[int, dict] = {}
    try:
        for pid, (_, start, heading, speed) in PEOPLE.items():
            prng = np.random.default_rng([seed, 7, pid])
            h = np.array([heading[0], heading[1], 0.0])
            h /= np.linalg.norm(h)
            pos = np.array([start[0], start[1], 0.0])[None] + speed * times[:, None] * h[None]
            yaw = np.full(n_frames, np.arctan2(h[1], h[0]) + np.pi / 2)  # the body faces -Y at yaw 0
            pheno = prng.random((1, 6))
            pheno[0, 1] = 0.5 + 0.4 * pheno[0, 1]
            pheno[0, 4] = 0.3 + 0.6 * pheno[0, 4]
            posed = body.forward(np.repeat(pheno, n_frames, 0), sample_clip(prng, ("walk",)).angles(times), yaw)
            texture, _ = appearance.random_outfit_texture(prng, regions)
            ambient, lights = appearance.random_lighting(prng)
            out = {"colour": {}, "depth": {}, "joints": {}}
            for i in range(n_frames):
                verts = posed.vertices[i].astype(np.float64)
                lift = pos[i] - np.array([0.0, 0.0, verts[:, 2].min()])
                verts = verts + lift
                split, normals = body.surface(verts)
                rendered = renderer.render([(split, normals, c) for c in cams.values()],
                                           texture, ambient, lights)
                kps = posed.keypoints[i].astype(np.float64) + lift
                for cid, (colour, depth) in zip(cams, rendered):
                    out["colour"][(cid, i)] = colour
                    out["depth"][(cid, i)] = depth
                    out["joints"][(cid, i)] = cams[cid].project(kps)[0]
            renders[pid] = out
    finally:
        renderer.close()

    # composite: per pixel the nearest person wins
    frames, owner = {}, {}
    for cid in cams:
        for i in range(n_frames):
            depth = np.stack([renders[p]["depth"][(cid, i)] for p in PEOPLE])
            depth = np.where(depth > 0, depth, np.inf)
            near = depth.argmin(0)
            seen = np.isfinite(depth.min(0))
            img = bgs[cid].astype(np.int16)
            for k, p in enumerate(PEOPLE):
                sel = seen & (near == k)
                img = np.where(sel[..., None], renders[p]["colour"][(cid, i)], img)
            img = np.clip(img + np.random.default_rng([seed, 3, cid, i]).normal(0, 2.0, img.shape), 0, 255)
            frames[(cid, i)] = img.astype(np.uint8)
            owner[(cid, i)] = np.where(seen, np.array(list(PEOPLE))[near], -1)

    truth = {"root": root, "fps": fps, "images": {}, "tracklets": {}, "cameras": cams, "faults": {}}
    info_rows, train_names = [], []
    for pid, (split, *_rest) in PEOPLE.items():
        pdir = root / f"bbox_{split}" / f"{pid:04d}"
        pdir.mkdir(parents=True, exist_ok=True)
        for cid, cam in cams.items():
            valid = []
            for i in range(n_frames):
                m = renders[pid]["depth"][(cid, i)] > 0
                ys, xs = np.nonzero(m)
                ok = len(ys) and ys.min() > 2 and xs.min() > 2 and ys.max() < height - 3 and xs.max() < width - 3
                valid.append(bool(ok) and ys.max() - ys.min() > 0.25 * height)
            runs, cur = [], []
            for i, ok in enumerate(valid):
                if ok:
                    cur.append(i)
                if (not ok or i == n_frames - 1) and cur:
                    runs.append(cur)
                    cur = []
            tracklets = []
            for run in runs:
                k = int(np.ceil(len(run) / max_tracklet))
                tracklets += [list(c) for c in np.array_split(run, k)]
            for ti, instants in enumerate(tracklets, start=1):
                track = f"{pid:04d}C{cid}T{ti:04d}"
                truth["tracklets"][track] = list(range(1, len(instants) + 1))
                start = len(train_names) + 1
                for F, i in enumerate(instants, start=1):
                    m = renders[pid]["depth"][(cid, i)] > 0
                    ys, xs = np.nonzero(m)
                    bh = (ys.max() - ys.min() + 1) * 1.1
                    bw = max(bh / 2, (xs.max() - xs.min() + 1) * 1.1)
                    cx = (xs.min() + xs.max() + 1) / 2 + rng.uniform(-0.03, 0.03) * bw
                    cy = (ys.min() + ys.max() + 1) / 2 + rng.uniform(-0.03, 0.03) * bh
                    box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
                    crop = _warp(frames[(cid, i)], box, cv2.INTER_LINEAR)
                    own = _warp((owner[(cid, i)] == pid).astype(np.float32), box, cv2.INTER_LINEAR) > 0.5
                    other = _warp(((owner[(cid, i)] >= 0) & (owner[(cid, i)] != pid)).astype(np.float32), box,
                                  cv2.INTER_LINEAR) > 0.5
                    name = f"{track}F{F:03d}.jpg"
                    (pdir / name).write_bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(crop), quality=92))
                    truth["images"][(track, F)] = {
                        "split": split, "pid": pid, "cam": cid, "path": pdir / name, "mask": own, "others": other,
                        "joints": to_crop_pixels(renders[pid]["joints"][(cid, i)], box), "box": box, "instant": i}
                    if split == "train":
                        train_names.append(name)
                if split == "train":
                    info_rows.append([start, len(train_names), pid, cid])
    # junk (pid -1) and distractor (pid 0) crops: background patches, excluded by the reader
    for folder, cid in (("00-1", 1), ("0000", 2)):
        d = root / "bbox_test" / folder
        d.mkdir(parents=True, exist_ok=True)
        for F in range(1, 4):
            x0 = 10 + 20 * F
            patch = _warp(bgs[cid], np.array([x0, 10, x0 + 60, 130.0]), cv2.INTER_LINEAR)
            (d / f"{folder}C{cid}T0001F{F:03d}.jpg").write_bytes(simplejpeg.encode_jpeg(patch, quality=92))
    info = root / "info"
    info.mkdir(exist_ok=True)
    (info / "train_name.txt").write_text("".join(n + "\n" for n in train_names))
    savemat(str(info / "tracks_train_info.mat"), {"track_train_info": np.array(info_rows, np.float64)})
    truth["info_rows"] = info_rows
    inject_faults(truth, faults)
    if hard:
        make_hard(truth)
    return truth


def make_hard(truth: dict) -> dict:
    """The hard variant's damage, recorded in ``truth["hard"]``: a train tracklet of low-resolution
    crops (32x16: people below --min-person-px), a test tracklet with a gap (frames 3-5 absent:
    the person was not detected there), two half-size frames (64x128) inside a train tracklet, plus
    the faults "corrupt_jpeg" (a garbage frame) and "missing_listed_files" (listed, not on disk)."""
    import cv2
    import simplejpeg

    train = sorted(t for t in truth["tracklets"] if truth["images"][(t, 1)]["split"] == "train")
    test = sorted(t for t in truth["tracklets"] if truth["images"][(t, 1)]["split"] == "test")
    tiny = train[2]
    for F in truth["tracklets"][tiny]:
        p = truth["images"][(tiny, F)]["path"]
        img = simplejpeg.decode_jpeg(p.read_bytes())
        p.write_bytes(simplejpeg.encode_jpeg(cv2.resize(img, (CROP_W // 8, CROP_H // 8), interpolation=cv2.INTER_AREA),
                                             quality=92))
    gap_track, gap = test[0], [3, 4, 5]
    for F in gap:
        truth["images"].pop((gap_track, F))["path"].unlink()
    truth["tracklets"][gap_track] = [F for F in truth["tracklets"][gap_track] if F not in gap]
    half = {(train[0], 2), (train[0], 9)}
    for key in sorted(half):
        hard_cases.write_half_size(truth["images"][key]["path"], quality=92)
    inject_faults(truth, ("corrupt_jpeg", "missing_listed_files"))
    truth["hard"] = {"tiny": tiny, "gap": (gap_track, gap), "half_size": half,
                     "corrupt": truth["faults"]["corrupt_jpeg"], "missing": truth["faults"]["missing_listed_files"]}
    return truth["hard"]


def copy_fixture(truth: dict, dest: Path) -> dict:
    """A copy of the written dataset under ``dest`` (ground truth re-pointed), for fault tests."""
    shutil.copytree(truth["root"], dest)
    out = dict(truth, root=Path(dest), faults={})
    out["images"] = {k: dict(v, path=Path(dest) / Path(v["path"]).relative_to(truth["root"]))
                     for k, v in truth["images"].items()}
    return out


def inject_faults(truth: dict, faults) -> dict:
    """Damage the dataset at ``truth["root"]``; records what was done in ``truth["faults"]``.

    - corrupt_jpeg: the middle frame of the first train tracklet becomes garbage bytes.
    - short_tracklet: a tracklet of one frame (``0001C1T0099F001.jpg``, not in the info table).
    - missing_listed_files: two frames of the second train tracklet are deleted (still listed).
    - missing_listed_tracklet: every frame of the last train tracklet is deleted (still listed).
    - malformed_info_mat: tracks_train_info.mat becomes garbage (the reader falls back to names).
    """
    root = Path(truth["root"])
    train = sorted(t for t in truth["tracklets"] if truth["images"][(t, 1)]["split"] == "train")
    f = truth["faults"]
    for fault in faults:
        if fault == "corrupt_jpeg":
            track = train[0]
            F = truth["tracklets"][track][len(truth["tracklets"][track]) // 2]
            truth["images"][(track, F)]["path"].write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 20)
            f["corrupt_jpeg"] = (track, F)
        elif fault == "short_tracklet":
            src = truth["images"][(train[0], 1)]["path"]
            dst = src.parent / "0001C1T0099F001.jpg"
            shutil.copyfile(src, dst)
            f["short_tracklet"] = "0001C1T0099"
        elif fault == "missing_listed_files":
            track = train[1]
            gone = truth["tracklets"][track][1:3]
            for F in gone:
                truth["images"][(track, F)]["path"].unlink()
            f["missing_listed_files"] = (track, gone)
        elif fault == "missing_listed_tracklet":
            track = train[-1]
            for F in truth["tracklets"][track]:
                truth["images"][(track, F)]["path"].unlink()
            f["missing_listed_tracklet"] = track
        elif fault == "malformed_info_mat":
            (root / "info" / "tracks_train_info.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" + bytes(range(200)))
            f["malformed_info_mat"] = True
        else:
            raise ValueError(f"unknown fault {fault}")
    return f
