"""A tiny 3DPW dataset in the exact real layout, rendered with known ground truth.

Two actors walk side by side (one ahead of the other along +x) past a hand-held camera that
follows them (its pose changes every frame), 30 fps. Written as 3DPW ships it:
``sequenceFiles/{train,validation,test}/<seq>.pkl`` (protocol-2 pickles with str keys, read with
``encoding="latin1"``: sequence, genders, betas, betas_clothed, v_template_clothed, poses, trans,
poses_60Hz, trans_60Hz, jointPositions, poses2d [N, 3, 18] OpenPose COCO-18, cam_poses w2c
[N, 4, 4], cam_intrinsics, campose_valid, img_frame_ids) and ``imageFiles/<seq>/image_%05d.jpg``.

The world is SMPL's frame (+Y up) in metres. Each actor is the tests' SMPL-format model driven
through smplx with exactly the stored ``betas[:10]``, ``poses`` (axis-angle) and ``trans``; each is
rendered separately and composited by depth over a background panorama that pans with the camera.
GT mask of an actor = its depth > 0 and nearer than the other actor where both render.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np

import hard_cases

FPS = 30.0
# (sequence, split folder, number of actors)
DEFAULT_SEQS = (("courtyard_walkPair_00", "train", 2), ("downtown_walkPair_01", "test", 2),
                ("outdoors_walkPair_02", "validation", 2))
INVALID = {0: (3, 4), 1: (10,)}  # actor -> frames whose campose_valid is False
NO_2D = {1: (7,)}  # actor -> frames whose poses2d are all zeros (OpenPose found nobody): fallback
MALFORMED_SEQ = "courtyard_garbage_00"
SHORT_SEQ = "courtyard_shortTrack_00"
MISSING_IMAGES = (5, 6)  # frames of the first sequence whose JPEGs are deleted ("missing_images")
CORRUPT_IMAGES = (2, 9, 13, 16)  # frames of the second sequence overwritten with garbage ("corrupt_jpeg")
# OpenPose COCO-18 from SMPL joints (-1..-5: face points nose, r_eye, l_eye, r_ear, l_ear)
OP18_FROM_SMPL = (-1, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, -2, -3, -4, -5)
# the hard variant (``hard=True``: the first sequence, >= 24 frames): frame -> where the camera (turned,
# or moved 25 m back for "tiny") puts actor 0; actor 1's valid span; damaged image files
HARD_PANS = {5: "left", 6: "left", 7: "right", 8: "right", 9: "top", 10: "top", 11: "bottom", 12: "bottom",
             13: "corner", 14: "corner", 15: "tiny", 16: "tiny"}
HARD_SPAN = {1: (4, 19)}  # actor -> first and last valid frame: a track that starts and ends mid-sequence
HARD_CORRUPT, HARD_HALF_SIZE, HARD_MISSING = 2, 17, 18


def face_vertex_ids(model) -> np.ndarray:
    """Vertices of the SMPL-format model near nose, r_eye, l_eye, r_ear, l_ear (rest pose, SMPL frame:
    +Y up, facing +Z, the person's left at +X)."""
    import torch

    with torch.no_grad():
        rest = model()
    v = rest.vertices[0].numpy().astype(np.float64)
    head = rest.joints[0, 15].numpy().astype(np.float64)
    near = np.nonzero((np.abs(v[:, 1] - head[1]) < 0.06) & (np.hypot(v[:, 0] - head[0], v[:, 2] - head[2]) < 0.15))[0]
    nose = v[near[np.argmax(v[near, 2])]]
    targets = [nose, nose + [-0.032, 0.035, -0.025], nose + [0.032, 0.035, -0.025],
               head + [-0.08, 0.0, -0.01], head + [0.08, 0.0, -0.01]]
    return np.array([int(np.argmin(np.linalg.norm(v - p, axis=1))) for p in targets])


def project(K: np.ndarray, w2c: np.ndarray, X: np.ndarray) -> np.ndarray:
    pc = np.asarray(X, np.float64).reshape(-1, 3) @ w2c[:3, :3].T + w2c[:3, 3]
    return pc[:, :2] / pc[:, 2:3] * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])


def _ry(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_threedpw_fixture(root: Path, smpl_path: Path, *, seqs=DEFAULT_SEQS, n_frames: int = 20,
                          width: int = 360, height: int = 640, seed: int = 0, faults=(),
                          keep_masks: bool = True, hard: bool = False) -> dict:
    """Write the dataset under ``root``; return its ground truth.

    Ground truth per sequence: split (folder name), K, cam_poses [N, 4, 4] w2c, and per actor
    ``joints`` [N, 29, 3] world (24 SMPL joints + 5 face points), ``valid`` [N] (campose_valid),
    ``masks`` [N, H, W] bool (visible part; None with ``keep_masks=False``). Real size for a
    benchmark: ``width=1080, height=1920`` (3DPW is mostly portrait).

    ``hard``: in the first sequence (>= 24 frames) the camera turns so that actor 0 crosses each
    frame edge and a corner, and steps 25 m back so that both actors are tiny (HARD_PANS: 3DPW has
    one intrinsic matrix per sequence, so the camera pose does it); actor 1 is valid only from
    frame 4 to 19 (HARD_SPAN); image HARD_CORRUPT is garbage, HARD_HALF_SIZE is written at half
    size and HARD_MISSING is deleted. ``truth["hard"]`` records it.
    """
    import cv2
    import simplejpeg
    import torch

    from pairgen.synthetic import appearance
    from pairgen.synthetic.background import procedural_background
    from pairgen.synthetic.body import vertex_normals
    from pairgen.synthetic.camera import look_at
    from pairgen.synthetic.gl import GLBodyRenderer
    from pairgen.synthetic.motions import sample_clip
    from pairgen.synthetic.render import Camera
    from pairgen.synthetic.smpl_body import SmplBody

    root = Path(root)
    rng = np.random.default_rng(seed)
    smpl = SmplBody(str(smpl_path))
    model = smpl.model
    face_ids = face_vertex_ids(model)
    with torch.no_grad():
        lift = -float(model().vertices[0, :, 1].min())  # SMPL's origin is near the pelvis: feet onto y = 0
    f = 420.0 * width / 360.0
    K = np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1.0]])  # 2 cx = width (official demo)
    renderer = GLBodyRenderer(width, smpl.faces, smpl.uv, 256, height=height)
    regions = smpl.region_texture_map(256)
    ambient = np.array([0.45, 0.45, 0.45])
    lights = [(np.array([0.3, -1.0, -0.4]), np.array([1.0, 1.0, 1.0]), 3.0)]
    truth = {"root": root, "seqs": {}, "width": width, "height": height, "fps": FPS, "smpl_model": Path(smpl_path)}
    N = n_frames
    t = np.arange(N) / FPS
    try:
        for seq, folder, n_actors in seqs:
            speed = rng.uniform(0.9, 1.2)  # m/s along +x
            x0 = np.array([-0.55, 0.55])[:n_actors] + rng.uniform(-0.1, 0.1, n_actors)
            # the camera follows the pair from the front (+z), swaying like a hand-held phone
            mid = x0.mean() + speed * t
            centres = np.stack([mid + 0.08 * np.sin(2 * np.pi * 0.7 * t) + rng.uniform(-0.05, 0.05),
                                1.25 + 0.04 * np.sin(2 * np.pi * 1.1 * t + 1.0),
                                3.5 + 0.1 * np.sin(2 * np.pi * 0.5 * t)], 1)
            cam_poses = np.zeros((N, 4, 4))
            for i in range(N):
                target = np.array([mid[i] + 0.05 * np.sin(2 * np.pi * 0.9 * t[i]), 0.9, 0.0])
                R, tt = look_at(centres[i], target, up=np.array([0.0, 1.0, 0.0]))
                cam_poses[i, :3, :3], cam_poses[i, :3, 3], cam_poses[i, 3, 3] = R, tt, 1.0
            hard_seq = hard and seq == seqs[0][0]
            if hard_seq:
                hard_poses(cam_poses, K, x0[0] + speed * t, width, height)
            pano = procedural_background(rng, 2 * max(width, height))
            actors = []
            for a in range(n_actors):
                clip = sample_clip(rng, ("walk",))
                local = smpl.local_rotations(clip.angles(t))  # [N, 24, 3, 3] SMPL frame
                local[:, 0] = _ry(np.pi / 2) @ local[:, 0]  # face +x (the walking direction)
                aa = np.stack([np.concatenate([cv2.Rodrigues(local[i, j])[0].ravel() for j in range(24)])
                               for i in range(N)]).astype(np.float32)
                betas = np.zeros(10 if a == 0 else 16, np.float32)  # real files may carry trailing zeros
                betas[:2] = rng.uniform(-1.0, 1.0, 2)
                trans = np.stack([x0[a] + speed * t, np.full(N, lift), np.full(N, 0.15 * a)], 1).astype(np.float32)
                with torch.no_grad():
                    out = model(betas=torch.as_tensor(np.tile(betas[:10], (N, 1))),
                                global_orient=torch.as_tensor(aa[:, :3]), body_pose=torch.as_tensor(aa[:, 3:]),
                                transl=torch.as_tensor(trans))
                verts = out.vertices.numpy().astype(np.float64)
                joints24 = out.joints[:, :24].numpy().astype(np.float64)
                joints = np.concatenate([joints24, verts[:, face_ids]], 1)  # [N, 29, 3]
                valid = np.ones(N, bool)
                valid[[i for i in INVALID.get(a, ()) if i < N]] = False
                if hard_seq and a in HARD_SPAN:
                    valid[: HARD_SPAN[a][0]] = valid[HARD_SPAN[a][1] + 1:] = False
                texture, _ = appearance.random_outfit_texture(rng, regions)
                actors.append({"aa": aa, "betas": betas, "trans": trans, "verts": verts, "joints": joints,
                               "valid": valid, "texture": texture, "gender": "mf"[a % 2]})
            img_dir = root / "imageFiles" / seq
            img_dir.mkdir(parents=True, exist_ok=True)
            masks = [np.zeros((N, height, width), bool) if keep_masks else None for _ in actors]
            for i in range(N):
                cam = Camera(cam_poses[i, :3, :3], cam_poses[i, :3, 3], K[0, 0], K[1, 1], K[0, 2], K[1, 2], width,
                             height)
                shift = int(round((mid[i] - mid[0]) * f / 6.0))  # the far background pans slowly
                x_off = min(max(0, pano.shape[1] // 4 + shift), pano.shape[1] - width)
                img = pano[:height, x_off:x_off + width].copy()
                depths, colours = [], []
                for act in actors:
                    v = act["verts"][i].astype(np.float32)
                    (colour, depth), = renderer.render([(v, vertex_normals(v, smpl.mesh_faces), cam)], act["texture"],
                                                       ambient, lights)
                    depths.append(np.where(depth > 0, depth, np.inf))
                    colours.append(colour)
                nearest = np.argmin(np.stack(depths), 0)
                anyone = np.isfinite(np.min(np.stack(depths), 0))
                for a in range(len(actors)):
                    m = anyone & (nearest == a)
                    img[m] = colours[a][m]
                    if keep_masks:
                        masks[a][i] = m
                (img_dir / f"image_{i:05d}.jpg").write_bytes(simplejpeg.encode_jpeg(img, quality=92, colorspace="RGB"))
            poses2d = []
            for a, act in enumerate(actors):
                p = np.zeros((N, 3, 18))
                for i in range(N):
                    pts = act["joints"][i, [j if j >= 0 else 23 - j for j in OP18_FROM_SMPL]]
                    p[i, :2] = project(K, cam_poses[i], pts).T
                    p[i, 2] = 1.0
                for i in NO_2D.get(a, ()):
                    if i < N:
                        p[i] = 0.0
                poses2d.append(p)
            data = {
                "sequence": seq,
                "genders": [act["gender"] for act in actors],
                "betas": [act["betas"].astype(np.float64) for act in actors],
                "betas_clothed": [act["betas"].astype(np.float64) for act in actors],
                "v_template_clothed": [np.zeros((6890, 3)) for _ in actors],
                "poses": [act["aa"].astype(np.float64) for act in actors],
                "trans": [act["trans"].astype(np.float64) for act in actors],
                "poses_60Hz": [np.repeat(act["aa"], 2, 0).astype(np.float64) for act in actors],
                "trans_60Hz": [np.repeat(act["trans"], 2, 0).astype(np.float64) for act in actors],
                "jointPositions": [act["joints"][:, :24].reshape(N, 72) for act in actors],
                "poses2d": poses2d,
                "cam_poses": cam_poses,
                "cam_intrinsics": K,
                "campose_valid": [act["valid"] for act in actors],
                "img_frame_ids": np.arange(N) * 2,
            }
            _dump(root / "sequenceFiles" / folder / f"{seq}.pkl", data)
            truth["seqs"][seq] = {
                "split": {"validation": "val"}.get(folder, folder), "folder": folder, "K": K, "cam_poses": cam_poses,
                "n_frames": N, "cam_poses_hard": hard_seq,
                "actors": [{"joints": act["joints"], "valid": act["valid"], "masks": masks[a], "betas": act["betas"],
                            "poses": act["aa"], "trans": act["trans"]} for a, act in enumerate(actors)],
            }
            if hard_seq:
                hard_cases.write_garbage(img_dir / f"image_{HARD_CORRUPT:05d}.jpg")
                hard_cases.write_half_size(img_dir / f"image_{HARD_HALF_SIZE:05d}.jpg")
                (img_dir / f"image_{HARD_MISSING:05d}.jpg").unlink()
                truth["hard"] = {"seq": seq, "pans": dict(HARD_PANS), "span": dict(HARD_SPAN), "corrupt": HARD_CORRUPT,
                                 "half_size": HARD_HALF_SIZE, "missing": HARD_MISSING}
    finally:
        renderer.close()
    apply_faults(truth, faults)
    return truth


def hard_poses(cam_poses: np.ndarray, K: np.ndarray, walk_x: np.ndarray, width: int, height: int) -> None:
    """Turn the camera of each HARD_PANS frame so that actor 0 (standing at x = ``walk_x[i]``) crosses
    that edge (the principal-point shift of hard_cases.moved, made by a rotation), or move it 25 m back."""
    from pairgen.synthetic.render import Camera

    for i, edge in HARD_PANS.items():
        if i >= len(cam_poses):
            continue
        R, t = cam_poses[i, :3, :3].copy(), cam_poses[i, :3, 3].copy()
        if edge == "tiny":
            cam_poses[i, :3, 3] = t + np.array([0.0, 0.0, 25.0])
            continue
        cam = Camera(R, t, K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height)
        box = hard_cases.standing_box(cam, np.array([walk_x[i], 0.0, 0.0]), up=np.array([0.0, 1.0, 0.0]))
        moved = hard_cases.moved(cam, edge, box, width, height)
        a, b = np.arctan((moved.cx - cam.cx) / K[0, 0]), np.arctan((moved.cy - cam.cy) / K[1, 1])
        turn_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        turn_x = np.array([[1, 0, 0], [0, np.cos(b), np.sin(b)], [0, -np.sin(b), np.cos(b)]])
        cam_poses[i, :3, :3] = turn_x @ turn_y @ R
        cam_poses[i, :3, 3] = turn_x @ turn_y @ t


def add_sequence_copy(truth: dict, src: str, dst: str, folder: str = "train", edit=None) -> None:
    """A new sequence ``dst``: a copy of ``src``'s pickle (``edit(data)`` may change it) and images."""
    root = truth["root"]
    s = truth["seqs"][src]
    data = pickle.loads((root / "sequenceFiles" / s["folder"] / f"{src}.pkl").read_bytes(), encoding="latin1")
    data["sequence"] = dst
    if edit is not None:
        edit(data)
    _dump(root / "sequenceFiles" / folder / f"{dst}.pkl", data)
    shutil.copytree(root / "imageFiles" / src, root / "imageFiles" / dst)
    truth["seqs"][dst] = dict(s, folder=folder, split={"validation": "val"}.get(folder, folder))


def apply_faults(truth: dict, faults) -> dict:
    """Inject faults; what was done is recorded in ``truth["faults"]``.

    - "malformed_pickle": a new train sequence whose pickle is garbage (the unit is skipped).
    - "missing_images": the first sequence's images MISSING_IMAGES are deleted (frames listed in the
      annotation without a file).
    - "corrupt_jpeg": the second sequence's images CORRUPT_IMAGES are overwritten with garbage bytes.
    - "short_track": a new train sequence (a copy of the first) whose actor 1 has one valid frame.
    """
    done = truth.setdefault("faults", {})
    names = list(truth["seqs"])
    root = truth["root"]
    for fault in faults:
        if fault == "malformed_pickle":
            p = root / "sequenceFiles" / "train" / f"{MALFORMED_SEQ}.pkl"
            p.write_bytes(b"\x80\x02}q\x00(U\x08sequence garbage, not a pickle" * 8)
            shutil.copytree(root / "imageFiles" / names[0], root / "imageFiles" / MALFORMED_SEQ)
            done[fault] = MALFORMED_SEQ
        elif fault == "missing_images":
            for i in MISSING_IMAGES:
                (root / "imageFiles" / names[0] / f"image_{i:05d}.jpg").unlink()
            done[fault] = (names[0], MISSING_IMAGES)
        elif fault == "corrupt_jpeg":
            for i in CORRUPT_IMAGES:
                (root / "imageFiles" / names[1] / f"image_{i:05d}.jpg").write_bytes(b"\xff\xd8\xff garbage" * 40)
            done[fault] = (names[1], CORRUPT_IMAGES)
        elif fault == "short_track":
            def edit(data):
                v = np.zeros(len(data["cam_poses"]), bool)
                v[12] = True
                data["campose_valid"][1] = v

            add_sequence_copy(truth, names[0], SHORT_SEQ, edit=edit)
            truth["seqs"][SHORT_SEQ] = dict(truth["seqs"][SHORT_SEQ])
            acts = [dict(x) for x in truth["seqs"][SHORT_SEQ]["actors"]]
            acts[1]["valid"] = np.arange(truth["seqs"][SHORT_SEQ]["n_frames"]) == 12
            truth["seqs"][SHORT_SEQ]["actors"] = acts
            done[fault] = SHORT_SEQ
        else:
            raise ValueError(f"unknown fault {fault!r}")
    return truth
