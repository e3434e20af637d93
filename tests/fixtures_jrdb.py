"""A tiny JRDB / JRDB-Pose split folder in the real on-disk layout, rendered from synthetic pedestrians.

``make_jrdb_fixture(root, body)`` writes ``root/train_dataset_with_activity/`` with two sequences
(``bytes-cafe-2019-02-07_0``: train, ``gates-ai-lab-2019-02-08_0``: the toolkit's val list), each
with three anny pedestrians walking around a robot:

- ``images/image_0`` and ``images/image_2``: two adjacent individual cameras (752x480 at scale 1),
  level, 1.1 m high, looking 72 degrees apart. FIXTURE SIMPLIFICATION: their field of view is 100
  degrees (JRDB's is ~77), so the overlap is wide enough (28 degrees) for pedestrian 1 to be seen
  whole by both while crossing from image_0 into image_2. The other cameras are not written.
- ``images/image_stitched``: a 3760x480 panorama. FIXTURE SIMPLIFICATION: it is the mosaic of 5
  pinhole views of 72 degrees each (752 px wide, one per camera direction, no overlap) rather
  than JRDB's cylinder; column 1880 = the robot's forward direction (image_0's axis), the
  360-degree seam is at columns 0 / 3760 (behind the robot).
- labels: ``labels_2d/<seq>_image{0,2}.json`` and ``labels_2d_stitched/<seq>.json`` (boxes of the
  rendered person within the image, occlusion from the visible fraction, truncated = the
  person touches the image border), ``labels_2d_pose_coco/<seq>_image{0,2}.json`` and
  ``labels_2d_pose_stitched_coco/<seq>.json`` (JRDB-Pose, 17 joints in JRDB order; image id =
  frame + 1). Always present as well: a non-pedestrian label (``bicycle:3``) and a stitched box
  of pedestrian 9 across the 360-degree seam (labels only; nobody is drawn there).
- ``calibration/cameras.yaml`` and ``defaults.yaml`` (the reader does not use them).

Each frame composites the pedestrians by depth over a static per-camera background with a
little noise. Returns the ground truth: cameras, per (track, cam, frame) the visible GT mask
(``mask(truth, track, cam, frame)``), COCO-17 joints in that camera's pixels, occlusion and
truncation, and what the faults did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import hard_cases

SPLIT_DIR = "train_dataset_with_activity"
SEQUENCES = {"bytes-cafe-2019-02-07_0": 16, "gates-ai-lab-2019-02-08_0": 8}  # name: frames
CAMS = ("image_0", "image_2")
STITCHED = "image_stitched"
CAM_HEIGHT = 1.1
SLOT_DEG = 72.0
INDIVIDUAL_HFOV_DEG = 100.0
# pedestrian track id: (radius m, azimuth start deg, azimuth end deg); azimuth + = left of forward
WALKERS = {1: (3.8, -10.0, -50.0), 2: (6.0, -20.0, -30.0), 5: (4.5, -85.0, -100.0)}
SEAM_TRACK = 9
FAULTS = ("malformed_labels", "malformed_camera_labels", "corrupt_jpeg", "missing_frames", "single_frame_track")
# the hard variant (``hard=True``: the first sequence, >= 24 frames): frame -> where image_0 (the robot
# turning, tilting, zooming: its principal point and focal length move) puts pedestrian 1
HARD_CAM, HARD_TRACK = "image_0", 1
HARD_PANS = {5: "left", 6: "left", 7: "right", 8: "right", 9: "top", 10: "top", 11: "bottom", 12: "bottom",
             13: "corner", 14: "corner", 15: "tiny", 16: "tiny"}
HARD_UNLABELLED = {2: (8, 9, 10)}  # track -> frames it is not labelled in (any view)
HARD_SPAN = {5: (4, 19)}  # track -> first and last labelled frame (any view): tracks that start and end mid-way
HARD_MISSING, HARD_CORRUPT, HARD_HALF_SIZE = ("image_2", 20), ("image_2", 3), ("image_0", 17)  # (camera, frame)
# JRDB-Pose order from COCO-17 (+ derived joints): head, r eye, l eye, r sho, neck, l sho, r elb, l elb,
# tailbone, r hand, r hip, l hip, l hand, r knee, l knee, r foot, l foot
JRDB_NAMES = ("head", "right eye", "left eye", "right shoulder", "neck", "left shoulder", "right elbow", "left elbow",
              "tailbone", "right hand", "right hip", "left hip", "left hand", "right knee", "left knee", "right foot",
              "left foot")


def jrdb_joints(coco: np.ndarray, head_top_z: float) -> np.ndarray:
    """[17, 3] JRDB-order world joints from COCO-17 world joints (+Z up)."""
    head = (coco[3] + coco[4]) / 2
    head = np.array([head[0], head[1], head_top_z - 0.03])
    return np.stack([head, coco[2], coco[1], coco[6], (coco[5] + coco[6]) / 2, coco[5], coco[8], coco[7],
                     (coco[11] + coco[12]) / 2, coco[10], coco[12], coco[11], coco[9], coco[14], coco[13], coco[16],
                     coco[15]])


def _cameras(W: int, H: int):
    """The two individual cameras and the 5 panorama slot cameras (slot m looks at -72 m degrees)."""
    from pairgen.synthetic.camera import look_at
    from pairgen.synthetic.render import Camera

    centre = np.array([0.0, 0.0, CAM_HEIGHT])

    def cam(az_deg: float, hfov_deg: float) -> Camera:
        a = np.radians(az_deg)
        R, t = look_at(centre, centre + np.array([np.cos(a), np.sin(a), 0.0]))
        f = (W / 2) / np.tan(np.radians(hfov_deg / 2))
        return Camera(R=R, t=t, fx=f, fy=f, cx=W / 2 - 0.5, cy=H / 2 - 0.5, width=W, height=H)

    individual = {c: cam(-SLOT_DEG * int(c.split("_")[1]) / 2, INDIVIDUAL_HFOV_DEG) for c in CAMS}
    slots = {m: cam(-SLOT_DEG * m, SLOT_DEG) for m in range(-2, 3)}
    return individual, slots


def _slot_of(points: np.ndarray) -> np.ndarray:
    az = np.degrees(np.arctan2(points[:, 1], points[:, 0]))
    return np.mod(np.round(-az / SLOT_DEG).astype(int) + 2, 5) - 2


def project_stitched(points: np.ndarray, slots, W: int) -> np.ndarray:
    """[N, 3] world points -> [N, 2] panorama pixels (each point through the slot of its azimuth)."""
    m = _slot_of(points)
    out = np.zeros((len(points), 2))
    for s in np.unique(m):
        uv, _ = slots[int(s)].project(points[m == s])
        out[m == s] = uv + np.array([(s + 2) * W, 0.0])
    return out


def _occlusion(frac: float) -> str:
    return ("Fully_visible" if frac >= 0.95 else "Mostly_visible" if frac >= 0.6
            else "Severely_occluded" if frac >= 0.1 else "Fully_occluded")


def _pose_json(seq: str, cam: str, n_frames: int, poses: dict) -> dict:
    images = [{"id": f + 1, "file_name": f"{cam}/{seq}/{f:06d}.jpg", "width": 0, "height": 0}
              for f in range(n_frames)]
    anns = []
    for (track, frame), (kps, box) in sorted(poses.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        x, y, w, h = box
        anns.append({"id": len(anns) + 1, "image_id": frame + 1, "track_id": track, "category_id": 1,
                     "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
                     "num_keypoints": int((kps[:, 2] > 0).sum()),
                     "bbox": [round(float(v), 3) for v in (x, y, w, h)], "area": round(float(w * h), 2)})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(JRDB_NAMES)}]}


def _write_calibration(split_dir: Path, W: int, H: int, individual) -> None:
    cal = split_dir / "calibration"
    cal.mkdir(parents=True, exist_ok=True)
    lines = ["cameras:"]
    for i in range(5):
        c = individual.get(f"image_{2 * i}") or individual["image_0"]
        lines += [f"  sensor_{i}:", f"    width: {W}", f"    height: {H}", "    D: 0 0 0 0 0",
                  "    K: " + " ".join(f"{v:.6g}" for v in c.K.reshape(-1)),
                  "    R: " + " ".join(f"{v:.6g}" for v in c.R.reshape(-1)), "    T: 0 0 0"]
    lines += ["stitching:", "  radius: 3360000", "  rotation: 0", "  scalewidth: 1831", "  crop: 1"]
    (cal / "cameras.yaml").write_text("\n".join(lines) + "\n")
    (cal / "defaults.yaml").write_text(
        f"image:\n  width: {5 * W}\n  height: {H}\n  stitched_image_offset: {5 * W // 2}\n")


def make_jrdb_fixture(root: Path, body, *, sequences: dict | None = None, scale: float = 1.0, faults=(),
                      seed: int = 0, keep_masks: bool = True, hard: bool = False) -> dict:
    """Write ``root/train_dataset_with_activity`` and return the ground truth (module docstring).

    ``sequences`` = {name: number of frames} (default SEQUENCES); ``scale`` scales the image sizes
    (1: JRDB's 752x480 and 3760x480); ``faults`` (any of FAULTS) are injected by
    :func:`inject_faults`.

    ``hard`` (the first sequence, >= 24 frames): image_0 turns, tilts and zooms out frame by frame so
    that pedestrian 1 crosses each frame edge and a corner and then is tiny (HARD_PANS; its boxes
    there are labelled truncated); pedestrian 2 is unlabelled for a few frames, pedestrian 5 is
    labelled only from frame 4 to 19; one image_2 frame is missing, another is garbage, and an
    image_0 frame is written at half size. ``truth["hard"]`` records it.
    """
    import simplejpeg

    from pairgen.synthetic import appearance, background
    from pairgen.synthetic.gl import GLBodyRenderer
    from pairgen.synthetic.motions import sample_clip

    sequences = dict(sequences or SEQUENCES)
    W, H = int(round(752 * scale)), int(round(480 * scale))
    SW = 5 * W
    split_dir = Path(root) / SPLIT_DIR
    individual, slots = _cameras(W, H)
    _write_calibration(split_dir, W, H, individual)
    renderer = GLBodyRenderer(W, body.faces, body.uv, 256, height=H)
    regions = appearance.region_map(body.uv, body.faces, body.regions, 256)
    truth = {"root": split_dir, "width": W, "height": H, "stitched_width": SW, "cameras": individual, "slots": slots,
             "sequences": {}, "seed": seed, "faults": {}}
    try:
        for si, (seq, n_frames) in enumerate(sequences.items()):
            rng = np.random.default_rng([seed, 7, si])
            bgs = {c: background.procedural_background(rng, W)[:H] for c in CAMS}
            bgs[STITCHED] = np.concatenate([background.procedural_background(rng, W)[:H] for _ in range(5)], axis=1)
            s = np.arange(n_frames) / max(n_frames - 1, 1)
            people = {}
            for track, (radius, a0, a1) in WALKERS.items():
                az = np.radians(a0 + (a1 - a0) * s)
                pos = np.stack([radius * np.cos(az), radius * np.sin(az), np.zeros(n_frames)], 1)
                direction = -1.0 if a1 < a0 else 1.0
                heading = direction * np.stack([-np.sin(az), np.cos(az), np.zeros(n_frames)], 1)
                yaw = np.arctan2(heading[:, 1], heading[:, 0]) + np.pi / 2
                pheno = rng.random((1, 6))
                pheno[0, 1] = 0.5 + 0.4 * pheno[0, 1]  # adults
                pheno[0, 4] = 0.3 + 0.6 * pheno[0, 4]
                clip = sample_clip(rng, ("walk",))
                posed = body.forward(np.repeat(pheno, n_frames, 0), clip.angles(np.arange(n_frames) / 15.0), yaw)
                texture, _ = appearance.random_outfit_texture(rng, regions)
                people[track] = (posed, pos, texture, appearance.random_lighting(rng))
            views = list(CAMS) + [STITCHED]
            hard_seq = hard and si == 0
            frame_cams = [dict(individual) for _ in range(n_frames)]
            if hard_seq:  # pedestrian 1's box in the still camera decides each move of image_0
                for f, edge in HARD_PANS.items():
                    box = hard_cases.standing_box(individual[HARD_CAM], people[HARD_TRACK][1][f])
                    frame_cams[f][HARD_CAM] = hard_cases.moved(individual[HARD_CAM], edge, box, W, H)
            gt = {"n_frames": n_frames, "masks": {}, "joints": {}, "occlusion": {}, "truncated": {}, "boxes": {},
                  "pose_v": {}}
            labels = {v: {} for v in views}
            poses = {v: {} for v in views}
            for f in range(n_frames):
                # render every person alone in every view that can see them, then composite by depth
                layers: dict[str, dict[int, tuple]] = {v: {} for v in views}
                for track, (posed, pos, texture, (ambient, lights)) in people.items():
                    verts = posed.vertices[f].astype(np.float64)
                    lift = np.array([0.0, 0.0, -verts[:, 2].min()]) + pos[f]
                    verts = verts + lift
                    coco = posed.keypoints[f].astype(np.float64) + lift
                    jr = jrdb_joints(coco, verts[:, 2].max())
                    split, normals = body.surface(verts)
                    az = np.degrees(np.arctan2(pos[f, 1], pos[f, 0]))
                    todo = [(c, frame_cams[f][c]) for c in CAMS
                            if abs((az + SLOT_DEG * int(c.split("_")[1]) / 2 + 180) % 360 - 180) < 65]
                    todo += [(m, slots[m]) for m in slots if abs((az + SLOT_DEG * m + 180) % 360 - 180) < 55]
                    rendered = renderer.render([(split, normals, c) for _, c in todo], texture, ambient, lights)
                    stitched_c = np.zeros((H, SW, 3), np.uint8)
                    stitched_d = np.zeros((H, SW), np.float32)
                    any_slot = False
                    for (key, cam), (colour, depth) in zip(todo, rendered):
                        if isinstance(key, str):
                            uv, z = cam.project(coco)
                            layers[key][track] = (colour, depth, uv, z, jr, cam)
                        else:
                            x0 = (key + 2) * W
                            stitched_c[:, x0:x0 + W] = colour
                            stitched_d[:, x0:x0 + W] = depth
                            any_slot = True
                    if any_slot:
                        uv = project_stitched(coco, slots, W)
                        z = np.ones(len(coco))
                        layers[STITCHED][track] = (stitched_c, stitched_d, uv, z, jr, None)
                for view in views:
                    img = (bgs[view].astype(np.float64) + rng.normal(0, 2.0, bgs[view].shape))
                    nearest = np.full(img.shape[:2], np.inf)
                    owner = np.full(img.shape[:2], -1)
                    for track, (colour, depth, *_rest) in layers[view].items():
                        d = np.where(depth > 0, depth, np.inf)
                        closer = d < nearest
                        img[closer] = colour[closer]
                        owner[closer] = track
                        nearest = np.minimum(nearest, d)
                    out = split_dir / "images" / view / seq / f"{f:06d}.jpg"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(simplejpeg.encode_jpeg(np.clip(img, 0, 255).astype(np.uint8), quality=90))
                    entries = labels[view].setdefault(f"{f:06d}.jpg", [])
                    for track, (colour, depth, uv, z, jr, cam) in layers[view].items():
                        alone = depth > 0
                        if not alone.any():
                            continue
                        first, last = HARD_SPAN.get(track, (0, n_frames)) if hard_seq else (0, n_frames)
                        if hard_seq and (f in HARD_UNLABELLED.get(track, ()) or not first <= f <= last):
                            continue  # not labelled there
                        visible = alone & (depth <= nearest + 1e-6)
                        frac = visible.sum() / alone.sum()
                        ys, xs = np.nonzero(alone)
                        box = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                               float(ys.max() - ys.min() + 1))
                        Wv = alone.shape[1]
                        truncated = bool(alone[:, 0].any() or alone[:, -1].any() or alone[0].any() or alone[-1].any())
                        occ = _occlusion(frac)
                        entries.append({"label_id": f"pedestrian:{track}", "box": [round(v, 2) for v in box],
                                        "file_id": f"{f:06d}.jpg",
                                        "attributes": {"occlusion": occ, "truncated": "true" if truncated else "false",
                                                       "area": int(alone.sum()), "interpolated": False}})
                        # JRDB-Pose keypoints (JRDB order): 2 visible, 1 behind another person, 0 outside
                        juv = project_stitched(jr, slots, W) if view == STITCHED else cam.project(jr)[0]
                        inside = (juv[:, 0] >= 0) & (juv[:, 0] <= Wv - 1) & (juv[:, 1] >= 0) & (juv[:, 1] <= H - 1)
                        kps = np.zeros((17, 3))
                        kps[inside, :2] = juv[inside]
                        px = np.round(juv[inside]).astype(int)
                        who = owner[px[:, 1], px[:, 0]]
                        kps[inside, 2] = np.where((who == track) | (who < 0), 2, 1)
                        poses[view][(track, f)] = (kps, box)
                        coco_uv = uv.copy()
                        coco_uv[z <= 0] = np.nan
                        gt["joints"][(str(track), view, f)] = coco_uv
                        gt["occlusion"][(str(track), view, f)] = occ
                        gt["truncated"][(str(track), view, f)] = truncated
                        gt["boxes"][(str(track), view, f)] = box
                        gt["pose_v"][(str(track), view, f)] = kps[:, 2].copy()
                        if keep_masks:
                            vy, vx = np.nonzero(visible)
                            if len(vy):
                                y0, x0 = vy.min(), vx.min()
                                gt["masks"][(str(track), view, f)] = (
                                    int(y0), int(x0), visible[y0:vy.max() + 1, x0:vx.max() + 1].copy(), visible.shape)
            # always-present oddities: a non-pedestrian label and a stitched box across the seam
            labels["image_0"]["000001.jpg"].append({"label_id": "bicycle:3", "box": [10, 300, 80, 60],
                                                    "attributes": {"occlusion": "Fully_visible", "truncated": "false"}})
            for f in range(min(3, n_frames)):
                labels[STITCHED][f"{f:06d}.jpg"].append({
                    "label_id": f"pedestrian:{SEAM_TRACK}",
                    "box": [SW - 60 * scale, 200 * scale, 140 * scale, 200 * scale],
                    "attributes": {"occlusion": "Fully_visible", "truncated": "false"}})
            lab = split_dir / "labels"
            for sub in ("labels_2d", "labels_2d_stitched", "labels_2d_pose_coco", "labels_2d_pose_stitched_coco"):
                (lab / sub).mkdir(parents=True, exist_ok=True)
            for c in CAMS:
                k = int(c.split("_")[1])
                (lab / "labels_2d" / f"{seq}_image{k}.json").write_text(json.dumps({"labels": labels[c]}))
                (lab / "labels_2d_pose_coco" / f"{seq}_image{k}.json").write_text(
                    json.dumps(_pose_json(seq, c, n_frames, poses[c])))
            (lab / "labels_2d_stitched" / f"{seq}.json").write_text(json.dumps({"labels": labels[STITCHED]}))
            (lab / "labels_2d_pose_stitched_coco" / f"{seq}.json").write_text(
                json.dumps(_pose_json(seq, STITCHED, n_frames, poses[STITCHED])))
            truth["sequences"][seq] = gt
            if hard_seq:
                gt["cameras"] = frame_cams

                def image(cam_frame):
                    return split_dir / "images" / cam_frame[0] / seq / f"{cam_frame[1]:06d}.jpg"

                image(HARD_MISSING).unlink()
                hard_cases.write_garbage(image(HARD_CORRUPT))
                hard_cases.write_half_size(image(HARD_HALF_SIZE))
                truth["hard"] = {"seq": seq, "cam": HARD_CAM, "track": str(HARD_TRACK), "pans": dict(HARD_PANS),
                                 "unlabelled": dict(HARD_UNLABELLED), "span": dict(HARD_SPAN), "missing": HARD_MISSING,
                                 "corrupt": HARD_CORRUPT, "half_size": HARD_HALF_SIZE}
    finally:
        renderer.close()
    inject_faults(truth, faults)
    return truth


def mask(truth: dict, seq: str, track: str, cam: str, frame: int) -> np.ndarray:
    """Full-frame visible GT mask of ``track`` (False where nobody or another person is in front)."""
    gt = truth["sequences"][seq]
    entry = gt["masks"].get((str(track), cam, frame))
    if entry is None:
        shape = (truth["height"], truth["stitched_width"] if cam == STITCHED else truth["width"])
        return np.zeros(shape, bool)
    y0, x0, sub, shape = entry
    out = np.zeros(shape, bool)
    out[y0:y0 + sub.shape[0], x0:x0 + sub.shape[1]] = sub
    return out


def inject_faults(truth: dict, faults, split_dir: Path | None = None) -> dict:
    """Damage the split folder written by :func:`make_jrdb_fixture` (or a copy at ``split_dir``);
    records in ``truth["faults"]`` what was done and returns that record."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}")
    d = Path(split_dir or truth["root"])
    seqs = list(truth["sequences"])
    first, last = seqs[0], seqs[-1]
    rng = np.random.default_rng([truth["seed"], 0])
    f = truth["faults"] = {}
    if "malformed_labels" in faults:  # the stitched labels of the last sequence cut mid-JSON: unit skipped
        p = d / "labels" / "labels_2d_stitched" / f"{last}.json"
        text = p.read_text()
        p.write_text(text[: len(text) // 2])
        f["malformed_labels"] = f"{last}@stitched"
    if "malformed_camera_labels" in faults:  # one camera's labels of the last sequence are not JSON: camera skipped
        p = d / "labels" / "labels_2d" / f"{last}_image2.json"
        p.write_text("{'labels': not json")
        f["malformed_camera_labels"] = (last, "image_2")
    if "corrupt_jpeg" in faults:  # garbage bytes under a JPEG name (frame 0 of image_0, first sequence)
        (d / "images" / "image_0" / first / "000000.jpg").write_bytes(rng.bytes(5000))
        f["corrupt_jpeg"] = (first, "image_0", 0)
    if "missing_frames" in faults:  # labelled frames of image_2 deleted from disk
        n = truth["sequences"][first]["n_frames"]
        gone = [n - 4, n - 3, n - 2]
        for fr in gone:
            (d / "images" / "image_2" / first / f"{fr:06d}.jpg").unlink()
        f["missing_frames"] = (first, "image_2", gone)
    if "single_frame_track" in faults:  # pedestrian 7 labelled in one frame only
        p = d / "labels" / "labels_2d" / f"{first}_image0.json"
        data = json.loads(p.read_text())
        data["labels"]["000004.jpg"].append({"label_id": "pedestrian:7", "box": [600, 200, 60, 150],
                                             "attributes": {"occlusion": "Fully_visible", "truncated": "false"}})
        p.write_text(json.dumps(data))
        f["single_frame_track"] = (first, "image_0", "7", 4)
    return f
