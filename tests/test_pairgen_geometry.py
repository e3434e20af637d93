"""Geometry of synthetic pairs against the renderer's ground truth (cameras, joints, masks)."""

from __future__ import annotations

import numpy as np
import pytest

from geometry_checks import keypoints_inside_fraction
from pairgen.synthetic import camera as cam
from pairgen.synthetic.rig import DOF_NAMES
from pairgen.synthetic.render import Camera


def _camera(params: dict) -> Camera:
    K = np.array(params["K"])
    return Camera(np.array(params["R"]), np.array(params["t"]), K[0, 0], K[1, 1], K[0, 2], K[1, 2],
                  params["width"], params["height"])


@pytest.fixture(scope="module")
def pairs(synthetic_worker):
    gen = synthetic_worker.generator
    out = {"cross_view": [], "cross_pose": []}
    i = 0
    while min(len(v) for v in out.values()) < 4:
        rec = gen.make_pair(11, i)
        out[rec.meta["kind"]].append(rec)
        i += 1
    return out


def test_cross_view_shares_pose_and_differs_by_recorded_angle(pairs):
    for rec in pairs["cross_view"]:
        m = rec.meta
        assert m["frame_target"] == m["frame_reference"] and m["camera_target"] != m["camera_reference"]
        assert np.allclose(m["joints3d_target"], m["joints3d_reference"])  # one instant, one pose
        ct, cr = _camera(m["camera_target_params"]), _camera(m["camera_reference_params"])
        centre = np.array(m["person_center"])
        assert cam.azimuth_gap_deg(ct, cr, centre) == pytest.approx(m["azimuth_gap_deg"], abs=1e-3)
        assert cam.view_angle_deg(ct, cr, centre) == pytest.approx(m["view_angle_deg"], abs=1e-3)
        assert not np.allclose(ct.center, cr.center)
        # each image's keypoints are the shared 3D joints seen through its own camera
        j = np.array(m["joints3d_target"])
        for c, key in ((ct, "keypoints_target"), (cr, "keypoints_reference")):
            uv, _ = c.project(j)
            assert np.allclose(uv, np.array(m[key])[:, :2], atol=0.01)


def test_cross_pose_shares_camera_and_body_not_pose(pairs):
    for rec in pairs["cross_pose"]:
        m = rec.meta
        assert m["camera_target_params"] == m["camera_reference_params"]
        assert m["subject"] and m["camera_target"] == m["camera_reference"]
        jt, jr = np.array(m["joints3d_target"]), np.array(m["joints3d_reference"])
        assert not np.allclose(jt, jr) and m["motion"] > 0.01
        gap = m["motion_clip"]["t_reference"] - m["motion_clip"]["t_target"]
        assert abs(gap) == pytest.approx(m["time_gap_s"], abs=1e-4)
        # same body: shin lengths (knee-ankle; surface-regressed joints, so a few % of skin slide)
        for a, b in ((13, 15), (14, 16)):
            assert np.linalg.norm(jt[a] - jt[b]) == pytest.approx(np.linalg.norm(jr[a] - jr[b]), rel=0.06)
        # same background and lighting: pixels outside both silhouettes are identical
        both_bg = (rec.target_mask == 0) & (rec.reference_mask == 0)
        assert np.array_equal(rec.target[both_bg], rec.reference[both_bg])


def test_keypoints_fall_inside_silhouettes(pairs):
    frac, total = keypoints_inside_fraction(pairs["cross_view"] + pairs["cross_pose"])
    assert total > 50
    assert frac >= 0.97


def test_person_fully_visible_and_centred(pairs):
    for rec in pairs["cross_view"] + pairs["cross_pose"]:
        for mask in (rec.target_mask, rec.reference_mask):
            ys, xs = np.nonzero(mask)
            assert ys.min() > 0 and xs.min() > 0 and ys.max() < mask.shape[0] - 1 and xs.max() < mask.shape[1] - 1
            assert abs((xs.min() + xs.max()) / 2 - mask.shape[1] / 2) < 0.1 * mask.shape[1]


def test_pair_is_a_function_of_seed_and_index(synthetic_worker):
    gen = synthetic_worker.generator
    a, b = gen.make_pair(5, 3), gen.make_pair(5, 3)
    assert np.array_equal(a.target, b.target) and np.array_equal(a.reference_mask, b.reference_mask)
    assert a.meta == b.meta
    c = gen.make_pair(5, 4)
    assert not np.array_equal(a.target, c.target)


def test_cross_view_azimuths_span_front_and_back(synthetic_worker):
    gen = synthetic_worker.generator
    rng_gaps = []
    for i in range(40):
        rec = gen.make_pair(2, i)
        if rec.meta["kind"] == "cross_view":
            rng_gaps.append(rec.meta["azimuth_gap_deg"])
    assert min(rng_gaps) < 60 and max(rng_gaps) > 120


def test_gl_renderer_agrees_with_pyrender_reference(synthetic_worker):
    """The production renderer's projection and depth match an independent renderer (pyrender)."""
    from pairgen.synthetic import appearance
    from pairgen.synthetic.body import vertex_normals
    from pairgen.synthetic.render import BodyRenderer

    gen = synthetic_worker.generator
    body = gen.body
    rng = np.random.default_rng(0)
    posed = body.forward(rng.random((1, 6)), np.zeros((1, len(DOF_NAMES))),
                         np.array([0.4]))
    V = posed.vertices[0]
    n = vertex_normals(V, body.mesh_faces)
    R, t = cam.look_at(cam.camera_center(V.mean(0), 0.7, 0.3, 4.0), V.mean(0))
    c = cam.fit_camera(R, t, V, 256, 0.85)
    tex = appearance.random_outfit_texture(rng, gen.regions)[0]
    views = [(V[body.split_index], n[body.split_index], c)]
    lights = [(np.array([0.3, 1.0, -1.0]), np.ones(3), 3.0)]
    ours = gen.renderer.render(views, tex, np.full(3, 0.4), lights)[0]
    reference = BodyRenderer(256, body.faces, body.uv)
    ref = reference.render(views, tex, np.full(3, 0.4), lights)[0]
    reference.close()
    a, b = ours[1] > 0, ref[1] > 0
    assert (a & b).sum() / (a | b).sum() > 0.9
    assert np.abs(ours[1][a & b] - ref[1][a & b]).mean() < 0.01  # metres
    # same texture lookup: mean colour over the shared silhouette within a few levels
    assert np.abs(ours[0][a & b].astype(float).mean(0) - ref[0][a & b].astype(float).mean(0)).max() < 25
