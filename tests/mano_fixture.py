"""MANO-format hand model files for the tests, and MANO fits of the InterHand fixture's hands.

MANO files are licensed, so the tests make their own from anny's hands: the vertices whose
dominant bone belongs to a hand (wrist, metacarpals, fingers), in anny's rest pose at phenotype
0.5, with MANO's 16-joint tree (wrist; index, middle, pinky, ring, thumb, 3 joints each), a joint
regressor averaging the vertices nearest each joint, skinning weights gathered from anny's bones,
and a shape basis spanning the fixture's subjects: shape direction k = subject k's rest hand minus
the template (anny's phenotypes act piecewise-linearly, so no small linear basis reproduces them;
a subject is then exactly betas = one-hot k). The pickles hold exactly the keys smplx's MANO
reads, as plain numpy arrays (like the chumpy-free releases).

The fixture's hands move only at the wrist (fingers keep their rest pose), so a frame's fit is a
global rotation (the wrist bone's rotation from rest), zero finger pose, the subject's betas and
the translation that puts the wrist where anny put it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

# MANO joint order after the wrist: index, middle, pinky, ring, thumb -> anny finger numbers
MANO_FINGERS = (2, 3, 5, 4, 1)
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
SIDES = {"right": ".R", "left": ".L"}


def _rest(body, phenotypes: np.ndarray) -> dict:
    import torch

    from pairgen.synthetic.body import PHENOTYPES

    labels = body.model.bone_labels
    pheno = {n: torch.full((1,), float(phenotypes[i])) for i, n in enumerate(PHENOTYPES)}
    with torch.no_grad():
        out = body.model(pose_parameters=torch.eye(4).repeat(1, len(labels), 1, 1), phenotype_kwargs=pheno)
    return {"vertices": out["rest_vertices"][0].numpy().astype(np.float64),  # the skinning's rest mesh
            "heads": out["rest_bone_poses"][0, :, :3, 3].numpy().astype(np.float64)}


def make_mano_files(directory: Path, body, subjects: list[np.ndarray]) -> dict:
    """Write MANO_RIGHT.pkl and MANO_LEFT.pkl for up to 10 subjects (anny phenotype vectors);
    returns {hand: model arrays} for :func:`mano_fit`."""
    if len(subjects) > 10:
        raise ValueError("MANO has 10 shape coefficients: at most 10 subjects")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    labels = list(body.model.bone_labels)
    idx = body.model.vertex_bone_indices.numpy()
    bw = body.model.vertex_bone_weights.numpy()
    dominant = idx[np.arange(len(idx)), bw.argmax(1)]
    base = _rest(body, np.full(6, 0.5))
    shaped = [_rest(body, np.asarray(p, np.float64))["vertices"] for p in subjects]
    models = {}
    for hand, sfx in SIDES.items():
        joint_bones = [labels.index(f"wrist{sfx}")] + [labels.index(f"finger{f}-{k}{sfx}")
                                                      for f in MANO_FINGERS for k in (1, 2, 3)]
        hand_bones = [i for i, b in enumerate(labels) if b.endswith(sfx) and b.startswith(("finger", "metacarpal", "wrist"))]
        keep = np.nonzero(np.isin(dominant, hand_bones))[0]
        remap = np.full(len(dominant), -1)
        remap[keep] = np.arange(len(keep))
        faces = remap[body.mesh_faces]
        faces = faces[(faces >= 0).all(1)]
        verts = base["vertices"][keep]
        shapedirs = np.zeros((len(keep), 3, 10))
        for k, v in enumerate(shaped):
            shapedirs[:, :, k] = v[keep] - verts
        jreg = np.zeros((16, len(keep)))
        for j, b in enumerate(joint_bones):
            d = np.linalg.norm(verts - base["heads"][b], axis=1)
            near = np.argsort(d)[:12]
            w = 1.0 / (d[near] + 1e-3)
            jreg[j, near] = w / w.sum()
        # skinning: each anny bone's weight goes to the MANO joint of the same finger segment; the
        # wrist, metacarpals and any other bone go to the wrist (joint 0)
        bone_to_joint = np.zeros(len(labels), int)
        for j, b in enumerate(joint_bones):
            bone_to_joint[b] = j
        weights = np.zeros((len(keep), 16))
        for c in range(idx.shape[1]):
            np.add.at(weights, (np.arange(len(keep)), bone_to_joint[idx[keep, c]]), bw[keep, c])
        weights /= weights.sum(1, keepdims=True)
        data = {
            "v_template": verts, "shapedirs": shapedirs, "posedirs": np.zeros((len(keep), 3, 135)),
            "J_regressor": jreg, "weights": weights, "f": faces.astype(np.int64),
            "kintree_table": np.array([[p if p >= 0 else 4294967295 for p in PARENTS], list(range(16))], np.int64),
            "hands_components": np.eye(45), "hands_mean": np.zeros(45),
        }
        (directory / f"MANO_{hand.upper()}.pkl").write_bytes(pickle.dumps(data, protocol=2))
        models[hand] = {"v_template": verts, "shapedirs": shapedirs, "J_regressor": jreg,
                        "wrist_bone": joint_bones[0], "vertices": keep}
    return models


def _axis_angle(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def mano_fit(model: dict, subject: int, rest_pose: np.ndarray, posed_pose: np.ndarray) -> dict:
    """MANO parameters (pose 48 world axis-angle, shape 10, trans in metres) reproducing the hand
    of subject ``subject`` (index into make_mano_files' list) that anny moved rigidly with its
    wrist bone from ``rest_pose`` to ``posed_pose`` ([4, 4] bone frames of the subject's body)."""
    betas = np.zeros(10)
    betas[subject] = 1.0
    shaped = model["v_template"] + model["shapedirs"] @ betas
    j0 = model["J_regressor"][0] @ shaped
    R = posed_pose[:3, :3] @ rest_pose[:3, :3].T
    h_rest, h_posed = rest_pose[:3, 3], posed_pose[:3, 3]
    # smplx: v' = R (v - J0) + J0 + trans; anny: v' = R (v - h_rest) + h_posed
    trans = h_posed - j0 + R @ (j0 - h_rest)
    pose = np.zeros(48)
    pose[:3] = _axis_angle(R)
    return {"pose": pose.round(7).tolist(), "shape": betas.round(7).tolist(), "trans": trans.round(7).tolist()}
