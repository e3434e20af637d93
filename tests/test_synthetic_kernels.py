"""The compiled per-vertex passes (pairgen.synthetic.kernels) against their reference code."""

from __future__ import annotations

import numpy as np
import pytest

from pairgen.synthetic import kernels
from pairgen.synthetic.body import PHENOTYPES, _yaw_matrices, vertex_normals
from pairgen.synthetic.motions import sample_clip


@pytest.fixture(scope="module")
def body(synthetic_worker):
    return synthetic_worker.generator.body


@pytest.fixture(scope="module")
def posed(body):
    rng = np.random.default_rng(3)
    ph = rng.random((6, 6))
    ph[1], ph[4] = ph[0], ph[2]  # bodies posed twice, as in cross-pose pairs
    angles = np.concatenate([sample_clip(rng).angles([0.7]) for _ in range(6)])
    yaw = rng.uniform(0, 2 * np.pi, 6)
    return ph, angles, yaw, body.forward(ph, angles, yaw)


def test_warp_compiles_here():
    assert kernels.kernels() is not None, "warp could not compile: the numpy fallbacks are ~2.5x slower"


def test_split_surface_is_bit_identical_to_numpy(body, posed):
    v = posed[3].vertices[2]
    pos, nrm = body.surface(v)
    assert body.surface.compiled
    assert np.array_equal(pos, v[body.split_index])
    assert np.array_equal(nrm, vertex_normals(v, body.mesh_faces)[body.split_index])
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1, atol=1e-5)
    fallback = kernels.SplitSurface(body.mesh_faces, body.split_index, body.n_vertices, compiled=False)
    fpos, fnrm = fallback(v)
    assert np.array_equal(fpos, pos) and np.array_equal(fnrm, nrm)
    with pytest.raises(ValueError, match="vertices"):
        body.surface(v[:-1])


def test_anny_forward_equals_the_model_rotated_by_yaw(body, posed):
    """Rows 0/1 and 2/4 share a body (shaped once, posed twice): every row must still match."""
    import torch

    ph, angles, yaw, out = posed
    with torch.no_grad():
        ref = body.model(pose_parameters=torch.as_tensor(body.rig.pose_parameters(angles), dtype=torch.float32),
                         phenotype_kwargs={n: torch.as_tensor(ph[:, i], dtype=torch.float32)
                                           for i, n in enumerate(PHENOTYPES)})
        R = _yaw_matrices(yaw).transpose(0, 2, 1)
        verts = ref["vertices"].numpy() @ R
        kps = body.kp_regressor(ref)[:, body.kp_index].numpy() @ R
    assert out.vertices.dtype == np.float32 and out.vertices.shape == verts.shape
    assert np.abs(out.vertices - verts).max() < 1e-5  # metres
    assert np.abs(out.keypoints - kps).max() < 1e-4


def test_skinning_and_regressor_fallbacks_match(body, posed):
    rng = np.random.default_rng(0)
    V = body.n_vertices
    w = rng.random((V, 4)).astype(np.float32)
    w[:, 2:] *= rng.random((V, 2)) < 0.5  # some zero slots, skipped by the compiled pass
    w /= w.sum(1, keepdims=True)
    bones = rng.integers(0, 5, (V, 4))
    rest = rng.normal(size=(2, V, 3)).astype(np.float32)
    T = np.tile(np.eye(4, dtype=np.float32), (3, 5, 1, 1))
    T[:, :, :3, :] += rng.normal(scale=0.1, size=(3, 5, 3, 4)).astype(np.float32)
    yaw = _yaw_matrices(rng.uniform(0, 6, 3))
    body_of = np.array([0, 1, 0])
    skin = kernels.Skinning(w, bones)
    fast = skin(rest, body_of, T, yaw)
    skin._k = None
    slow = skin(rest, body_of, T, yaw)
    assert np.abs(fast - slow).max() < 1e-5
    # against the definition: rotate(sum_j w_j T_j [p, 1])
    p = np.concatenate([rest[body_of[1]], np.ones((V, 1), np.float32)], 1)
    ref = np.einsum("vk,vkij,vj->vi", w, T[1][bones][:, :, :3], p) @ yaw[1].T
    assert np.abs(fast[1] - ref).max() < 1e-5
    dense = np.where(rng.random((5, V)) < 0.01, rng.random((5, V)), 0).astype(np.float32)
    reg = kernels.SparseRegressor(dense)
    got = reg(posed[3].vertices)
    assert np.abs(got - np.einsum("rv,bvd->brd", dense, posed[3].vertices)).max() < 1e-4
