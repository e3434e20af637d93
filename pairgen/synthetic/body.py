"""Body models for the synthetic source: anny (default, ships its data) and SMPL (user's file).

Both expose the same small interface in one world frame (metres, +Z up, the person facing -Y
before the global yaw, +X = the person's left):

    body.forward(phenotypes [B, P], angles [B, D], yaw [B]) -> Posed(vertices [B, V, 3],
                                                                  keypoints [B, 17, 3])

plus the render topology (``faces``, ``uv``, ``split_index``: vertices split per UV corner;
``surface(vertices) -> (positions, normals)`` of the split vertices, the renderer's input)
and ``regions``: a clothing region per split vertex (see :mod:`pairgen.synthetic.appearance`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pairgen.memo import cached_per_array
from pairgen.synthetic.rig import AnnyRig
from pairgen.synthetic.kernels import Skinning, SparseRegressor, SplitSurface

# Clothing regions, by the bone that dominates a vertex's skinning.
SKIN, SHIRT, SLEEVE, FOREARM, TROUSERS, SHIN, SHOES, HAIR = range(8)
REGION_NAMES = ("skin", "shirt", "sleeve", "forearm", "trousers", "shin", "shoes", "hair")
PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")


def _no_grad(fn):
    """Run ``fn`` without autograd (scoped: the caller's grad mode is untouched)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


@dataclass
class Posed:
    vertices: np.ndarray  # [B, V, 3] float32, world metres
    keypoints: np.ndarray  # [B, 17, 3] COCO-17 joints, world metres


def _quiet_warp() -> None:
    """warp without its banner, and without the "Warp CUDA warning: Could not find or load the
    NVIDIA CUDA driver" its native library prints on every CPU-only worker (written by C code to
    file descriptor 2, so it is silenced there, only when this machine has no CUDA driver)."""
    os.environ.setdefault("WARP_CACHE_PATH", os.path.expanduser("~/.cache/warp"))
    try:
        import warp

        warp.config.quiet = True
        warp.config.log_level = getattr(warp, "LOG_WARNING", 30)
    except ImportError:  # anny may run without warp on some installs
        return
    import ctypes.util

    if ctypes.util.find_library("cuda") is None and not os.path.exists("/proc/driver/nvidia"):
        import sys

        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                warp.init()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def split_uv_topology(faces: np.ndarray, face_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One render vertex per distinct (vertex, uv) corner.

    Returns ``split_index`` [Vs] (mesh vertex of each render vertex) and ``split_faces`` [F, 3].
    """
    pairs = np.stack([faces.reshape(-1), face_uv.reshape(-1)], axis=1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return uniq, inverse.reshape(faces.shape)


class _NormalOperator:
    """Per-topology state of :func:`vertex_normals`: face corner columns and the sparse [V, F]
    vertex-face incidence (each face adds its normal to its 3 vertices)."""

    def __init__(self, faces: np.ndarray, n_vertices: int):
        from scipy.sparse import csr_matrix

        f = np.ascontiguousarray(faces, np.int64)
        self.corners = [np.ascontiguousarray(f[:, k]) for k in range(3)]
        rows = f.reshape(-1)
        cols = np.repeat(np.arange(len(f)), 3)
        self.incidence = csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_vertices, len(f)))
        self._gathered: dict[tuple, tuple] = {}  # rows -> incidence[rows] (normals of chosen vertices only)

    def _incidence_rows(self, rows: np.ndarray | None):
        if rows is None:
            return self.incidence
        return cached_per_array(self._gathered, rows, lambda: self.incidence[rows], limit=4)

    def __call__(self, v: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        i0, i1, i2 = self.corners
        p0 = v.take(i0, 0)
        e1 = v.take(i1, 0)
        e1 -= p0
        e2 = v.take(i2, 0)
        e2 -= p0
        a, b = e1.T, e2.T  # component rows: contiguous arithmetic instead of np.cross
        fn = np.empty((3, len(i0)), np.float32)  # face normals, length = 2 x area
        fn[0] = a[1] * b[2] - a[2] * b[1]
        fn[1] = a[2] * b[0] - a[0] * b[2]
        fn[2] = a[0] * b[1] - a[1] * b[0]
        n = self._incidence_rows(rows) @ fn.T
        n /= np.sqrt(np.einsum("ij,ij->i", n, n))[:, None] + 1e-12
        return n.astype(np.float32, copy=False)


_NORMAL_OPS: dict[tuple, tuple] = {}


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Area-weighted vertex normals [V, 3] of one mesh (float32); with ``rows``, only those
    vertices' normals (= ``vertex_normals(vertices, faces)[rows]``, without computing the rest)."""
    v = np.asarray(vertices, np.float32)
    op = cached_per_array(_NORMAL_OPS, faces, lambda: _NormalOperator(faces, len(v)), len(v))
    return op(v, rows)


class AnnyBody:
    """anny (MakeHuman-based, CC0 data) posed through :class:`AnnyRig`.

    Building the model is expensive (first build ~50 s, cached on disk; ~0.3 s after): build one
    per worker and reuse it.
    """

    name = "anny"

    @_no_grad
    def __init__(self) -> None:
        _quiet_warp()
        import torch
        import anny
        from anny.keypoints import KeypointsRegressor

        self._torch = torch
        self.model = anny.Anny().float()
        self.kp_regressor = KeypointsRegressor.coco(self.model)
        labels = list(self.kp_regressor.labels)
        self.kp_index = [labels.index(n) for n in (
            "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
            "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
            "left_knee", "right_knee", "left_ankle", "right_ankle")]
        rest = self.model(pose_parameters=torch.eye(4).repeat(1, self.model.bone_count, 1, 1),
                          phenotype_kwargs={})
        self.rig = AnnyRig(self.model.bone_labels, rest["rest_bone_heads"][0].numpy())
        faces = self.model.faces.numpy().astype(np.int64)
        face_uv = self.model.face_texture_coordinate_indices.numpy().astype(np.int64)
        uv = self.model.texture_coordinates.numpy().astype(np.float32)
        self.mesh_faces = faces
        uniq, self.faces = split_uv_topology(faces, face_uv)
        self.split_index = uniq[:, 0]
        self.uv = uv[uniq[:, 1]].copy()  # GL texture coordinates (v grows upwards)
        self.regions = self._regions()[self.split_index]
        self.n_vertices = len(self.model.template_vertices)
        self.skinning = Skinning(self.model.vertex_bone_weights.numpy(), self.model.vertex_bone_indices.numpy())
        self.keypoints = SparseRegressor(self.kp_regressor.regression_weights[self.kp_index].numpy())
        self.surface = SplitSurface(self.mesh_faces, self.split_index, self.n_vertices)

    def _regions(self) -> np.ndarray:
        """Clothing region per mesh vertex from the dominant skinning bone (and its height)."""
        idx = self.model.vertex_bone_indices.numpy()
        w = self.model.vertex_bone_weights.numpy()
        dominant = idx[np.arange(len(idx)), w.argmax(1)]
        labels = self.model.bone_labels
        rest = self.model.template_vertices.numpy()
        table = {}
        for i, b in enumerate(labels):
            base = b.split(".")[0]
            if base.startswith(("spine", "clavicle", "shoulder", "root")):
                table[i] = SHIRT
            elif base.startswith("pelvis") or base.startswith("upperleg"):
                table[i] = TROUSERS
            elif base.startswith("lowerleg"):
                table[i] = SHIN
            elif base.startswith(("foot", "toe")):
                table[i] = SHOES
            elif base.startswith("upperarm"):
                table[i] = SLEEVE
            elif base.startswith("lowerarm"):
                table[i] = FOREARM
            elif base in ("head",):
                table[i] = HAIR
            else:
                table[i] = SKIN
        regions = np.array([table.get(int(d), SKIN) for d in dominant], dtype=np.int64)
        # Hair: the back and top of the head only (the face stays skin).
        head = regions == HAIR
        if head.any():
            hz = rest[head, 2]
            top = np.quantile(hz, 0.45)
            face_front = rest[:, 1] < np.quantile(rest[head, 1], 0.55)
            regions[head & ((rest[:, 2] < top) | face_front)] = SKIN
        neck = np.array([labels[int(d)].startswith("neck") for d in dominant])
        regions[neck] = SKIN
        return regions

    @_no_grad
    def forward(self, phenotypes: np.ndarray, angles: np.ndarray, yaw: np.ndarray) -> Posed:
        """anny's forward pass, with each distinct body shaped once (a cross-pose pair poses one body
        twice), sparse skinning with the yaw folded in, and the 17 keypoint rows regressed sparsely.
        Equals ``model(pose, phenotypes)`` rotated by the yaw, up to float rounding (tested)."""
        torch = self._torch
        m = self.model
        uniq, body = np.unique(np.asarray(phenotypes, np.float64), axis=0, return_inverse=True)
        pheno = {n: torch.as_tensor(uniq[:, i], dtype=torch.float32) for i, n in enumerate(PHENOTYPES)}
        _, pheno_t, local, facial = m.get_tensor_inputs(None, pheno, None, None)
        rest = m.get_rest_model(m._get_phenotype_blendshape_coefficients(pheno_t, local, facial))
        body = body.reshape(-1)
        pose = torch.as_tensor(self.rig.pose_parameters(angles), dtype=torch.float32)
        transforms, _ = m.get_bone_transforms(pose, rest["rest_bone_poses"][torch.as_tensor(body)])
        verts = self.skinning(rest["rest_vertices"].numpy(), body, transforms.numpy(), _yaw_matrices(yaw))
        return Posed(verts, self.keypoints(verts))


def _yaw_matrices(yaw: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.zeros((len(yaw), 3, 3))
    R[:, 0, 0], R[:, 0, 1], R[:, 1, 0], R[:, 1, 1], R[:, 2, 2] = c, -s, s, c, 1.0
    return R
