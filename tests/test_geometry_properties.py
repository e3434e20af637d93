"""Property-based tests (hypothesis) of the real-data geometry: crops (pairgen/real/crop.py),
silhouettes (pairgen/real/silhouette.py) and pair mining (pairgen/real/mining.py), on random and
degenerate inputs: NaN/inf coordinates, zero-size and inverted boxes, boxes far outside the frame,
all-zero confidences, 1x1 and odd-sized frames, uint8 arrays and decoded video frames (VideoImage)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pairgen.real import crop as cropping
from pairgen.real import silhouette as sil
from pairgen.real.mining import mine_pairs
from pairgen.real.types import CameraModel, Observation, Unit

# PROPERTY_EXAMPLES=2000 for a longer search
SETTINGS = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(-300, 300, allow_nan=False, allow_infinity=False)
coord = st.one_of(finite, st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e7, -1e7]))
conf = st.one_of(st.sampled_from([0.0, 0.0, 1.0, 0.05, math.nan]), st.floats(0, 1))


@st.composite
def frames(draw, video: bool | None = None):
    """(image, h, w): an [h, w] or [h, w, 3] uint8 array, or a VideoImage of an [h, w, 3] frame."""
    h, w = draw(st.integers(1, 33)), draw(st.integers(1, 33))
    as_video = draw(st.booleans()) if video is None else video
    channels = () if (not as_video and draw(st.booleans())) else (3,)
    rgb = np.random.default_rng(draw(st.integers(0, 2**16))).integers(1, 256, (h, w, *channels), dtype=np.uint8)
    if as_video:
        return _video_image(rgb), h, w
    return rgb, h, w


def _video_image(rgb: np.ndarray):
    import av

    from pairgen.real.frames import VideoImage

    # the frames of a real video: yuv420p (odd sizes too; VideoImage converts those whole)
    return VideoImage(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p"))


@st.composite
def boxes(draw, h: int = 33, w: int = 33):
    """[x0, y0, x1, y1]: ordinary, zero-size, inverted, or far outside the frame (all finite)."""
    kind = draw(st.sampled_from(["any", "zero", "inverted", "far"]))
    x0, y0 = draw(st.floats(-2 * w, 2 * w)), draw(st.floats(-2 * h, 2 * h))
    side = draw(st.floats(0, 3 * max(h, w)))
    if kind == "zero":
        side = 0.0
    elif kind == "inverted":
        side = -side
    elif kind == "far":
        x0 += draw(st.sampled_from([-1e4, 1e4, 0.0]))
        y0 += draw(st.sampled_from([-1e4, 1e4])) if x0 > -w else 0.0
    return np.array([x0, y0, x0 + side, y0 + draw(st.floats(0, 2)) * side])


def _nearest_interp(side: int, size: int, nearest: bool) -> int:
    import cv2

    return cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


# -- crops -----------------------------------------------------------------------------------------

@SETTINGS
@given(kps=st.one_of(st.none(), st.lists(st.tuples(coord, coord, conf), min_size=0, max_size=17)),
       box=st.one_of(st.none(), st.tuples(coord, coord, coord, coord)))
def test_person_box_is_finite_and_holds_the_usable_keypoints(kps, box):
    k = None if kps is None else np.array(kps, np.float64).reshape(-1, 3)
    obs = Observation(box=None if box is None else np.array(box), keypoints=k)
    b = cropping.person_box(obs)
    if b is None:
        usable = 0 if k is None else int((np.isfinite(k).all(1) & (k[:, 2] > 0.05)).sum())
        assert usable < 2 and (box is None or not np.isfinite(box).all())
        return
    assert b.shape == (4,) and np.isfinite(b).all()
    if k is not None:
        ok = np.isfinite(k).all(1) & (k[:, 2] > 0.05)
        if ok.sum() >= 2:
            p = k[ok, :2]
            assert (b[:2] <= p.min(0)).all() and (b[2:] >= p.max(0)).all()


@SETTINGS
@given(box=boxes(), margin=st.floats(0, 1), kind=st.sampled_from(["body", "hand"]))
def test_square_crop_box_is_a_square_around_the_box(box, margin, kind):
    c = cropping.square_crop_box(box, margin, kind)
    side = c[2] - c[0]
    assert np.isfinite(c).all() and side == pytest.approx(c[3] - c[1]) and side >= 8.0 - 1e-9
    if box[2] >= box[0] and box[3] >= box[1]:  # an ordinary box lies inside its crop
        eps = 1e-6 * (1 + np.abs(box).max())
        assert c[0] <= box[0] + eps and c[1] <= box[1] + eps and c[2] >= box[2] - eps and c[3] >= box[3] - eps


@SETTINGS
@given(frame=frames(), box=boxes(), size=st.integers(1, 40), nearest=st.booleans())
def test_crop_resize_shape_dtype_and_zero_padding(frame, box, size, nearest):
    img, h, w = frame
    out = cropping.crop_resize(img, box, size, nearest=nearest)
    assert out.dtype == np.uint8 and out.shape == (size, size) + tuple(img.shape[2:])
    inside = cropping.in_frame(box, size, h, w)
    if nearest:  # the padding is exactly zero; the frame part is the frame's pixels (arrays: all > 0)
        assert not out[~inside].any()
        assert isinstance(img, np.ndarray) <= (out[inside] > 0).all()
    else:  # area/linear resampling blends across the frame's border: zero where no frame pixel weighs in
        support = cropping.crop_resize(np.ones((h, w), np.float32), box, size) > 0
        assert support[inside].all() and not out[~support].any()


@SETTINGS
@given(frame=frames(video=False), data=st.data(), size=st.integers(1, 40), nearest=st.booleans())
def test_crop_inside_the_frame_is_the_resized_pixels(frame, data, size, nearest):
    import cv2

    img, h, w = frame
    side = data.draw(st.integers(1, min(h, w)))
    x0, y0 = data.draw(st.integers(0, w - side)), data.draw(st.integers(0, h - side))
    jitter = data.draw(st.floats(-0.49, 0.49))
    box = np.array([x0 + jitter, y0 + jitter, x0 + side + jitter, y0 + side + jitter])
    want = cv2.resize(np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side]), (size, size),
                      interpolation=_nearest_interp(side, size, nearest))
    assert np.array_equal(cropping.crop_resize(img, box, size, nearest=nearest), want)
    assert cropping.in_frame(box, size, h, w).all()
    assert cropping.crop_box_used(box) == [x0, y0, x0 + side, y0 + side]


@SETTINGS
@given(rgb_seed=st.integers(0, 2**16), hw=st.tuples(st.integers(1, 24), st.integers(1, 24)), box=boxes(24, 24),
       size=st.integers(1, 32), nearest=st.booleans())
def test_video_frame_crops_equal_array_crops(rgb_seed, hw, box, size, nearest):
    """A VideoImage crops (padding included) exactly like its whole RGB conversion."""
    rgb = np.random.default_rng(rgb_seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    whole = np.asarray(_video_image(rgb))
    got = cropping.crop_resize(_video_image(rgb), box, size, nearest=nearest)  # a fresh one: converts regions
    assert np.array_equal(got, cropping.crop_resize(whole, box, size, nearest=nearest))


@SETTINGS
@given(box=boxes(), hw=st.tuples(st.integers(1, 33), st.integers(1, 33)), size=st.integers(1, 40))
def test_in_frame_is_the_nearest_crop_of_an_all_ones_frame(box, hw, size):
    h, w = hw
    inside = cropping.in_frame(box, size, h, w)
    assert inside.shape == (size, size) and inside.dtype == bool
    assert np.array_equal(inside, cropping.crop_resize(np.ones((h, w), np.uint8), box, size, nearest=True) > 0)


@SETTINGS
@given(box=boxes(), size=st.integers(1, 64),
       pts=st.lists(st.tuples(coord, coord, conf), min_size=0, max_size=8))
def test_to_crop_maps_the_used_box_onto_the_crop(box, size, pts):
    x0, y0, x1, y1 = cropping.crop_box_used(box)
    side = x1 - x0
    assert side >= 1 and side == y1 - y0 and all(float(v).is_integer() for v in (x0, y0, x1, y1))
    # pixel edges of the used box -> edges of the crop (pixel centres at integers, both sides)
    corners = cropping.to_crop(np.array([[x0 - 0.5, y0 - 0.5, 7.0], [x1 - 0.5, y1 - 0.5, 8.0]]), box, size)
    assert np.allclose(corners[:, :2], [[-0.5, -0.5], [size - 0.5, size - 0.5]], atol=1e-6 * (1 + abs(x0) + abs(y0)))
    assert list(corners[:, 2]) == [7.0, 8.0]  # extra columns kept
    p = np.array(pts, np.float64).reshape(-1, 3)
    q = cropping.to_crop(p, box, size)
    assert q.shape == p.shape and np.array_equal(np.isnan(q[:, 2]), np.isnan(p[:, 2]))
    assert np.array_equal(np.isfinite(q[:, :2]), np.isfinite(p[:, :2]))  # NaN/inf stay unusable, never invented


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_boxes_are_a_value_error(bad):
    """The documented failure of the box functions: a box with NaN/inf is a ValueError (callers
    first take person_box, which never returns one)."""
    box = np.array([0.0, 0.0, 10.0, 10.0])
    for i in range(4):
        b = box.copy()
        b[i] = bad
        for call in (lambda: cropping.crop_resize(np.ones((4, 4, 3), np.uint8), b, 8),
                     lambda: cropping.in_frame(b, 8, 4, 4), lambda: cropping.to_crop(np.zeros((1, 3)), b, 8),
                     lambda: cropping.crop_box_used(b)):
            with pytest.raises(ValueError):
                call()
    assert cropping.person_box(Observation(box=np.array([0.0, bad, 5.0, 5.0]))) is None


# -- silhouettes -----------------------------------------------------------------------------------

def _binary(mask: np.ndarray, size: int) -> None:
    assert mask.shape == (size, size) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 255}


crop_coord = st.one_of(st.floats(-80, 120, allow_nan=False),
                       st.sampled_from([math.nan, math.inf, -math.inf, 1e9, -1e9, 3e5, -3e5, 2e7]))


@SETTINGS
@given(kps=st.lists(st.tuples(crop_coord, crop_coord, conf), min_size=17, max_size=17), size=st.integers(1, 64),
       head=st.one_of(st.none(), st.tuples(crop_coord, crop_coord, crop_coord, crop_coord)))
def test_body_keypoint_mask_is_binary(kps, size, head):
    k = np.array(kps, np.float64)
    mask = sil.body_keypoint_mask(k, size, head_box=None if head is None else np.array(head))
    _binary(mask, size)
    usable = np.isfinite(k).all(1) & (k[:, 2] > 0.05)
    if usable.sum() < 2:
        assert not mask.any()
    elif ((k[usable, :2] >= 0) & (k[usable, :2] <= size - 1)).all() and head is None:
        ix = np.rint(k[usable, :2]).astype(int)
        assert mask[ix[:, 1].clip(0, size - 1), ix[:, 0].clip(0, size - 1)].any()  # drawn where the joints are


@SETTINGS
@given(kps=st.lists(st.tuples(crop_coord, crop_coord, conf), min_size=21, max_size=21), size=st.integers(1, 64))
def test_hand_keypoint_mask_is_binary(kps, size):
    k = np.array(kps, np.float64)
    mask = sil.hand_keypoint_mask(k, size)
    _binary(mask, size)
    if (np.isfinite(k).all(1) & (k[:, 2] > 0.05)).sum() < 2:
        assert not mask.any()


@SETTINGS
@given(uv=st.lists(st.tuples(crop_coord, crop_coord), min_size=3, max_size=12), data=st.data(),
       size=st.integers(1, 48))
def test_mesh_mask_is_binary_and_drops_bad_triangles(uv, data, size):
    uv = np.array(uv, np.float64)
    n = len(uv)
    depth = np.array(data.draw(st.lists(st.sampled_from([1.0, 2.0, 0.0, -1.0, math.nan]), min_size=n, max_size=n)))
    faces = np.array(data.draw(st.lists(st.tuples(*[st.integers(0, n - 1)] * 3), min_size=0, max_size=10)),
                     np.int64).reshape(-1, 3)
    mask = sil.mesh_mask(uv, depth, faces, size)
    _binary(mask, size)
    good = (np.isfinite(uv).all(1) & (depth > 0))
    if not len(faces) or not good[faces].all(1).any():  # no drawable triangle: nothing drawn
        assert not mask.any()


def test_mesh_mask_of_a_triangle_pair_covering_the_crop_is_full():
    for size in (1, 2, 7, 32):
        uv = np.array([[-10.0, -10.0], [size + 10.0, -10.0], [size + 10.0, size + 10.0], [-10.0, size + 10.0]])
        mask = sil.mesh_mask(uv, np.ones(4), np.array([[0, 1, 2], [0, 2, 3]]), size)
        assert (mask == 255).all()


# -- mining ----------------------------------------------------------------------------------------

@st.composite
def units(draw):
    """A random unit: 1-3 tracks, 1-4 cameras (some calibrated), observations at random frames."""
    n_cams = draw(st.integers(1, 4))
    cams = [f"c{i}" for i in range(n_cams)]
    fps = draw(st.sampled_from([5.0, 25.0, 30.0, 60.0]))
    frames = sorted(draw(st.sets(st.integers(0, 80), min_size=1, max_size=30)))
    obs = {}
    for track in [str(t) for t in range(draw(st.integers(1, 3)))]:
        for cam in cams:
            for f in frames:
                if draw(st.integers(0, 3)) == 0:
                    continue
                kind = draw(st.sampled_from(["kps", "nan", "zero", "box"]))
                rng = np.random.default_rng([f, len(obs)])
                k = np.column_stack([rng.uniform(0, 100, (17, 2)), np.ones(17)])
                if kind == "nan":
                    k[:, :2] = np.nan
                elif kind == "zero":
                    k[:, 2] = 0.0
                obs[(track, cam, f)] = (Observation(box=np.array([0.0, 0.0, 50.0, 90.0])) if kind == "box"
                                        else Observation(keypoints=k))
    calibration = {}
    for i, cam in enumerate(cams):
        if draw(st.booleans()):
            a = 2 * np.pi * i / max(n_cams, 1)
            R = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
            calibration[cam] = CameraModel(K=np.eye(3), R=R, t=np.array([0.0, 0.0, 4.0]))
    centre = draw(st.sampled_from(["none", "ok", "nan", "at_camera"]))
    joints3d = None
    if centre != "none":
        def joints3d(track, frame, centre=centre, calibration=calibration):
            if centre == "nan":
                return np.full((17, 3), np.nan)
            if centre == "at_camera" and calibration:
                return np.tile(next(iter(calibration.values())).center, (17, 1))
            return np.zeros((17, 3))
    return Unit(name=f"u{len(obs)}", split="train", subject="s", fps=fps, frames=frames, cameras=cams,
                observations=obs, images=("files", lambda c, f: f"{c}/{f}.jpg"), calibration=calibration,
                joints3d=joints3d)


@SETTINGS
@given(unit=units(), n_cv=st.integers(0, 12), n_cp=st.integers(0, 12), seed=st.integers(0, 2**31),
       angle=st.sampled_from([0.0, 30.0, 90.0]), gaps=st.sampled_from([(0.0, 0.5), (0.25, 1.5), (0.1, 0.1)]))
def test_mine_pairs_is_deterministic_and_keeps_its_promises(unit, n_cv, n_cp, seed, angle, gaps):
    min_gap, max_gap = gaps
    pairs = mine_pairs(unit, n_cv, n_cp, seed, angle, min_gap, max_gap)
    assert pairs == mine_pairs(unit, n_cv, n_cp, seed, angle, min_gap, max_gap)  # a function of its inputs
    assert sum(p.kind == "cross_view" for p in pairs) <= n_cv and sum(p.kind == "cross_pose" for p in pairs) <= n_cp
    keys = set()
    for p in pairs:
        t, r = (p.track, p.cam_target, p.frame_target), (p.track, p.cam_reference, p.frame_reference)
        assert t in unit.observations and r in unit.observations  # only observed (track, camera, frame)s
        assert t != r  # never a side paired with itself
        key = (p.kind, p.track, t[1:], r[1:])
        assert key not in keys  # distinct pairs (a cross-view pair and its swap, target <-> reference, both may come)
        keys.add(key)
        if p.kind == "cross_pose":
            assert (p.kind, p.track, r[1:], t[1:]) not in keys
        if p.kind == "cross_view":
            assert p.frame_target == p.frame_reference and p.cam_target != p.cam_reference
            assert p.time_gap_s is None
            if angle > 0:
                assert p.view_angle_deg is not None and p.view_angle_deg >= angle
            assert p.view_angle_deg is None or math.isfinite(p.view_angle_deg)
        else:
            assert p.cam_target == p.cam_reference and p.frame_target != p.frame_reference
            dt = abs(p.frame_target - p.frame_reference) / unit.fps
            assert p.time_gap_s == pytest.approx(dt, abs=1e-6)
            assert min_gap - 0.5 / unit.fps - 1e-9 <= dt <= max_gap + 0.5 / unit.fps + 1e-9
            assert p.motion is None or (math.isfinite(p.motion) and p.motion >= 0.01)


def test_mine_pairs_seed_and_unit_change_the_draw():
    rng = np.random.default_rng(0)
    obs = {("0", c, f): Observation(keypoints=np.column_stack([rng.uniform(0, 100, (17, 2)), np.ones(17)]))
           for c in ("a", "b", "c") for f in range(40)}
    unit = Unit(name="u", split="train", subject="s", fps=25.0, frames=list(range(40)), cameras=["a", "b", "c"],
                observations=obs, images=("files", lambda c, f: ""))
    one, two = mine_pairs(unit, 6, 6, 1), mine_pairs(unit, 6, 6, 2)
    assert len(one) == len(two) == 12 and one != two
