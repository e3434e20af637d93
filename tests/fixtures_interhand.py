"""A tiny InterHand2.6M in the real on-disk layout, rendered from the anny body.

Two train units (Capture0 and Capture1, different bodies and motions, frame ids stepping by 18
as in the 5 fps train release) and one val unit (Capture0, frame ids stepping by 6 as in the
5 fps val/test release); consecutive frames are 0.2 s apart in all. Each unit is seen by 5
static close-up cameras (0.45-0.6 m from the hands; 512x334, and one portrait 334x512 camera
"400412" like the real dataset's rotated camera) over a procedural static background per camera.

Hand joints (21 per hand, InterHand order: thumb, index, middle, ring, pinky, each tip first,
then the wrist) come from anny's posed bone heads: wrist = wrist bone head, the finger joints =
heads of finger<k>-1..3 and the tip = the vertex skinned to finger<k>-3 farthest from its head.
The GT hand mask of an image = visible pixels of the vertices skinned to that hand's bones
(a second render with an id texture). Annotations are in mm (world = metres * 1000).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import hard_cases

CAMS = ("400262", "400263", "400264", "400265", "400412")
PORTRAIT = "400412"
W, H = 512, 334
HAND_BONES = {"right": ".R", "left": ".L"}
# the hard variant (``hard=True``: the first train unit only): camera -> where its principal point puts the
# right hand (the left one lands elsewhere), a camera added that sees the hands tiny, hands not annotated
# in some frames (frame indices), damaged images ((camera, frame index))
HARD_EDGES = {"400262": "left", "400263": "right", "400264": "top", "400265": "bottom", "400412": "corner"}
HARD_TINY = "400300"  # a copy of camera 400262 zoomed out 10x
HARD_PLAIN = "400301"  # a copy of camera 400263 as it was (the hands whole in the picture)
HARD_UNLABELLED = {"left": (0, 1, 6, 7), "right": (4,)}  # the left hand's track starts late and ends early
HARD_MISSING, HARD_CORRUPT, HARD_HALF_SIZE = ("400264", 6), ("400265", 3), ("400301", 5)


@dataclass
class UnitTruth:
    name: str
    split: str
    capture: int
    seq: str
    subject: int
    frames: list[int]
    times: dict[int, float]  # frame id -> seconds
    cameras: dict[str, object]  # cam -> pairgen.synthetic.render.Camera (metres)
    joints: dict[int, dict[str, np.ndarray]]  # frame -> hand -> [21, 3] world mm
    masks: dict[tuple[str, str, int], np.ndarray] = field(default_factory=dict)  # (hand, cam, frame) -> bool HxW
    visible: dict[tuple[str, str, int], int] = field(default_factory=dict)  # joints inside the image


def _hand_rig(body):
    """Bone indices of the 21 joints per hand and the tip vertex of each finger (rest pose)."""
    import torch

    labels = list(body.model.bone_labels)
    rest = body.model(pose_parameters=torch.eye(4).repeat(1, len(labels), 1, 1), phenotype_kwargs={})
    heads = rest["bone_poses"][0, :, :3, 3].numpy()
    verts = rest["vertices"][0].numpy()
    idx = body.model.vertex_bone_indices.numpy()
    w = body.model.vertex_bone_weights.numpy()
    dominant = idx[np.arange(len(idx)), w.argmax(1)]
    rig = {}
    for hand, sfx in HAND_BONES.items():
        bones, tips = [], []
        for f in range(1, 6):
            chain = [labels.index(f"finger{f}-{k}{sfx}") for k in (3, 2, 1)]  # DIP/IP, PIP/MCP, MCP/CMC
            last = chain[0]
            cand = np.nonzero(dominant == last)[0]
            d = heads[last] - heads[chain[1]]
            tip = cand[np.argmax((verts[cand] - heads[last]) @ d)]
            bones.append(chain)
            tips.append(int(tip))
        hand_bones = [i for i, b in enumerate(labels)
                      if b.endswith(sfx) and b.startswith(("finger", "metacarpal", "wrist"))]
        rig[hand] = {"chains": bones, "tips": tips, "wrist": labels.index(f"wrist{sfx}"),
                     "vertices": np.isin(dominant, hand_bones)}
    return rig


def _joints21(rig_hand, heads: np.ndarray, verts: np.ndarray) -> np.ndarray:
    out = []
    for chain, tip in zip(rig_hand["chains"], rig_hand["tips"]):
        out.append(verts[tip])
        out.extend(heads[b] for b in chain)
    out.append(heads[rig_hand["wrist"]])
    return np.array(out, np.float64)


def _motion(n: int, phase: float, rng) -> np.ndarray:
    from pairgen.synthetic.rig import DOF_INDEX as D

    t = np.arange(n) / 5.0
    w = 2 * np.pi / rng.uniform(1.4, 2.2)
    ang = np.zeros((n, 28))
    for k, s in enumerate("lr"):
        p = phase + 1.3 * k
        ang[:, D[f"{s}_shoulder_flex"]] = 0.7 + 0.2 * np.sin(w * t + p)
        ang[:, D[f"{s}_elbow"]] = 1.05 + 0.25 * np.sin(w * t + p + 1.0)
        ang[:, D[f"{s}_shoulder_abd"]] = -0.4 + 0.1 * np.sin(w * t + p + 2.0)
        # the rig twists both upper arms about their own bone axis: mirror the sign for the right arm
        ang[:, D[f"{s}_shoulder_twist"]] = (1 if s == "l" else -1) * (0.6 + 0.15 * np.sin(w * t + p + 0.5))
        ang[:, D[f"{s}_wrist"]] = 0.35 * np.sin(w * t + p + 1.5)
    ang[:, D["spine_twist"]] = 0.1 * np.sin(w * t)
    return ang


def _pose(body, phenotypes: np.ndarray, angles: np.ndarray):
    import torch

    from pairgen.synthetic.body import PHENOTYPES

    B = len(angles)
    pheno = {n: torch.full((B,), float(phenotypes[i])) for i, n in enumerate(PHENOTYPES)}
    pose = torch.as_tensor(body.rig.pose_parameters(angles), dtype=torch.float32)
    with torch.no_grad():
        out = body.model(pose_parameters=pose, phenotype_kwargs=pheno)
    poses = out["bone_poses"].numpy().astype(np.float64)
    rest = out["rest_bone_poses"].expand(B, -1, -1, -1).numpy().astype(np.float64)
    return out["vertices"].numpy().astype(np.float64), poses[:, :, :3, 3], poses, rest


def _cameras(rng, target: np.ndarray, pts: np.ndarray) -> dict:
    from pairgen.synthetic.camera import look_at
    from pairgen.synthetic.render import Camera

    cams = {}
    azs = np.radians([-55, -20, 15, 50, 0]) + rng.uniform(-0.1, 0.1, 5)
    els = np.radians([30, 50, 25, 40, 65]) + rng.uniform(-0.05, 0.05, 5)
    for cam, az, el in zip(CAMS, azs, els):
        dist = rng.uniform(0.45, 0.6)
        d = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
        center = target + dist * d
        R, t = look_at(center, target)
        w, h = (H, W) if cam == PORTRAIT else (W, H)
        pc = pts @ R.T + t
        xn, yn = pc[:, 0] / pc[:, 2], pc[:, 1] / pc[:, 2]
        f = 0.85 * min(w / np.ptp(xn), h / np.ptp(yn))
        cx = w / 2 - f * (xn.min() + xn.max()) / 2
        cy = h / 2 - f * (yn.min() + yn.max()) / 2
        cams[cam] = Camera(R=R, t=t, fx=f, fy=f, cx=cx, cy=cy, width=w, height=h)
    return cams


def _background(rng, w: int, h: int) -> np.ndarray:
    from pairgen.synthetic.background import procedural_background

    return procedural_background(rng, max(w, h))[:h, :w].copy()


class _Renderers:
    def __init__(self, body):
        from pairgen.synthetic import appearance
        from pairgen.synthetic.gl import GLBodyRenderer

        self.body = body
        self.gl = {(W, H): GLBodyRenderer(W, body.faces, body.uv, 256, height=H),
                   (H, W): GLBodyRenderer(H, body.faces, body.uv, 256, height=W)}
        self.regions = appearance.region_map(body.uv, body.faces, body.regions, 256)

    def id_texture(self, rig) -> np.ndarray:
        from pairgen.synthetic import appearance

        labels = np.zeros(len(self.body.split_index), np.int64)
        labels[rig["right"]["vertices"][self.body.split_index]] = 1
        labels[rig["left"]["vertices"][self.body.split_index]] = 2
        ids = appearance.region_map(self.body.uv, self.body.faces, labels, 256)
        tex = np.zeros((256, 256, 3), np.uint8)
        tex[ids == 1, 0] = 255
        tex[ids == 2, 1] = 255
        return tex

    def close(self):
        for r in self.gl.values():
            r.close()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _skeleton_txt() -> str:
    names = [f"{f}_{k}" for f in ("Thumb", "Index", "Middle", "Ring", "Pinky") for k in (4, 3, 2, 1)] + ["Wrist"]
    lines = ["# joint_name joint_id joint_parent_id"]
    for off, side in ((0, "R"), (21, "L")):
        for i, n in enumerate(names):
            parent = -1 if n == "Wrist" else (off + 20 if n.endswith("_1") else off + i + 1)
            lines.append(f"{side}_{n} {off + i} {parent}")
    return "\n".join(lines) + "\n"


def make_interhand_fixture(root, body, frames: int = 8, val_frames: int = 6, faults=(), seed: int = 0,
                           quality: int = 92, mano_dir: Path | None = None, hard: bool = False) -> dict:
    """Write the fixture under ``root``; return {"units": {name: UnitTruth}, "faults": {...}}.

    mano_dir: also write test MANO model files there (:mod:`mano_fixture`, a shape basis spanning
    the units' bodies) and the per-split ``InterHand2.6M_<split>_MANO_NeuralAnnot.json`` with each
    frame's fit of both hands.

    faults: "corrupt_jpeg" (garbage bytes in one train image), "missing_camera" (one camera
    folder of train/Capture0 removed), "bad_camera" (Capture1's entry of the train _camera.json
    malformed), "bad_joint3d" (the val _joint_3d.json truncated).

    hard: only the first train unit, whose cameras HARD_EDGES see the right hand across a frame
    edge or a corner (principal points moved), plus camera HARD_TINY that sees both hands tiny and
    HARD_PLAIN, an unmoved copy of the second camera;
    a hand is not annotated in the frames HARD_UNLABELLED (joint_valid 0, hand_type the other
    hand); one image is missing, one is garbage, one is written at half size. Recorded in the
    returned "hard".
    """
    import cv2
    import torch  # noqa: F401  (anny)

    from pairgen.synthetic import appearance

    root = Path(root)
    rng = np.random.default_rng(seed)
    rig = _hand_rig(body)
    rend = _Renderers(body)
    id_tex = rend.id_texture(rig)
    specs = [("train", 0, "0000_fixture_clap", 1, frames, 18, 10008),
             ("train", 1, "0001_fixture_wave", 2, frames, 18, 20016),
             ("val", 0, "ROM01_fixture_interaction", 3, val_frames, 6, 30000)]
    if hard:
        specs = specs[:1]
    data = {s: {"images": [], "annotations": [], "categories": [{"id": 1, "name": "hand"}]} for s in ("train", "val")}
    camera_json: dict[str, dict] = {"train": {}, "val": {}}
    joint_json: dict[str, dict] = {"train": {}, "val": {}}
    mano_units = []  # (split, capture, frame ids, phenotypes, bone poses, rest bone poses)
    truth: dict[str, UnitTruth] = {}
    try:
        for split, capture, seq, subject, n, step, start in specs:
            pheno = rng.uniform(0.35, 0.75, 6)
            angles = _motion(n, rng.uniform(0, 2 * np.pi), rng)
            verts, heads, poses, rest_poses = _pose(body, pheno, angles)
            fids = [start + step * i for i in range(n)]
            mano_units.append((split, capture, fids, pheno, poses, rest_poses))
            joints = {fr: {h: _joints21(rig[h], heads[i], verts[i]) for h in ("right", "left")}
                      for i, fr in enumerate(fids)}
            hand_pts = np.concatenate([verts[:, rig[h]["vertices"]].reshape(-1, 3) for h in ("right", "left")])
            target = hand_pts.mean(0)
            cams = _cameras(rng, target, hand_pts[::7])
            if hard:
                cams[HARD_PLAIN] = cams[CAMS[1]]
                right = verts[:, rig["right"]["vertices"]].reshape(-1, 3)[::7]
                for c, edge in HARD_EDGES.items():
                    uv, _ = cams[c].project(right)
                    box = np.array([*uv.min(0), *uv.max(0)])
                    cams[c] = hard_cases.moved(cams[c], edge, box, cams[c].width, cams[c].height)
                base = cams[CAMS[0]]
                cams[HARD_TINY] = type(base)(R=base.R, t=base.t, fx=base.fx / 10, fy=base.fy / 10, cx=base.cx,
                                             cy=base.cy, width=base.width, height=base.height)
            bgs = {c: _background(rng, cams[c].width, cams[c].height) for c in CAMS}
            if hard:
                bgs[HARD_TINY], bgs[HARD_PLAIN] = bgs[CAMS[0]], bgs[CAMS[1]]
            texture, _ = appearance.random_outfit_texture(rng, rend.regions)
            ambient, lights = appearance.random_lighting(rng)
            name = f"{split}/Capture{capture}/{seq}"
            ut = UnitTruth(name, split, capture, seq, subject, fids, {fr: i / 5.0 for i, fr in enumerate(fids)},
                           cams, {fr: {h: j * 1000.0 for h, j in jj.items()} for fr, jj in joints.items()})
            cap_cams = camera_json[split].setdefault(str(capture),
                                                     {"campos": {}, "camrot": {}, "focal": {}, "princpt": {}})
            for c, cm in cams.items():
                cap_cams["campos"][c] = (cm.center * 1000.0).tolist()
                cap_cams["camrot"][c] = cm.R.tolist()
                cap_cams["focal"][c] = [cm.fx, cm.fy]
                cap_cams["princpt"][c] = [cm.cx, cm.cy]
            for i, fr in enumerate(fids):
                X = np.concatenate([ut.joints[fr]["right"], ut.joints[fr]["left"]])
                joint_json[split].setdefault(str(capture), {})[str(fr)] = {
                    "world_coord": X.round(3).tolist(), "joint_valid": [1] * 42,
                    "hand_type": "interacting", "hand_type_valid": 1}

                v = verts[i]
                vs, nrm = body.surface(v)
                for c, cm in cams.items():
                    r = rend.gl[(cm.width, cm.height)]
                    colour, depth = r.render([(vs, nrm, cm)], texture, ambient, lights)[0]
                    ids, _ = r.render([(vs, nrm, cm)], id_tex, (1.0, 1.0, 1.0), [])[0]
                    fg = depth > 0
                    img = np.where(fg[..., None], colour, bgs[c])
                    rel = f"Capture{capture}/{seq}/cam{c}/image{fr}.jpg"
                    path = root / "images" / split / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
                    uv, z = cm.project(X / 1000.0)
                    inside = ((z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cm.width - 1)
                              & (uv[:, 1] >= 0) & (uv[:, 1] <= cm.height - 1))
                    for hi, h in enumerate(("right", "left")):
                        ut.masks[(h, c, fr)] = fg & (ids[..., hi] > 127)
                        ut.visible[(h, c, fr)] = int(inside[21 * hi:21 * hi + 21].sum())
                    if hard:
                        for hi, h in enumerate(("right", "left")):
                            if i in HARD_UNLABELLED[h]:
                                inside[21 * hi:21 * hi + 21] = False
                    nr, nl = inside[:21].sum(), inside[21:].sum()
                    htype = "interacting" if nr and nl else ("right" if nr else "left")
                    image_id = len(data[split]["images"])
                    data[split]["images"].append({
                        "id": image_id, "file_name": rel, "width": cm.width, "height": cm.height,
                        "capture": capture, "subject": subject, "seq_name": seq, "camera": c, "frame_idx": fr})
                    q = uv[inside]
                    bbox = ([float(q[:, 0].min()), float(q[:, 1].min()), float(np.ptp(q[:, 0])), float(np.ptp(q[:, 1]))]
                            if len(q) else [0.0, 0.0, 0.0, 0.0])
                    data[split]["annotations"].append({
                        "id": image_id, "image_id": image_id, "bbox": bbox, "joint_valid": inside.astype(int).tolist(),
                        "hand_type": htype, "hand_type_valid": 1})
            truth[name] = ut
    finally:
        rend.close()

    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "skeleton.txt").write_text(_skeleton_txt())
    (ann / "subject.txt").write_text("1 fixture_s01 male\n2 fixture_s02 female\n3 fixture_s03 male\n")
    for split in ("train", "val"):
        _write_json(ann / split / f"InterHand2.6M_{split}_data.json", data[split])
        _write_json(ann / split / f"InterHand2.6M_{split}_camera.json", camera_json[split])
        _write_json(ann / split / f"InterHand2.6M_{split}_joint_3d.json", joint_json[split])
    if mano_dir is not None:
        from mano_fixture import make_mano_files, mano_fit

        models = make_mano_files(Path(mano_dir), body, [u[3] for u in mano_units])
        mano_json: dict[str, dict] = {"train": {}, "val": {}}
        for k, (split, capture, fids, _, poses, rest_poses) in enumerate(mano_units):
            for i, fr in enumerate(fids):
                mano_json[split].setdefault(str(capture), {})[str(fr)] = {
                    h: mano_fit(m, k, rest_poses[i, m["wrist_bone"]], poses[i, m["wrist_bone"]])
                    for h, m in models.items()}
        for split in ("train", "val"):
            _write_json(ann / split / f"InterHand2.6M_{split}_MANO_NeuralAnnot.json", mano_json[split])

    applied = {}
    if hard:
        u = next(iter(truth.values()))

        def image(cam_frame):
            c, i = cam_frame
            return root / "images" / u.split / f"Capture{u.capture}/{u.seq}/cam{c}/image{u.frames[i]}.jpg"

        image(HARD_MISSING).unlink()
        hard_cases.write_garbage(image(HARD_CORRUPT))
        hard_cases.write_half_size(image(HARD_HALF_SIZE))
        damaged = (("missing", HARD_MISSING), ("corrupt", HARD_CORRUPT), ("half_size", HARD_HALF_SIZE))
        applied["hard"] = {"unit": u.name, "edges": dict(HARD_EDGES), "tiny": HARD_TINY,
                           "unlabelled": {h: [u.frames[i] for i in fi] for h, fi in HARD_UNLABELLED.items()},
                           **{k: (c, u.frames[i]) for k, (c, i) in damaged}}
    if "corrupt_jpeg" in faults:
        u = truth["train/Capture0/0000_fixture_clap"]
        p = root / "images" / "train" / f"Capture0/{u.seq}/cam{CAMS[0]}/image{u.frames[2]}.jpg"
        p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)))
        applied["corrupt_jpeg"] = str(p)
    if "missing_camera" in faults:
        u = truth["train/Capture0/0000_fixture_clap"]
        d = root / "images" / "train" / f"Capture0/{u.seq}/cam{CAMS[3]}"
        shutil.rmtree(d)
        applied["missing_camera"] = (u.name, CAMS[3])
    if "bad_camera" in faults:
        p = ann / "train" / "InterHand2.6M_train_camera.json"
        cj = json.loads(p.read_text())
        cj["1"]["camrot"][CAMS[1]] = [[1.0, 0.0], [0.0, 1.0]]
        p.write_text(json.dumps(cj))
        applied["bad_camera"] = "train/Capture1/0001_fixture_wave"
    if "bad_joint3d" in faults:
        p = ann / "val" / "InterHand2.6M_val_joint_3d.json"
        txt = p.read_text()
        p.write_text(txt[: len(txt) // 2])
        applied["bad_joint3d"] = "val/Capture0/ROM01_fixture_interaction"
    return {"units": truth, "faults": applied, "hard": applied.pop("hard", None)}
