"""A tiny HUMBI body bundle in the real on-disk layout, rendered from a synthetic person.

``make_humbi_fixture(root, body)`` writes ``root/Body_1_10/subject_<N>/body/`` for two subjects
(ids 1 and 10: subject 10 falls in the reader's "val" split), each seen by 8 calibrated cameras
(HUMBI ids) at 8 frame folders (frame indices at 60 Hz, not consecutive), with the three camera
text files, images, keypoints.txt (BODY_25, metres), smpl_vertex.txt and smpl_parameter.txt.

The person walks a circle around the dome's centre (so a per-camera median background is the
empty studio) in front of a static per-camera background with a little sensor noise.
smpl_vertex.txt holds the rendered anny mesh's vertices: the test SMPL file made by
``smpl_fixture.make_smpl_file`` has exactly anny's faces, so "SMPL vertices + the model's faces"
is the rendered surface. smpl_parameter.txt holds 86 placeholder values (scale 1, trans = the
pelvis, zero pose and betas): the reader does not use it.

Returns the ground truth: per subject the cameras, GT masks per (cam, frame) (``depth > 0``),
COCO-17 world joints and the person's centre per frame, and what the faults did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import hard_cases

CAMERAS = (0, 1, 2, 24, 25, 60, 86, 99)
FRAMES = (1, 11, 21, 31, 46, 61, 71, 86)
SUBJECTS = (1, 10)
BUNDLE = "Body_1_10"
# BODY_25 joint k = COCO-17 joint COCO_OF_BODY25[k] (None: derived below)
COCO_OF_BODY25 = (0, None, 6, 8, 10, 5, 7, 9, None, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FAULTS = ("missing_image", "missing_image_folder", "corrupt_jpeg", "bad_keypoints", "bad_camera", "bad_extrinsic")
# the hard variant (``hard=True``, first subject): camera -> where its principal point (or zoom) puts the
# person standing at the dome's centre; frames (indices into ``frames``) nobody is detected in; damaged images
HARD_EDGES = {0: "left", 1: "right", 2: "top", 24: "bottom", 25: "corner", 60: "tiny"}
HARD_UNSEEN = (0, -1)  # keypoints.txt all zeros (OpenPose found nobody): the person arrives late, leaves early
HARD_MISSING, HARD_CORRUPT = (86, 2), (86, 3)  # (camera, frame index)
HARD_HALF_SIZE = ((99, 3), (99, 4), (99, 5))  # single images of camera 99 written at half size


def body25_from_coco(k: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """[25, 3] OpenPose BODY_25 joints from COCO-17 world joints (+Z up); feet from the ankles."""
    out = np.zeros((25, 3))
    for b, c in enumerate(COCO_OF_BODY25):
        if c is not None:
            out[b] = k[c]
    out[1] = (k[5] + k[6]) / 2  # neck
    out[8] = (k[11] + k[12]) / 2  # mid hip
    down = np.array([0.0, 0.0, -0.07])
    for ankle, (big, small, heel) in ((k[15], (19, 20, 21)), (k[16], (22, 23, 24))):
        out[big] = ankle + down + 0.15 * heading
        out[small] = ankle + down + 0.12 * heading + np.array([0.0, 0.0, 0.01])
        out[heel] = ankle + down - 0.05 * heading
    return out


def _camera_rig(n: int, width: int, height: int, rng):
    """Cameras on a ring (radius 4 m, heights 0.6-2.6 m) looking at the dome's centre."""
    from pairgen.synthetic.camera import look_at
    from pairgen.synthetic.render import Camera

    s = height / 270.0
    cams = []
    for i in range(n):
        az = 2 * np.pi * i / n + rng.uniform(-0.15, 0.15)
        centre = np.array([4.0 * np.sin(az), -4.0 * np.cos(az), rng.uniform(0.6, 2.6)])
        R, t = look_at(centre, np.array([0.0, 0.0, 0.9]) + rng.uniform(-0.1, 0.1, 3))
        f = 330.0 * s * rng.uniform(0.97, 1.03)
        cams.append(Camera(R=R, t=t, fx=f, fy=f, cx=width / 2 + rng.uniform(-4, 4) * s,
                           cy=height / 2 + rng.uniform(-4, 4) * s, width=width, height=height))
    return cams


def _fmt(rows) -> str:
    return "".join(" ".join(f"{v:.10g}" for v in np.atleast_1d(r)) + "\n" for r in rows)


def write_camera_files(body_dir: Path, cams: dict[int, object]) -> None:
    """intrinsic.txt / extrinsic.txt / project.txt: 3 header lines, then one block per camera."""
    n = len(cams)
    header = f"Numcam: 107\nnumframes: {n}\nnumP: {n}\n"
    intr, extr, proj = [header], [header], [header]
    for cid, c in cams.items():
        C = c.center
        M = c.K @ c.R @ np.hstack([np.eye(3), -C[:, None]])
        intr.append(f"0 {cid}\n" + _fmt(c.K))
        extr.append(f"0 {cid}\n" + _fmt([C]) + _fmt(c.R))
        proj.append(f"0 {cid}\n" + _fmt(M))
    for name, parts in (("intrinsic.txt", intr), ("extrinsic.txt", extr), ("project.txt", proj)):
        (body_dir / name).write_text("".join(parts))


def make_humbi_fixture(root: Path, body, *, subjects=SUBJECTS, cameras=CAMERAS, frames=FRAMES,
                       width: int = 480, height: int = 270, faults=(), seed: int = 0,
                       keep_masks: bool = True, hard: bool = False) -> dict:
    """Write the bundle under ``root`` and return the ground truth (see the module docstring).

    ``body`` is an AnnyBody. ``frames`` is a tuple of frame ids or a count (ids 1, 11, 21, ...);
    width/height 1920x1080 give HUMBI's real image size (benchmarks: ``keep_masks=False``). ``faults`` (any of FAULTS) are injected into subject ``subjects[0]``
    except ``bad_extrinsic`` (the last subject's extrinsic.txt is cut mid-block).

    ``hard`` (the first subject): the cameras HARD_EDGES see the person across a frame edge or a
    corner (principal points moved; the person walks, so some frames are further out) or tiny
    (zoomed out); nobody is detected in the first and last frame folders (HARD_UNSEEN); one image
    is missing, one is garbage and three are written at half size. ``truth["hard"]`` records it.
    """
    import simplejpeg

    from pairgen.synthetic import appearance, background
    from pairgen.synthetic.gl import GLBodyRenderer
    from pairgen.synthetic.motions import sample_clip

    if isinstance(frames, int):
        frames = tuple(1 + 10 * i for i in range(frames))
    if set(faults) - set(FAULTS):
        raise ValueError(f"unknown faults {sorted(set(faults) - set(FAULTS))}")
    bundle = Path(root) / BUNDLE
    renderer = GLBodyRenderer(width, body.faces, body.uv, 256, height=height)
    regions = appearance.region_map(body.uv, body.faces, body.regions, 256)
    bg_size = max(width, height)
    backgrounds = {c: background.procedural_background(np.random.default_rng([seed, 1, c]), bg_size)[:height, :width]
                   for c in cameras}
    times = np.asarray(frames, np.float64) / 60.0
    truth = {"root": bundle, "width": width, "height": height, "frames": list(frames), "cameras": list(cameras),
             "subject_ids": list(subjects), "seed": seed, "subjects": {}, "faults": {}}
    try:
        for si, sid in enumerate(subjects):
            rng = np.random.default_rng([seed, 2, sid])
            rig = _camera_rig(len(cameras), width, height, rng)
            cams = dict(zip(cameras, rig))
            hard_subject = hard and si == 0
            if hard_subject:
                for cid, edge in HARD_EDGES.items():
                    box = hard_cases.standing_box(cams[cid], np.zeros(3))
                    cams[cid] = hard_cases.moved(cams[cid], edge, box, width, height, outside=0.2)
            clip = sample_clip(rng)
            # walk a circle of radius 0.8 m: the studio is visible behind the person in most frames
            phase = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi * 7 / 8, len(frames))
            pos = np.stack([0.8 * np.cos(phase), 0.8 * np.sin(phase), np.zeros(len(frames))], 1)
            heading = np.stack([-np.sin(phase), np.cos(phase), np.zeros(len(frames))], 1)
            yaw = np.arctan2(heading[:, 1], heading[:, 0]) + np.pi / 2  # body faces -Y at yaw 0
            pheno = rng.random((1, 6))
            pheno[0, 1] = 0.5 + 0.4 * pheno[0, 1]  # adults (age), of ordinary height
            pheno[0, 4] = 0.3 + 0.6 * pheno[0, 4]
            posed = body.forward(np.repeat(pheno, len(frames), 0), clip.angles(times), yaw)
            texture, _ = appearance.random_outfit_texture(rng, regions)
            ambient, lights = appearance.random_lighting(rng)

            body_dir = bundle / f"subject_{sid}" / "body"
            body_dir.mkdir(parents=True, exist_ok=True)
            write_camera_files(body_dir, cams)
            gt = {"cameras": cams, "masks": {}, "joints": {}, "centre": {}, "vertices": {}}
            for fi, fr in enumerate(frames):
                verts = posed.vertices[fi].astype(np.float64)
                lift = np.array([0.0, 0.0, -verts[:, 2].min()]) + pos[fi]
                verts = verts + lift
                kps = posed.keypoints[fi].astype(np.float64) + lift
                split, normals = body.surface(verts)
                rendered = renderer.render([(split, normals, c) for c in cams.values()], texture, ambient, lights)
                fdir = body_dir / f"{fr:08d}"
                (fdir / "image").mkdir(parents=True, exist_ok=True)
                (fdir / "reconstruction").mkdir(parents=True, exist_ok=True)
                for (cid, c), (colour, depth) in zip(cams.items(), rendered):
                    mask = depth > 0
                    img = np.where(mask[..., None], colour, backgrounds[cid]).astype(np.int16)
                    img = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
                    (fdir / "image" / f"image{cid:07d}.jpg").write_bytes(simplejpeg.encode_jpeg(img, quality=90))
                    if keep_masks:
                        gt["masks"][(cid, fr)] = mask
                b25 = body25_from_coco(kps, heading[fi])
                if hard_subject and fi in [i % len(frames) for i in HARD_UNSEEN]:
                    b25 = np.zeros_like(b25)  # nobody detected
                (fdir / "reconstruction" / "keypoints.txt").write_text(_fmt(b25))
                (fdir / "reconstruction" / "smpl_vertex.txt").write_text(_fmt(verts))
                pelvis = b25[8]
                (fdir / "reconstruction" / "smpl_parameter.txt").write_text(
                    _fmt(np.concatenate([[1.0], pelvis, np.zeros(72), np.zeros(10)])))
                gt["joints"][fr] = kps
                gt["centre"][fr] = (verts.min(0) + verts.max(0)) / 2
                gt["vertices"][fr] = verts if keep_masks else None
            truth["subjects"][sid] = gt
            if hard_subject:
                def image(cam_frame):
                    cid, fi = cam_frame
                    return body_dir / f"{frames[fi]:08d}" / "image" / f"image{cid:07d}.jpg"

                image(HARD_MISSING).unlink()
                hard_cases.write_garbage(image(HARD_CORRUPT))
                for cam_frame in HARD_HALF_SIZE:
                    hard_cases.write_half_size(image(cam_frame))
                truth["hard"] = {"subject": sid, "edges": dict(HARD_EDGES),
                                 "unseen": [frames[i] for i in HARD_UNSEEN],
                                 "missing": (HARD_MISSING[0], frames[HARD_MISSING[1]]),
                                 "corrupt": (HARD_CORRUPT[0], frames[HARD_CORRUPT[1]]),
                                 "half_size": {(cid, frames[fi]) for cid, fi in HARD_HALF_SIZE}}
    finally:
        renderer.close()
    inject_faults(truth, faults)
    return truth


def inject_faults(truth: dict, faults, bundle: Path | None = None) -> dict:
    """Damage the bundle written by :func:`make_humbi_fixture` (or a copy of it at ``bundle``);
    records in ``truth["faults"]`` what was done, and returns that record."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}")
    bundle = Path(bundle or truth["root"])
    subjects, cameras, frames = truth["subject_ids"], truth["cameras"], truth["frames"]
    rng = np.random.default_rng([truth["seed"], 0])
    s1 = bundle / f"subject_{subjects[0]}" / "body"
    f = truth["faults"] = {}
    if "missing_image" in faults:  # camera 24 lost two frames
        f["missing_image"] = [(subjects[0], cameras[3], fr) for fr in frames[1:3]]
        for _, cid, fr in f["missing_image"]:
            (s1 / f"{fr:08d}" / "image" / f"image{cid:07d}.jpg").unlink()
    if "missing_image_folder" in faults:  # a frame without its image folder
        fr = frames[4]
        for p in (s1 / f"{fr:08d}" / "image").iterdir():
            p.unlink()
        (s1 / f"{fr:08d}" / "image").rmdir()
        f["missing_image_folder"] = (subjects[0], fr)
    if "corrupt_jpeg" in faults:  # garbage bytes under a JPEG name
        cid, fr = cameras[1], frames[0]
        (s1 / f"{fr:08d}" / "image" / f"image{cid:07d}.jpg").write_bytes(rng.bytes(5000))
        f["corrupt_jpeg"] = (subjects[0], cid, fr)
    if "bad_keypoints" in faults:  # a keypoints.txt with a broken row
        fr = frames[6]
        p = s1 / f"{fr:08d}" / "reconstruction" / "keypoints.txt"
        lines = p.read_text().splitlines()
        lines[3] = "0.1 nan?"
        p.write_text("\n".join(lines[:20]) + "\n")
        f["bad_keypoints"] = (subjects[0], fr)
    if "bad_camera" in faults:  # project.txt of one camera disagrees with K R [I|-C]
        cid = cameras[5]
        p = s1 / "project.txt"
        lines = p.read_text().splitlines()
        i = lines.index(f"0 {cid}")
        row = [float(v) for v in lines[i + 1].split()]
        row[3] += 0.05 * abs(row[0]) + 50.0
        lines[i + 1] = " ".join(f"{v:.10g}" for v in row)
        p.write_text("\n".join(lines) + "\n")
        f["bad_camera"] = (subjects[0], cid)
    if "bad_extrinsic" in faults:  # extrinsic.txt cut in the middle of a camera block
        p = bundle / f"subject_{subjects[-1]}" / "body" / "extrinsic.txt"
        lines = p.read_text().splitlines()
        p.write_text("\n".join(lines[:3 + 5 * 2 + 2]) + "\n")
        f["bad_extrinsic"] = subjects[-1]
    return f
