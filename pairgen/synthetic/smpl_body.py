"""SMPL body (the user's licensed SMPL-format .pkl) through smplx, in pairgen's world frame.

Same interface as :class:`pairgen.synthetic.body.AnnyBody`. Poses come either from the DOF rig
(keyframed motions) or, from AMASS, as raw SMPL axis-angle poses [B, 72].

Frames: SMPL is +Y up, facing +Z; pairgen's world is +Z up, facing -Y, so world = M @ smpl with
M = [[1,0,0],[0,0,-1],[0,1,0]]. SMPL rests in a T-pose while the DOF rig's zero is anny's A-pose
(arms ~49 degrees below horizontal): a rest offset O_j per joint maps one onto the other, and a
rig rotation L_j (world axes, A-pose rest) becomes the SMPL local rotation A_p^T L_j A_j, where A
are the offsets composed down the kinematic tree.

SMPL files carry no UVs: the texture is an atlas with one tile per clothing region and each
vertex gets a cylindrical coordinate inside its region's tile.
"""

from __future__ import annotations

import numpy as np

from pairgen.synthetic.body import (FOREARM, HAIR, SHIN, SHIRT, SHOES, SKIN, SLEEVE, TROUSERS, Posed, _no_grad,
                                   _yaw_matrices)
from pairgen.synthetic.rig import DOF_INDEX, DOF_NAMES, axis_angle_to_matrix, _mirror_axis
from pairgen.synthetic.kernels import SplitSurface

M = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # smpl -> world
A_POSE_ARM_DROP = 0.862  # radians below horizontal of anny's rest arms (the rig's zero)
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
JOINT_REGION = {0: TROUSERS, 1: TROUSERS, 2: TROUSERS, 3: SHIRT, 4: SHIN, 5: SHIN, 6: SHIRT, 7: SHOES, 8: SHOES,
                9: SHIRT, 10: SHOES, 11: SHOES, 12: SKIN, 13: SHIRT, 14: SHIRT, 15: HAIR, 16: SLEEVE, 17: SLEEVE,
                18: FOREARM, 19: FOREARM, 20: SKIN, 21: SKIN, 22: SKIN, 23: SKIN}
# COCO-17 from SMPL joints (body) and smplx's vertex keypoints (face: 24 nose, 25 reye, 26 leye, 27 rear, 28 lear)
COCO_FROM_SMPL = (24, 26, 25, 28, 27, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8)
SMPL_VERTEX_COUNT = 6890
N_REGIONS = 8


class SmplBody:
    name = "smpl"

    @_no_grad
    def __init__(self, model_path: str, num_betas: int = 10):
        import torch
        import smplx

        from pairgen import safe_pickle

        self._torch = torch
        try:  # smplx would unpickle the file with plain pickle: hand it the restricted loader's arrays
            self.model = smplx.SMPL(model_path=str(model_path), num_betas=num_betas,
                                    data_struct=safe_pickle.body_model_struct(model_path, "smpl"))
        except Exception as exc:  # smplx raises assorted errors for malformed files
            raise ValueError(f"--smpl-model {model_path}: not a loadable SMPL-format file ({exc})") from exc
        self.num_betas = num_betas
        rest = self.model()
        joints = rest.joints[0, :24].numpy().astype(np.float64) @ M.T
        self.rest_vertices = rest.vertices[0].numpy() @ M.T
        if self.rest_vertices.shape[0] < SMPL_VERTEX_COUNT:
            raise ValueError(f"--smpl-model {model_path}: {self.rest_vertices.shape[0]} vertices, SMPL has 6890")
        self._build_rig(joints)
        faces = self.model.faces.astype(np.int64)
        self.mesh_faces = faces
        self.faces = faces
        self.split_index = np.arange(len(self.rest_vertices))
        self.n_vertices = len(self.rest_vertices)
        self.surface = SplitSurface(self.mesh_faces, self.split_index, self.n_vertices)
        w = self.model.lbs_weights.numpy()
        vert_regions = np.array([JOINT_REGION[j] for j in w.argmax(1)])
        head = vert_regions == HAIR
        if head.any():  # face and neck-side of the head are skin
            rv = self.rest_vertices
            front = rv[:, 1] < np.quantile(rv[head, 1], 0.5)
            low = rv[:, 2] < np.quantile(rv[head, 2], 0.45)
            vert_regions[head & (front | low)] = SKIN
        self.regions = vert_regions
        self.uv = self._atlas_uv(vert_regions)

    # -- rig ------------------------------------------------------------------------------------
    def _build_rig(self, joints: np.ndarray) -> None:
        X, Y, Z = np.eye(3)
        fwd = -Y
        offsets = [np.eye(3) for _ in range(24)]
        for j, mirror_ in ((16, False), (17, True)):  # T-pose -> A-pose: arms down
            axis = _mirror_axis(-Y) if mirror_ else -Y
            offsets[j] = axis_angle_to_matrix(axis, np.array(-A_POSE_ARM_DROP))
        A = [np.eye(3)] * 24
        for j in range(24):
            A[j] = offsets[j] if PARENTS[j] < 0 else A[PARENTS[j]] @ offsets[j]
        self.A = np.stack(A)
        terms = []

        def add(dof, joint, axis, share=1.0):
            terms.append((DOF_INDEX[dof], joint, np.asarray(axis, float), share))

        for side, (hip, knee, ankle, collar, shoulder, elbow, wrist), m in (
                ("l", (1, 4, 7, 13, 16, 18, 20), lambda a: np.asarray(a, float)),
                ("r", (2, 5, 8, 14, 17, 19, 21), _mirror_axis)):
            # bone directions in the A-pose (world): rest directions rotated by the parents' offsets
            upper = self.A[shoulder] @ (joints[elbow] - joints[shoulder])
            fore = self.A[elbow] @ (joints[wrist] - joints[elbow])
            upper /= np.linalg.norm(upper)
            fore /= np.linalg.norm(fore)
            hinge = np.cross(fore, fwd)
            hinge /= np.linalg.norm(hinge)
            add(f"{side}_hip_flex", hip, -X)
            add(f"{side}_hip_abd", hip, m(-Y))
            add(f"{side}_hip_twist", hip, m(Z))
            add(f"{side}_knee", knee, X)
            add(f"{side}_ankle", ankle, X)
            add(f"{side}_clavicle", collar, m(-Y))
            add(f"{side}_shoulder_abd", shoulder, m(-Y))
            add(f"{side}_shoulder_flex", shoulder, -X)
            add(f"{side}_shoulder_twist", shoulder, upper)
            add(f"{side}_elbow", elbow, hinge)
            add(f"{side}_wrist", wrist, hinge)
        for j in (3, 6, 9):
            for dof, axis in (("spine_flex", X), ("spine_bend", Y), ("spine_twist", Z)):
                add(dof, j, axis, 1 / 3)
        for j in (12, 15):
            for dof, axis in (("neck_flex", X), ("neck_bend", Y), ("neck_twist", Z)):
                add(dof, j, axis, 1 / 2)
        self.terms = terms

    def local_rotations(self, angles: np.ndarray) -> np.ndarray:
        """[B, D] rig angles -> [B, 24, 3, 3] SMPL local rotations (SMPL frame)."""
        B = angles.shape[0]
        L = np.tile(np.eye(3), (B, 24, 1, 1))
        for dof, joint, axis, share in self.terms:
            L[:, joint] = L[:, joint] @ axis_angle_to_matrix(axis, share * angles[:, dof])
        S = np.empty_like(L)
        for j in range(24):
            Ap = self.A[PARENTS[j]] if PARENTS[j] >= 0 else np.eye(3)
            S[:, j] = Ap.T @ L[:, j] @ self.A[j]
        return M.T @ S @ M  # world-frame rotations -> SMPL frame

    # -- appearance ---------------------------------------------------------------------------
    def _atlas_uv(self, regions: np.ndarray) -> np.ndarray:
        """Per-vertex GL UVs: region r occupies tile r of a 4x2 atlas; cylinder coordinates inside."""
        rv = self.rest_vertices
        uv = np.zeros((len(rv), 2), np.float32)
        for r in range(N_REGIONS):
            m = regions == r
            if not m.any():
                continue
            p = rv[m]
            c = p.mean(0)
            theta = (np.arctan2(p[:, 0] - c[0], -(p[:, 1] - c[1])) / (2 * np.pi)) + 0.5
            h = (p[:, 2] - p[:, 2].min()) / (np.ptp(p[:, 2]) + 1e-9)
            tx, ty = r % 4, r // 4
            uv[m, 0] = (tx + 0.05 + 0.9 * theta) / 4
            # GL v grows upwards; tile row ty counted from the top of the texture image
            uv[m, 1] = 1.0 - (ty + 0.05 + 0.9 * (1 - h)) / 2
        return uv

    def region_texture_map(self, size: int) -> np.ndarray:
        """The atlas layout as a region map (texel -> region), for the outfit painter."""
        yy, xx = np.mgrid[0:size, 0:size]
        return ((yy * 2 // size) * 4 + (xx * 4 // size)).astype(np.int8)

    # -- forward --------------------------------------------------------------------------------
    @_no_grad
    def forward(self, phenotypes: np.ndarray, angles: np.ndarray, yaw: np.ndarray) -> Posed:
        """phenotypes [B, P] in [0, 1] -> betas; angles [B, D] rig angles or [B, 72] SMPL poses."""
        torch = self._torch
        B = angles.shape[0]
        betas = np.zeros((B, self.num_betas), np.float32)
        k = min(self.num_betas, phenotypes.shape[1])
        betas[:, :k] = (phenotypes[:, :k] - 0.5) * 4.0  # [0,1] -> [-2, 2] standard deviations
        if angles.shape[1] == len(DOF_NAMES):
            R = self.local_rotations(angles)
            out = self.model(betas=torch.as_tensor(betas), global_orient=torch.as_tensor(R[:, :1], dtype=torch.float32),
                             body_pose=torch.as_tensor(R[:, 1:], dtype=torch.float32), pose2rot=False)
            verts = out.vertices.numpy() @ M.T
            joints = out.joints.numpy() @ M.T
        elif angles.shape[1] == 72:  # AMASS: root orientation already maps to a Z-up world
            out = self.model(betas=torch.as_tensor(betas), global_orient=torch.as_tensor(angles[:, :3], dtype=torch.float32),
                             body_pose=torch.as_tensor(angles[:, 3:], dtype=torch.float32))
            verts = out.vertices.numpy()
            joints = out.joints.numpy()
        else:
            raise ValueError(f"pose must be [B, {len(DOF_NAMES)}] rig angles or [B, 72] SMPL axis-angles")
        root = joints[:, :1].copy()
        root[..., 2] = 0.0  # keep height, centre the pelvis horizontally
        verts, joints = verts - root, joints - root
        Ry = _yaw_matrices(yaw)
        verts = np.einsum("bij,bvj->bvi", Ry, verts)
        joints = np.einsum("bij,bvj->bvi", Ry, joints)
        return Posed(verts.astype(np.float32), joints[:, list(COCO_FROM_SMPL)].astype(np.float32))
