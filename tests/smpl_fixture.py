"""Write a small SMPL-format model file (and AMASS-format motions) for the tests.

SMPL files are licensed, so the tests make their own: anny's mesh lifted into a T-pose, in SMPL's
frame (+Y up, facing +Z), with SMPL's 24-joint tree, a joint regressor averaging the vertices
near each joint, and skinning weights gathered from anny's bones. The pickle holds exactly the
keys smplx reads (plain numpy arrays, like the chumpy-free SMPL releases).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pairgen.synthetic.rig import DOF_INDEX, DOF_NAMES
from pairgen.synthetic.smpl_body import PARENTS, A_POSE_ARM_DROP

# SMPL joint -> anny bone whose head is the joint, and anny bone prefixes skinned to it
JOINTS = [
    ("root", ("root", "pelvis")), ("upperleg01.L", ("upperleg",)), ("upperleg01.R", ()), ("spine04", ("spine05", "spine04")),
    ("lowerleg01.L", ("lowerleg",)), ("lowerleg01.R", ()), ("spine03", ("spine03",)), ("foot.L", ("foot",)),
    ("foot.R", ()), ("spine02", ("spine02", "spine01")), ("toe2-1.L", ("toe",)), ("toe2-1.R", ()),
    ("neck01", ("neck",)), ("clavicle.L", ("clavicle", "shoulder01")), ("clavicle.R", ()), ("head", ("head", "eye")),
    ("upperarm01.L", ("upperarm",)), ("upperarm01.R", ()), ("lowerarm01.L", ("lowerarm",)), ("lowerarm01.R", ()),
    ("wrist.L", ("wrist",)), ("wrist.R", ()), ("finger3-1.L", ("finger", "metacarpal")), ("finger3-1.R", ()),
]
TO_SMPL = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # world (+Z up, -Y front) -> SMPL


def make_smpl_file(path: Path, anny_body) -> Path:
    import torch

    model = anny_body.model
    angles = np.zeros((1, len(DOF_NAMES)))
    angles[0, DOF_INDEX["l_shoulder_abd"]] = angles[0, DOF_INDEX["r_shoulder_abd"]] = A_POSE_ARM_DROP
    pose = torch.as_tensor(anny_body.rig.pose_parameters(angles), dtype=torch.float32)
    out = model(pose_parameters=pose, phenotype_kwargs={})
    verts = out["vertices"][0].numpy().astype(np.float64)
    heads = out["bone_poses"][0, :, :3, 3].numpy()  # posed bone heads (translation of each bone's frame)
    labels = list(model.bone_labels)
    V = len(verts)
    jreg = np.zeros((24, V))
    joint_pos = []
    for j, (bone, _) in enumerate(JOINTS):
        p = heads[labels.index(bone)]
        d = np.linalg.norm(verts - p, axis=1)
        near = np.argsort(d)[:30]
        w = 1.0 / (d[near] + 1e-3)
        jreg[j, near] = w / w.sum()
        joint_pos.append(jreg[j] @ verts)
    # skinning: anny bone weights summed into the SMPL joint owning the bone (by name prefix and side)
    bone_to_joint = np.zeros(len(labels), int)
    for b, name in enumerate(labels):
        base, _, side = name.partition(".")
        best = 0
        for j, (jb, prefixes) in enumerate(JOINTS):
            jside = jb.partition(".")[2]
            pre = prefixes or JOINTS[j - 1][1]
            if any(base.startswith(p) for p in pre) and (not side or not jside or side == jside):
                best = j
                break
        bone_to_joint[b] = best
    idx = model.vertex_bone_indices.numpy()
    bw = model.vertex_bone_weights.numpy()
    weights = np.zeros((V, 24))
    for k in range(idx.shape[1]):
        np.add.at(weights, (np.arange(V), bone_to_joint[idx[:, k]]), bw[:, k])
    weights /= weights.sum(1, keepdims=True)
    kintree = np.array([[p if p >= 0 else 4294967295 for p in PARENTS], list(range(24))], dtype=np.int64)
    data = {
        "v_template": (verts @ TO_SMPL.T).astype(np.float64),
        "shapedirs": np.zeros((V, 3, 10)),
        "posedirs": np.zeros((V, 3, 207)),
        "J_regressor": jreg,
        "weights": weights,
        "kintree_table": kintree,
        "f": anny_body.mesh_faces.astype(np.int64),
    }
    # small, smooth shape basis so betas change the body (stretch height, widen hips/shoulders)
    vs = data["v_template"]
    data["shapedirs"][:, 1, 0] = 0.05 * vs[:, 1]
    data["shapedirs"][:, 0, 1] = 0.04 * vs[:, 0]
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


def make_amass_files(directory: Path, n: int = 2, frames: int = 120, seed: int = 0) -> Path:
    """AMASS SMPL+H-format npz files with smooth walking-like motions (+ one shape-only file)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t = np.arange(frames) / 60.0
        poses = np.zeros((frames, 156), np.float32)
        poses[:, 0] = np.pi / 2  # root: SMPL +Y up -> AMASS +Z up
        f = rng.uniform(0.8, 1.4)
        poses[:, 3 + 0] = 0.5 * np.sin(2 * np.pi * f * t)   # left hip flexion (x)
        poses[:, 3 + 3] = -0.5 * np.sin(2 * np.pi * f * t)  # right hip
        poses[:, 3 + 9] = 0.8 * np.clip(np.sin(2 * np.pi * f * t + 1), 0, None)  # left knee
        poses[:, 3 + 12] = 0.8 * np.clip(-np.sin(2 * np.pi * f * t + 1), 0, None)  # right knee
        poses[:, 3 + 15 * 3 + 2] = -1.1  # left shoulder down
        poses[:, 3 + 16 * 3 + 2] = 1.1
        np.savez(directory / f"walk{i}_poses.npz", poses=poses, trans=np.zeros((frames, 3)), gender="neutral",
                 mocap_framerate=60.0, betas=np.zeros(16), dmpls=np.zeros((frames, 8)))
    np.savez(directory / "shape.npz", betas=np.zeros(16), gender="neutral")
    return directory
