"""InterHand2.6M source: reader on a rendered fixture in the real layout, end-to-end builds,
geometry and silhouettes against the fixture's ground truth, faults."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_interhand import make_interhand_fixture  # noqa: E402
from source_checks import check_accounting, console_build_and_verify  # noqa: E402

TRAIN_A = "train/Capture0/0000_fixture_clap"
TRAIN_B = "train/Capture1/0001_fixture_wave"
VAL = "val/Capture0/ROM01_fixture_interaction"


@pytest.fixture(scope="module")
def mano_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mano")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, synthetic_worker, mano_dir):
    root = tmp_path_factory.mktemp("interhand") / "InterHand2.6M"
    truth = make_interhand_fixture(root, synthetic_worker.generator.body, mano_dir=mano_dir)
    return root, truth


def _build(root, out, *extra):
    from pairgen.cli import main

    rc = main(["build", "--source", "interhand", "--root", str(root), "--out", str(out), "--local", "--quiet",
               "--num-pairs", "60", "--shard-size", "30", *extra])
    if rc == 0:
        check_accounting(out)  # every planned pair built or counted under its reason
    return rc


def _samples(out):
    for url in layout.shard_urls(out):
        for key, members in iter_tar_samples(url):
            yield decode_sample(key, members)


def _stats(out):
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "stats").glob("*.json"))]


@pytest.fixture(scope="module")
def keypoints_build(dataset, tmp_path_factory):
    from pairgen.cli import main

    root, _ = dataset
    out = tmp_path_factory.mktemp("ih_kp") / "shards"
    assert _build(root, out) == 0
    assert main(["verify", str(out)]) == 0
    return out


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _gt_crop_mask(mask, box, size):
    from pairgen.real.crop import crop_resize

    return crop_resize(mask.astype(np.uint8) * 255, np.array(box), size, nearest=True) > 127


def _crop_points(pts, box, size):
    x0, y0, x1, _ = box
    s = size / (x1 - x0)
    return np.stack([(pts[:, 0] - x0 + 0.5) * s - 0.5, (pts[:, 1] - y0 + 0.5) * s - 0.5], 1)


def _check_pairs(samples, truth, method_min_iou):
    """Geometry of every pair against the fixture; returns (mean IoU, counts)."""
    units = truth["units"]
    ious, counts = [], {"cross_view": 0, "cross_pose": 0}
    for s in samples:
        m = s.meta
        u = units[m["sequence"]]
        assert m["split"] == u.split and m["subject"] == str(u.subject) and m["track"] in ("right", "left")
        counts[m["kind"]] += 1
        ft, fr, ct, cr = m["frame_target"], m["frame_reference"], m["camera_target"], m["camera_reference"]
        if m["kind"] == "cross_view":
            assert ft == fr and ct != cr and m["time_gap_s"] is None
            X = u.joints[ft][m["track"]]  # mm
            c = X.mean(0)
            ca, cb = (u.cameras[k].center * 1000.0 for k in (ct, cr))
            da, db = c - ca, c - cb
            ang = np.degrees(np.arccos(np.clip(da @ db / np.linalg.norm(da) / np.linalg.norm(db), -1, 1)))
            assert abs(ang - m["view_angle_deg"]) < 0.05, (ang, m["view_angle_deg"])
        else:
            assert ct == cr and ft != fr
            assert abs(m["time_gap_s"] - abs(u.times[ft] - u.times[fr])) < 1e-6
        size = s.target.shape[0]
        for side, cam, frame, mask in (("target", ct, ft, s.target_mask), ("reference", cr, fr, s.reference_mask)):
            box = [m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")]
            cm = u.cameras[cam]
            uv, _ = cm.project(u.joints[frame][m["track"]] / 1000.0)
            inside = (uv[:, 0] >= 0) & (uv[:, 0] < cm.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cm.height)
            q = _crop_points(uv[inside], box, size)
            assert ((q >= -0.5) & (q <= size - 0.5)).all(), "a projected joint falls outside the crop"
            gt = _gt_crop_mask(u.masks[(m["track"], cam, frame)], box, size)
            ious.append(_iou(mask > 127, gt))
    mean_iou = float(np.mean(ious))
    assert mean_iou >= method_min_iou, mean_iou
    return mean_iou, counts


def test_reader_units_observations_and_time(dataset):
    from pairgen.sources.interhand import InterHandReader

    root, truth = dataset
    r = InterHandReader(str(root), {})
    r.check()
    assert r.unit_names() == [(TRAIN_A, "train"), (TRAIN_B, "train"), (VAL, "val")]
    for name, ut in truth["units"].items():
        u = r.load(name)
        assert u.kind == "hand" and u.split == ut.split and u.subject == str(ut.subject)
        assert u.frames == ut.frames and u.skipped == []
        # frame ids step by 18 (train, 90 fps numbering) or 6 (val, 30 fps numbering): 0.2 s apart
        assert u.fps == (90.0 if ut.split == "train" else 30.0)
        for fa in ut.frames:
            assert abs((fa - ut.frames[0]) / u.fps - ut.times[fa]) < 1e-9
        for (hand, cam, fr), n in ut.visible.items():
            obs = u.observations.get((hand, cam, fr))
            assert (obs is not None) == (n >= 8)
            if obs is None:
                continue
            uv, _ = ut.cameras[cam].project(ut.joints[fr][hand] / 1000.0)
            ok = obs.keypoints[:, 2] > 0
            assert ok.sum() == n
            assert np.abs(obs.keypoints[ok, :2] - uv[ok]).max() < 0.05  # mm JSON rounding
        for cam, cal in u.calibration.items():
            assert np.allclose(cal.center, ut.cameras[cam].center * 1000.0, atol=1e-6)
            assert u.image_path(cam, ut.frames[0]).is_file()


def test_build_keypoints_geometry_and_iou(dataset, keypoints_build):
    root, truth = dataset
    df = pd.read_parquet(keypoints_build / "manifest")
    assert set(df["kind"]) == {"cross_view", "cross_pose"}
    assert df["track"].isin(["right", "left"]).all() and df["split"].notna().all() and df["subject"].notna().all()
    assert set(df["split"]) == {"train", "val"}
    assert (df["silhouette_method"] == "keypoints").all()
    iou, counts = _check_pairs(list(_samples(keypoints_build)), truth, 0.5)
    assert abs(counts["cross_view"] - counts["cross_pose"]) <= 0.2 * sum(counts.values()), counts
    print(f"keypoints IoU {iou:.3f} pairs {counts}")


def test_build_bgsub_iou(dataset, tmp_path):
    root, truth = dataset
    out = tmp_path / "shards"
    assert _build(root, out, "--silhouette", "bgsub", "--num-pairs", "30") == 0
    iou, counts = _check_pairs(list(_samples(out)), truth, 0.7)
    print(f"bgsub IoU {iou:.3f} pairs {counts}")


def test_build_smpl_with_mano_iou(dataset, mano_dir, tmp_path):
    """--silhouette smpl renders the dataset's MANO fits (test-made MANO files, fits written by the
    fixture in InterHand's _MANO_NeuralAnnot.json layout)."""
    root, truth = dataset
    out = tmp_path / "shards"
    assert _build(root, out, "--silhouette", "smpl", "--mano-model", str(mano_dir), "--num-pairs", "30") == 0
    df = pd.read_parquet(out / "manifest")
    assert (df["silhouette_method"] == "smpl").all()
    iou, counts = _check_pairs(list(_samples(out)), truth, 0.9)
    print(f"smpl (MANO) IoU {iou:.3f} pairs {counts}")


def test_split_train_only_and_console_script(dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "shards"
    df = console_build_and_verify("interhand", root, out, "--split", "train", "--num-pairs", "16", "--shard-size", "8")
    assert len(df) > 0 and (df["split"] == "train").all()
    assert df["sequence"].str.startswith("train/").all()


def test_faults_are_skipped_and_named(dataset, synthetic_worker, tmp_path):
    from pairgen.cli import main
    from pairgen.sources.interhand import InterHandReader

    root = tmp_path / "ih"
    truth = make_interhand_fixture(root, synthetic_worker.generator.body, frames=6, val_frames=4,
                                   faults=("corrupt_jpeg", "missing_camera", "bad_camera", "bad_joint3d"))
    # the reader: bad units raise BadUnit with the reason; the missing camera folder is counted
    from pairgen.real.types import BadUnit

    r = InterHandReader(str(root), {})
    with pytest.raises(BadUnit, match="camera.json: capture 1 malformed"):
        r.load(TRAIN_B)
    with pytest.raises(BadUnit, match="joint_3d.json: malformed"):
        r.load(VAL)
    u = r.load(TRAIN_A)
    cam = truth["faults"]["missing_camera"][1]
    assert cam not in u.cameras and u.skipped == [(f"cam{cam}", "image folder missing", "6 images skipped")]

    out = tmp_path / "shards"
    assert main(["build", "--source", "interhand", "--root", str(root), "--out", str(out), "--local", "--quiet",
                 "--num-pairs", "60", "--shard-size", "100"]) == 0
    assert main(["verify", str(out)]) == 0
    check_accounting(out)
    stats = _stats(out)
    named = [s for st in stats for s in st.get("skipped_units", [])]
    by_unit = {s["unit"]: s["reason"] for s in named}
    assert "camera.json" in by_unit[TRAIN_B] and "malformed" in by_unit[TRAIN_B]
    assert "joint_3d.json" in by_unit[VAL]
    bad_jpeg = Path(truth["faults"]["corrupt_jpeg"])
    frame = int(bad_jpeg.stem[5:])
    cam_bad = bad_jpeg.parent.name[3:]
    hits = [s for s in named if s["unit"].startswith(TRAIN_A) and
            (f"{cam_bad}:{frame}" in s["unit"] or bad_jpeg.name in (s.get("detail") or "") + s["reason"] + s["unit"])]
    assert hits, named
    # the reader's note on the missing camera folder reaches the stats, with the unit named
    assert any(s["unit"] == f"{TRAIN_A}/cam{cam}" and s["reason"] == "image folder missing" for s in named), named
    df = pd.read_parquet(out / "manifest")
    assert set(df["sequence"]) == {TRAIN_A}
    assert not ((df["camera_target"] == cam) | (df["camera_reference"] == cam)).any()
    print("skipped:", {k: v for st in stats for k, v in st.get("skipped", {}).items()})


def test_reader_options_from_the_command_line(dataset):
    """Regression: ``--reader-option fps=5`` (a string, as the CLI passes it) was refused as
    "must be 5 or 30 (got 5)"; min_hand_joints was read unchecked while loading."""
    from pairgen.sources.interhand import InterHandReader

    root, truth = dataset
    for fps, rate in (("5", 90.0), ("30", 540.0)):  # train ids step by 18: release fps x 18 ids per second
        r = InterHandReader(str(root), {"fps": fps})
        r.check()
        assert r.load(TRAIN_A).fps == rate
    strict = InterHandReader(str(root), {"min_hand_joints": "21"}).load(TRAIN_A)
    assert strict.observations and all((o.keypoints[:, 2] > 0).all() for o in strict.observations.values())
    for bad, match in (({"fps": "7"}, "fps=7"), ({"min_hand_joints": "many"}, "min_hand_joints=many"),
                       ({"min_hand_joints": "0"}, "min_hand_joints=0")):
        with pytest.raises(ValueError, match=match):
            InterHandReader(str(root), bad).check()


# -- the hard variant: the right hand across every frame edge (one camera each), both hands tiny in an
#    extra camera, hands unannotated for a while (the left one only mid-sequence); a missing, a corrupt
#    and a half-size image -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hard(tmp_path_factory, synthetic_worker):
    """One train unit (8 frames x 6 cameras), built end to end with keypoint silhouettes."""
    from source_checks import hard_build

    root = tmp_path_factory.mktemp("interhand_hard") / "InterHand2.6M"
    truth = make_interhand_fixture(root, synthetic_worker.generator.body, hard=True)
    out = tmp_path_factory.mktemp("interhand_hard_out") / "out"
    hard_build("interhand", root, out, "--num-pairs", "80", "--image-size", "128", "--min-gap-s", "0.1",
               "--max-gap-s", "1.5")
    return truth, out


def _at(unit, track, cam, frame):
    return cam, frame  # how the fixture names an image: camera and frame


def _hard_case(hard: dict, **options):
    from source_checks import OUTSIDE, hard_case

    def edge_of(unit, track, cam, frame):
        return "tiny" if cam == hard["tiny"] and (cam, frame) != hard["half_size"] else hard["edges"].get(cam)

    # across an edge, the joints inside the image may span a small part of the hand
    return hard_case(hard, _at, edge_of, edge_reasons=(OUTSIDE, "person too small"), **options)


def test_hard_fixture(hard):
    """Every planned pair is built or skipped for its true reason, crops across the edges are padded,
    unannotated hands and missing images are never planned, verify passes (in the fixture)."""
    from source_checks import SIZE_ANY, check_hard_build

    truth, out = hard
    h = truth["hard"]
    cameras = truth["units"][h["unit"]].cameras
    # the image of another size: its true reason is checked by the next test
    built = check_hard_build("interhand", out, _hard_case(h, resized=SIZE_ANY), h, _at,
                             lambda cam: (cameras[cam].height, cameras[cam].width))
    for hand, frames in h["unlabelled"].items():
        assert not {(hand, f) for f in frames} & {(t, f) for _, t, _, f in built.planned}  # never planned
    assert h["missing"] not in {(c, f) for *_, c, f in built.planned}
    named = {u["unit"]: u["reason"] for s in _stats(out) for u in s["skipped_units"]}
    assert named[f"{h['unit']}/images"] == "image files listed in _data.json missing"


def test_hard_fixture_image_of_another_size_is_skipped_for_its_size(hard):
    """An image written at half size (_data.json states each image's width and height): the projected
    joints are not its pixels, so its pairs are skipped for that reason."""
    from source_checks import check_half_size_skipped

    truth, out = hard
    check_half_size_skipped(out, _hard_case(truth["hard"]), truth["hard"], _at)


# -- one projection call per camera: the same observations as one call per image -----------------
def _observe_one_image_at_a_time(cm, cam, rows, world, valid3, min_joints):
    """The reference: each image projected and judged on its own."""
    from pairgen.sources.interhand import HANDS

    out = {}
    for fr, _, w, h, ann in rows:
        uv, z = cm.project(np.nan_to_num(world[fr]))
        ok = valid3[fr] & (z > 1e-6)
        ok &= (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
        only = None
        if ann is not None:
            if ann["joint_valid"].shape == (42,):
                ok &= ann["joint_valid"] > 0
            if ann.get("hand_type_valid") and ann.get("hand_type") in HANDS:
                only = ann["hand_type"]
        for hi, hand in enumerate(HANDS):
            okh = ok[21 * hi:21 * hi + 21]
            if (only is not None and hand != only) or okh.sum() < min_joints:
                continue
            pts = uv[21 * hi:21 * hi + 21]
            kps = np.concatenate([pts, okh[:, None].astype(np.float64)], axis=1)
            kps[~okh, :2] = 0.0
            q = pts[okh]
            out[(hand, cam, fr)] = (np.array([q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()]), kps)
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), min_joints=st.integers(1, 21),
       behind=st.floats(0, 1), nan=st.floats(0, 0.3))
def test_camera_batch_projection_equals_per_image(seed, n, min_joints, behind, nan):
    """Hands crossing the frame edges, behind the camera, NaN joints, images of different sizes,
    annotations that drop joints or name one hand: bit-identical keypoints and boxes, same order."""
    from pairgen.real.types import CameraModel
    from pairgen.sources.interhand import _observe

    rng = np.random.default_rng(seed)
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    cm = CameraModel(K=np.array([[rng.uniform(300, 2000), 0, rng.uniform(0, 512)],
                                 [0, rng.uniform(300, 2000), rng.uniform(0, 334)], [0, 0, 1.0]]),
                     R=R, t=rng.normal(size=3) * 200)
    world, valid3, rows = {}, {}, []
    for fr in sorted(rng.choice(10_000, n, replace=False).tolist()):
        c = R.T @ (np.array([0, 0, 600.0]) - cm.t)  # in front of the camera...
        X = c + rng.normal(size=(42, 3)) * rng.uniform(5, 400)  # ...spread past the frame edges
        if rng.random() < behind:
            X[rng.random(42) < 0.5] = R.T @ (np.array([0, 0, -300.0]) - cm.t)  # behind it
        X[rng.random((42, 3)) < nan] = np.nan
        world[fr] = X
        valid3[fr] = (rng.random(42) < 0.9) & np.isfinite(X).all(1)
        w, h = [(512, 334), (334, 512), (1, 1), (97, 33)][int(rng.integers(4))]
        ann = None
        if rng.random() < 0.6:
            ann = {"joint_valid": (rng.random(42 if rng.random() < 0.8 else 21) < 0.8).astype(np.float32),
                   "hand_type": ["right", "left", "interacting", None][int(rng.integers(4))],
                   "hand_type_valid": bool(rng.random() < 0.7)}
        rows.append((fr, f"image{fr}.jpg", w, h, ann))
    with np.errstate(all="ignore"):
        want = _observe_one_image_at_a_time(cm, "400264", rows, world, valid3, min_joints)
        got: dict = {}
        _observe(cm, "400264", rows, world, valid3, min_joints, got)
    assert list(got) == list(want)
    for key, (box, kps) in want.items():
        assert got[key].box.tobytes() == box.tobytes() and got[key].keypoints.tobytes() == kps.tobytes(), key
