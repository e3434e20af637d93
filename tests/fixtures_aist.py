"""A tiny AIST++ + AIST Dance DB dataset in the exact real layout, rendered with known ground truth.

One dancer per sequence, SMPL body (the tests' SMPL-format file) driven by the DOF rig, seen by
9 calibrated static cameras in a ring (some with lens distortion), 60 fps. Everything written
follows the real files: ``keypoints2d/<seq>.pkl`` (9, N, 17, 3) + det_scores + timestamps,
``keypoints3d/<seq>.pkl``, ``motions/<seq>.pkl`` (axis-angle (N, 72), smpl_trans in cm,
smpl_scaling 100), ``cameras/mapping.txt`` + ``cameras/setting1.json`` (list of 9 dicts, OpenCV
w2c Rodrigues, cm, y up), ``splits/pose_*.txt``, ``ignore_list.txt`` and the videos
``videos/<seq with cXX>.mp4`` (H.264, 60 fps).

The world of the files is SMPL's frame (y up) in centimetres; rendering happens in metres (the
GL near/far planes are metric), so the motions pkl is exactly ``100 * SMPL(pose) + smpl_trans``
of the rendered mesh. The dancer walks a circle around the studio centre so that a per-pixel
median over the sequence sees the static background (as AIST's dancers move about the stage).
"""

from __future__ import annotations

import json
import pickle
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np

VIEWS = tuple(f"c{i:02d}" for i in range(1, 10))
DEFAULT_SEQS = (("gBR_sBM_cAll_d04_mBR1_ch02", "train"), ("gPO_sFM_cAll_d12_mPO3_ch08", "test"))
IGNORED_SEQ = "gLH_sBM_cAll_d16_mLH4_ch04"
MALFORMED_SEQ = "gHO_sBM_cAll_d19_mHO2_ch03"
DISTORTED = {"c02": (-0.04, 0.01, 0.0005, -0.0003, 0.0), "c05": (-0.03, 0.0, 0.0, 0.0, 0.0),
             "c08": (0.02, -0.01, 0.0, 0.0005, 0.0)}
MISSING_DETECTION = ("c04", 5)  # (camera, frame): the detector found nobody (NaN row)
PARTIAL_DETECTION = ("c02", 7)  # face joints NaN, body joints fine
SMPL_TO_COCO_BODY = (16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8)  # COCO 5..16 from SMPL joints
# the hard variant (``hard=True``): where each camera puts the dancer, and what else goes wrong
HARD_EDGES = {"c01": "left", "c02": "right", "c03": "top", "c04": "bottom", "c05": "corner"}
HARD_TINY = "c06"  # focal length / 4: the dancer is below --min-person-px
HARD_UNSEEN = {"c07": tuple(range(10, 14)), "c08": tuple(range(0, 5)) + tuple(range(25, 30))}  # NaN detections
HARD_HALF_SIZE = "c09"  # its video is written at half the calibrated size (same aspect: rescaled)
HARD_COPY_SEQ = "gKR_sBM_cAll_d28_mKR2_ch05"  # a copy: c01 video missing, c02 cut, c09 of another aspect


def face_vertex_ids(anny_body) -> np.ndarray:
    """Vertices of the test SMPL file (= anny's mesh) nearest anny's nose/eyes/ears keypoints."""
    import torch

    from pairgen.synthetic.rig import DOF_INDEX, DOF_NAMES
    from pairgen.synthetic.smpl_body import A_POSE_ARM_DROP

    angles = np.zeros((1, len(DOF_NAMES)))
    angles[0, DOF_INDEX["l_shoulder_abd"]] = angles[0, DOF_INDEX["r_shoulder_abd"]] = A_POSE_ARM_DROP
    with torch.no_grad():
        pose = torch.as_tensor(anny_body.rig.pose_parameters(angles), dtype=torch.float32)
        out = anny_body.model(pose_parameters=pose, phenotype_kwargs={})
        kps = anny_body.kp_regressor(out)[0, anny_body.kp_index[:5]].numpy()
    verts = out["vertices"][0].numpy()
    return np.array([int(np.argmin(np.linalg.norm(verts - k, axis=1))) for k in kps])


def look_at_yup(center: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pairgen.synthetic.camera import look_at

    return look_at(center, target, up=np.array([0.0, 1.0, 0.0]))


def make_cameras(rng: np.random.Generator, width: int, height: int) -> dict[str, dict]:
    """9 cameras in a ring (metres): {name: {K, R, t, dist}} looking at the studio centre."""
    cams = {}
    f = 0.6 * width
    for i, name in enumerate(VIEWS):
        az = 2 * np.pi * i / 9 + rng.uniform(-0.1, 0.1)
        radius = rng.uniform(3.6, 4.6)
        centre = np.array([radius * np.sin(az), rng.uniform(1.0, 1.8), radius * np.cos(az)])
        target = np.array([rng.uniform(-0.1, 0.1), 0.9, rng.uniform(-0.1, 0.1)])
        R, t = look_at_yup(centre, target)
        ff = f * rng.uniform(0.97, 1.03)
        K = np.array([[ff, 0, width / 2 - 0.5 + rng.uniform(-4, 4) * width / 480],
                      [0, ff, height / 2 - 0.5 + rng.uniform(-3, 3) * width / 480], [0, 0, 1.0]])
        dist = np.array(DISTORTED.get(name, (0.0,) * 5))
        cams[name] = {"K": K, "R": R, "t": t, "dist": dist}
    return cams


def project(cam: dict, X: np.ndarray) -> np.ndarray:
    import cv2

    rvec = cv2.Rodrigues(cam["R"])[0]
    uv, _ = cv2.projectPoints(np.asarray(X, np.float64).reshape(-1, 1, 3), rvec, cam["t"].astype(np.float64),
                              cam["K"], cam["dist"])
    return uv.reshape(-1, 2)


def distortion_maps(cam: dict, width: int, height: int):
    """remap() maps: distorted output pixel -> pinhole render pixel (None without distortion)."""
    import cv2

    if not np.any(cam["dist"]):
        return None
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    pts = np.stack([xx.ravel(), yy.ravel()], 1).reshape(-1, 1, 2)
    und = cv2.undistortPoints(pts, cam["K"], cam["dist"], R=None, P=cam["K"]).reshape(-1, 2)
    return (und[:, 0].reshape(height, width).astype(np.float32), und[:, 1].reshape(height, width).astype(np.float32))


class VideoWriter:
    """H.264 mp4 at ``fps`` (frame i at time i / fps), written frame by frame; moov atom up front."""

    def __init__(self, path: Path, width: int, height: int, fps: int = 60, crf: int = 12):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w", options={"movflags": "+faststart"})
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.stream.codec_context.time_base = Fraction(1, fps)
        self.fps, self.n = fps, 0

    def write(self, img: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts, frame.time_base = self.n, Fraction(1, self.fps)
        self.n += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def write_video(path: Path, frames, fps: int = 60) -> None:
    w = VideoWriter(path, frames[0].shape[1], frames[0].shape[0], fps)
    for img in frames:
        w.write(img)
    w.close()


def _static_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A studio seen by a static camera: a cool grey wall with panels above a darker floor, plus noise."""
    from pairgen.synthetic.appearance import smooth_noise

    size = max(width, height)
    noise = smooth_noise(rng, size, octaves=4)[:height, :width, None]
    wall = np.array([150.0, 160.0, 175.0]) * rng.uniform(0.85, 1.1)
    floor = np.array([70.0, 72.0, 80.0]) * rng.uniform(0.8, 1.2)
    horizon = int(height * rng.uniform(0.55, 0.7))
    img = np.empty((height, width, 3))
    img[:horizon] = wall
    img[horizon:] = floor
    img *= 0.85 + 0.3 * noise
    period = int(rng.integers(40, 90)) * width // 480
    img[:horizon, ::max(period, 8)] *= 0.7  # panel seams
    return np.clip(img, 0, 255).astype(np.uint8)


def _camera_json(cams: dict, width: int, height: int) -> list[dict]:
    import cv2

    out = []
    for name, c in cams.items():
        out.append({"name": name, "size": [width, height], "matrix": c["K"].tolist(),
                    "distortions": c["dist"].tolist(), "rotation": cv2.Rodrigues(c["R"])[0].ravel().tolist(),
                    "translation": (100.0 * c["t"]).tolist()})  # world cm
    return out


def make_aist_fixture(root: Path, body, smpl_path: Path, *, seqs=DEFAULT_SEQS, n_frames: int = 30,
                      width: int = 640, height: int = 360, seed: int = 0, faults=(), layout: str = "root",
                      schema: str = "released", keep_masks: bool = True, hard: bool = False) -> dict:
    """Write the dataset under ``root``; return its ground truth.

    ``layout``: "root" (annotations at ROOT, videos in ROOT/videos) or "apart" (ROOT/aist_plusplus_final
    and ROOT/dance_videos, for --annotations/--videos). ``schema``: "released" keypoints2d arrays or
    the whole-body alternative ("wholebody": nested lists of 133 joints, no det_scores).
    ``faults``: see :func:`apply_faults`. Ground truth per sequence: cameras (cm, OpenCV), masks
    [9, N, H, W] bool (None with ``keep_masks=False``, for large benchmark datasets), joints3d
    [N, 17, 3] cm, split, subject. Real size for a benchmark: ``width=1920, height=1080``.

    ``hard``: the dancer crosses the frame edges (cameras HARD_EDGES: principal points moved so the
    studio centre sits at that edge), is tiny in HARD_TINY, undetected for a few frames or at both
    ends of the sequence (HARD_UNSEEN), HARD_HALF_SIZE's video has half the calibrated size, and
    HARD_COPY_SEQ (a copy of the first sequence, no re-render) lost its c01 video, has its c02 video
    cut in half and a c09 video of another aspect; plus the "malformed_keypoints" fault. Recorded
    in ``truth["hard"]``.
    """
    import cv2
    import torch

    from pairgen.synthetic import appearance
    from pairgen.synthetic.body import vertex_normals
    from pairgen.synthetic.gl import GLBodyRenderer
    from pairgen.synthetic.motions import sample_clip
    from pairgen.synthetic.render import Camera
    from pairgen.synthetic.smpl_body import SmplBody

    root = Path(root)
    anno = root / ("aist_plusplus_final" if layout == "apart" else "")
    vids = root / ("dance_videos" if layout == "apart" else "videos")
    for d in ("motions", "keypoints2d", "keypoints3d", "cameras", "splits"):
        (anno / d).mkdir(parents=True, exist_ok=True)
    vids.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    smpl = SmplBody(str(smpl_path))
    model = smpl.model
    face_ids = face_vertex_ids(body)
    cams = make_cameras(rng, width, height)
    if hard:
        hard_cameras(cams, width, height)
    cams_cm = {n: {"K": c["K"], "R": c["R"], "t": 100.0 * c["t"], "dist": c["dist"]} for n, c in cams.items()}
    (anno / "cameras" / "setting1.json").write_text(json.dumps(_camera_json(cams, width, height)))
    backgrounds = {n: _static_background(rng, width, height) for n in VIEWS}
    maps = {n: distortion_maps(c, width, height) for n, c in cams.items()}
    renderer = GLBodyRenderer(width, smpl.faces, smpl.uv, 256, height=height)
    regions = smpl.region_texture_map(256)
    truth = {"root": root, "annotations": anno, "videos": vids, "seqs": {}, "ignored": IGNORED_SEQ,
             "width": width, "height": height, "fps": 60.0, "smpl_model": Path(smpl_path)}
    mapping, split_lists = [], {"train": [], "val": [], "test": []}
    try:
        for seq, split in seqs:
            N = n_frames
            clip = sample_clip(rng)
            angles = clip.angles(np.arange(N) / 60.0 * 3.0)  # a lively dance: 3x the clip's tempo
            local = smpl.local_rotations(angles)  # [N, 24, 3, 3] SMPL frame (y up)
            phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(N) / N  # one lap of the stage
            yaw = -phase + rng.uniform(-0.5, 0.5)
            c, si = np.cos(yaw), np.sin(yaw)
            Ry = np.zeros((N, 3, 3))
            Ry[:, 0, 0], Ry[:, 0, 2], Ry[:, 1, 1], Ry[:, 2, 0], Ry[:, 2, 2] = c, si, 1.0, -si, c
            local[:, 0] = Ry @ local[:, 0]
            aa = np.stack([np.concatenate([cv2.Rodrigues(local[i, j])[0].ravel() for j in range(24)])
                           for i in range(N)]).astype(np.float32)  # [N, 72] axis-angle
            with torch.no_grad():
                out = model(global_orient=torch.as_tensor(aa[:, :3]), body_pose=torch.as_tensor(aa[:, 3:]),
                            betas=torch.zeros((N, model.num_betas)))
            verts0 = out.vertices.numpy().astype(np.float64)
            joints0 = out.joints.numpy().astype(np.float64)
            radius = 0.55
            with torch.no_grad():
                lift = -float(model().vertices[0, :, 1].min())  # SMPL's origin is the pelvis: feet onto the floor y = 0
            trans_m = np.stack([radius * np.cos(phase), np.full(N, lift), radius * np.sin(phase)], 1)
            verts = verts0 + trans_m[:, None]  # world metres
            coco = np.concatenate([verts0[:, face_ids], joints0[:, list(SMPL_TO_COCO_BODY)]], 1) + trans_m[:, None]
            joints_cm = 100.0 * coco
            texture, _ = appearance.random_outfit_texture(rng, regions)
            ambient = np.array([0.45, 0.45, 0.45])
            lights = [(np.array([0.3, -1.0, -0.4]), np.array([1.0, 1.0, 1.0]), 3.0)]
            masks = np.zeros((9, N, height, width), bool) if keep_masks else None
            sizes = {n: (width // 2, height // 2) if hard and n == HARD_HALF_SIZE else (width, height) for n in VIEWS}
            writers = {n: VideoWriter(vids / f"{seq.replace('cAll', n)}.mp4", *sizes[n]) for n in VIEWS}
            for i in range(N):
                normals = vertex_normals(verts[i], smpl.mesh_faces)
                views = [(verts[i].astype(np.float32), normals, Camera(c_["R"], c_["t"], c_["K"][0, 0], c_["K"][1, 1],
                                                                         c_["K"][0, 2], c_["K"][1, 2], width, height))
                         for c_ in cams.values()]
                rendered = renderer.render(views, texture, ambient, lights)
                for v, (name, (colour, depth)) in enumerate(zip(VIEWS, rendered)):
                    m = depth > 0
                    if maps[name] is not None:
                        mx, my = maps[name]
                        colour = cv2.remap(colour, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                        m = cv2.remap(m.astype(np.uint8), mx, my, cv2.INTER_NEAREST) > 0
                    if masks is not None:
                        masks[v, i] = m
                    frame = np.where(m[..., None], colour, backgrounds[name])
                    if sizes[name] != (width, height):
                        frame = cv2.resize(frame, sizes[name], interpolation=cv2.INTER_AREA)
                    writers[name].write(frame)
            for w in writers.values():
                w.close()
            kp2d = np.ones((9, N, 17, 3), np.float32)
            for v, name in enumerate(VIEWS):
                kp2d[v, :, :, :2] = project(cams_cm[name], joints_cm.reshape(-1, 3)).reshape(N, 17, 2)
            det = np.ones((9, N), np.float32)
            cm, fm = MISSING_DETECTION
            kp2d[VIEWS.index(cm), fm] = np.nan
            det[VIEWS.index(cm), fm] = 0.0
            cp, fp = PARTIAL_DETECTION
            kp2d[VIEWS.index(cp), fp, :5] = np.nan
            if hard:
                for cam, frames in HARD_UNSEEN.items():
                    kp2d[VIEWS.index(cam), list(frames)] = np.nan
                    det[VIEWS.index(cam), list(frames)] = 0.0
            if schema == "wholebody":
                whole = [[[np.concatenate([kp2d[v, i], np.full((116, 3), 0.5, np.float32)])]
                          if np.isfinite(kp2d[v, i]).any() else [] for i in range(N)] for v in range(9)]
                kp_data = {"keypoints2d": whole, "bboxes": [[[np.zeros(5)] for _ in range(N)] for _ in range(9)],
                           "timestamps": [np.arange(N) for _ in range(9)]}
            else:
                kp_data = {"keypoints2d": kp2d, "det_scores": det, "timestamps": np.arange(N, dtype=np.int64)}
            _dump(anno / "keypoints2d" / f"{seq}.pkl", kp_data)
            _dump(anno / "keypoints3d" / f"{seq}.pkl",
                  {"keypoints3d": (joints_cm + rng.normal(0, 0.5, joints_cm.shape)).astype(np.float32),
                   "keypoints3d_optim": joints_cm.astype(np.float32)})
            _dump(anno / "motions" / f"{seq}.pkl",
                  {"smpl_poses": aa, "smpl_trans": (100.0 * trans_m).astype(np.float32),
                   "smpl_scaling": np.array([100.0], np.float32), "smpl_loss": 0.01})
            mapping.append(f"{seq} setting1")
            split_lists[split].append(seq)
            truth["seqs"][seq] = {"split": split, "subject": seq.split("_")[3], "cameras": cams_cm, "masks": masks,
                                  "joints3d": joints_cm, "n_frames": N}
    finally:
        renderer.close()
    # an ignored sequence: complete annotations (a copy), listed in ignore_list.txt
    first = seqs[0][0]
    for d in ("keypoints2d", "keypoints3d", "motions"):
        shutil.copy(anno / d / f"{first}.pkl", anno / d / f"{IGNORED_SEQ}.pkl")
    mapping.append(f"{IGNORED_SEQ} setting1")
    split_lists["train"].append(IGNORED_SEQ)
    (anno / "cameras" / "mapping.txt").write_text("\n".join(mapping) + "\n")
    for split, names in split_lists.items():
        (anno / "splits" / f"pose_{split}.txt").write_text("".join(n + "\n" for n in names))
    (anno / "ignore_list.txt").write_text(IGNORED_SEQ + "\n")
    apply_faults(truth, faults)
    if hard:
        make_hard(truth)
    return truth


def hard_cameras(cams: dict, width: int, height: int) -> None:
    """Move the principal points of HARD_EDGES so that a person at the studio centre crosses that
    edge (its centre about a third of its size inside); zoom HARD_TINY out 4x and HARD_HALF_SIZE in 2x."""
    for name, edge in HARD_EDGES.items():
        c = cams[name]
        pts = np.array([[x, y, z] for x in (-0.3, 0.3) for y in (0.0, 1.75) for z in (-0.3, 0.3)])
        uv = project(c, pts)
        (u0, v0), (u1, v1) = uv.min(0), uv.max(0)
        cu, cv_, bw, bh = (u0 + u1) / 2, (v0 + v1) / 2, u1 - u0, v1 - v0
        want_u = {"left": 0.35 * bw, "right": width - 0.35 * bw}.get(edge, cu)
        want_v = {"top": 0.25 * bh, "bottom": height - 0.25 * bh}.get(edge, cv_)
        if edge == "corner":
            want_u, want_v = 0.45 * bw, 0.45 * bh
        c["K"] = c["K"].copy()
        c["K"][0, 2] += want_u - cu
        c["K"][1, 2] += want_v - cv_
    for name, zoom in ((HARD_TINY, 0.25), (HARD_HALF_SIZE, 2.0)):  # the half-size video keeps a person of 48+ px
        c = cams[name]
        c["K"] = c["K"].copy()
        c["K"][0, 0] *= zoom
        c["K"][1, 1] *= zoom


def make_hard(truth: dict) -> None:
    """The file problems of the hard variant (see :func:`make_aist_fixture`)."""
    first = next(iter(truth["seqs"]))
    add_sequence_copy(truth, first, HARD_COPY_SEQ)
    vids = truth["videos"]
    (vids / f"{HARD_COPY_SEQ.replace('cAll', 'c01')}.mp4").unlink()
    p = vids / f"{HARD_COPY_SEQ.replace('cAll', 'c02')}.mp4"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    h = truth["height"]
    write_video(vids / f"{HARD_COPY_SEQ.replace('cAll', 'c09')}.mp4", [np.zeros((h, h, 3), np.uint8)] * 3)
    apply_faults(truth, ("malformed_keypoints",))
    truth["hard"] = {"edges": dict(HARD_EDGES), "tiny": HARD_TINY, "unseen": dict(HARD_UNSEEN),
                     "half_size": HARD_HALF_SIZE, "copy": HARD_COPY_SEQ, "missing": (HARD_COPY_SEQ, "c01"),
                     "truncated": (HARD_COPY_SEQ, "c02"), "other_aspect": (HARD_COPY_SEQ, "c09")}


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def add_sequence_copy(truth: dict, src: str, dst: str, split: str = "train") -> None:
    """Register ``dst`` as a copy of ``src`` (annotations, mapping, split, videos)."""
    anno, vids = truth["annotations"], truth["videos"]
    for d in ("keypoints2d", "keypoints3d", "motions"):
        shutil.copy(anno / d / f"{src}.pkl", anno / d / f"{dst}.pkl")
    with open(anno / "cameras" / "mapping.txt", "a") as f:
        f.write(f"{dst} setting1\n")
    with open(anno / "splits" / f"pose_{split}.txt", "a") as f:
        f.write(dst + "\n")
    for name in VIEWS:
        p = vids / f"{src.replace('cAll', name)}.mp4"
        if p.exists():
            shutil.copy(p, vids / f"{dst.replace('cAll', name)}.mp4")
    truth["seqs"][dst] = dict(truth["seqs"][src], split=split, subject=dst.split("_")[3])


def apply_faults(truth: dict, faults) -> dict:
    """Inject faults; records what was done in ``truth["faults"]``.

    - "missing_video": the first sequence's c03 video is deleted (that camera is skipped).
    - "truncated_video": the second sequence's c06 video is cut in half.
    - "malformed_keypoints": a new sequence (a copy of the first) gets a garbage keypoints2d pickle.
    """
    done = truth.setdefault("faults", {})
    names = list(truth["seqs"])
    vids, anno = truth["videos"], truth["annotations"]
    for fault in faults:
        if fault == "missing_video":
            p = vids / f"{names[0].replace('cAll', 'c03')}.mp4"
            p.unlink()
            done[fault] = (names[0], "c03")
        elif fault == "truncated_video":
            p = vids / f"{names[1].replace('cAll', 'c06')}.mp4"
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 2])
            done[fault] = (names[1], "c06")
        elif fault == "malformed_keypoints":
            add_sequence_copy(truth, names[0], MALFORMED_SEQ)
            (anno / "keypoints2d" / f"{MALFORMED_SEQ}.pkl").write_bytes(b"\x80\x04garbage, not a pickle" * 10)
            truth["seqs"].pop(MALFORMED_SEQ)
            done[fault] = (MALFORMED_SEQ, None)
        else:
            raise ValueError(f"unknown fault {fault!r}")
    return truth
