"""The AIST++ source on a tiny rendered dataset in the exact AIST++ / AIST Dance DB layout."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures_aist import (IGNORED_SEQ, MALFORMED_SEQ, MISSING_DETECTION, PARTIAL_DETECTION, VIEWS, apply_faults,
                           add_sequence_copy, make_aist_fixture, write_video)
from pairgen.real import crop as cropping
from pairgen.real.types import BadUnit
from smpl_fixture import make_smpl_file
from source_checks import check_accounting, console_build_and_verify, iou as _iou, read_manifest as _manifest, \
    read_samples as _samples
from source_checks import skipped_totals as _stats

TRAIN_SEQ, TEST_SEQ = "gBR_sBM_cAll_d04_mBR1_ch02", "gPO_sFM_cAll_d12_mPO3_ch08"
GAPS = ["--min-gap-s", "0.1", "--max-gap-s", "0.4"]  # the fixture's sequences last 0.5 s


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory, synthetic_worker):
    return make_smpl_file(tmp_path_factory.mktemp("aist_smpl") / "SMPL_TEST.pkl", synthetic_worker.generator.body)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, synthetic_worker, smpl_file):
    return make_aist_fixture(tmp_path_factory.mktemp("aist"), synthetic_worker.generator.body, smpl_file)


def _reader(truth, **options):
    from pairgen.sources.aist import AistReader

    return AistReader(str(truth["root"]), options)


def _build(truth, out: Path, *extra: str, root: Path | None = None) -> int:
    from pairgen.cli import main

    rc = main(["build", "--source", "aist", "--root", str(root or truth["root"]), "--out", str(out),
               "--local", "--quiet", "--num-pairs", "24", "--shard-size", "50", *GAPS, *extra])
    if rc == 0:
        check_accounting(out)  # every planned pair built or counted under its reason
    return rc


def _angle(truth, seq, cam_a, cam_b, frame) -> float:
    cams = truth["seqs"][seq]["cameras"]
    p = truth["seqs"][seq]["joints3d"][frame].mean(0)
    da = p - (-cams[cam_a]["R"].T @ cams[cam_a]["t"])
    db = p - (-cams[cam_b]["R"].T @ cams[cam_b]["t"])
    return float(np.degrees(np.arccos(np.clip(da @ db / np.linalg.norm(da) / np.linalg.norm(db), -1, 1))))


def _check_against_truth(truth, out: Path, S: int = 256) -> list[float]:
    """Geometry of every pair against the fixture's ground truth; returns the silhouette IoUs."""
    from fixtures_aist import project

    ious = []
    for s in _samples(out):
        m = s.meta
        seq = m["sequence"]
        g = truth["seqs"][seq]
        assert m["track"] == "0" and m["subject"] == g["subject"] and m["split"] == g["split"]
        if m["kind"] == "cross_view":
            assert m["frame_target"] == m["frame_reference"] and m["camera_target"] != m["camera_reference"]
            want = _angle(truth, seq, m["camera_target"], m["camera_reference"], m["frame_target"])
            assert abs(m["view_angle_deg"] - want) < 0.5, (m["view_angle_deg"], want)
        else:
            assert m["camera_target"] == m["camera_reference"] and m["frame_target"] != m["frame_reference"]
            gap = abs(m["frame_target"] - m["frame_reference"]) / 60.0
            assert abs(m["time_gap_s"] - gap) < 1e-6 and 0.1 - 1 / 120 <= gap <= 0.4 + 1 / 120
        for side, mask in (("target", s.target_mask), ("reference", s.reference_mask)):
            cam, frame = m[f"camera_{side}"], m[f"frame_{side}"]
            assert (cam, frame) != MISSING_DETECTION  # the detector found nobody there
            box = np.array([m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")])
            uv = project(g["cameras"][cam], g["joints3d"][frame])
            inside = cropping.to_crop(uv, box, S)
            assert ((inside > -1) & (inside < S + 1)).all(), (seq, cam, frame)
            gt = cropping.crop_resize(g["masks"][VIEWS.index(cam), frame].astype(np.uint8) * 255, box, S, nearest=True)
            ious.append(_iou(mask > 0, gt > 0))
    return ious


# -- reader ----------------------------------------------------------------------------------------

def test_reader_lists_and_loads_a_sequence(dataset, smpl_file):
    import cv2

    r = _reader(dataset)
    r.check()
    assert r.unit_names() == [(TRAIN_SEQ, "train"), (TEST_SEQ, "test")]  # the ignore-listed copy is dropped
    assert IGNORED_SEQ not in [n for n, _ in r.unit_names()]
    assert _reader(dataset, split="test").unit_names() == [(TEST_SEQ, "test")]
    u = r.load(TRAIN_SEQ)
    g = dataset["seqs"][TRAIN_SEQ]
    assert (u.split, u.subject, u.fps, u.frames, u.cameras) == ("train", "d04", 60.0, list(range(30)), list(VIEWS))
    assert u.silhouette_default == "bgsub" and u.images[0] == "video" and u.skipped == []
    assert u.images[1]["c03"].name == "gBR_sBM_c03_d04_mBR1_ch02.mp4"
    for cam in VIEWS:
        cal, want = u.calibration[cam], g["cameras"][cam]
        assert np.allclose(cal.K, want["K"]) and np.allclose(cal.R, want["R"], atol=1e-9)
        assert np.allclose(cal.t, want["t"]) and np.allclose(cal.dist, want["dist"])
        assert (cal.width, cal.height) == (640, 360)
    assert ("0", *MISSING_DETECTION) not in u.observations
    assert len(u.observations) == 9 * 30 - 1
    part = u.observations[("0", *PARTIAL_DETECTION)].keypoints
    assert (part[:5, 2] == 0).all() and (part[5:, 2] == 1).all() and np.isfinite(part).all()
    k = u.observations[("0", "c02", 3)].keypoints  # a distorted camera: OpenCV projection of the 3D joints
    assert np.abs(u.calibration["c02"].project(u.joints3d("0", 3))[0] - k[:, :2]).max() < 1e-3
    assert np.allclose(u.joints3d("0", 11), g["joints3d"][11], atol=1e-3)
    assert u.meshes is None  # no --smpl-model
    # with the user's SMPL file: scaling * SMPL(pose) + trans in cm reproduces the rendered silhouette
    u = _reader(dataset, smpl_model=str(smpl_file)).load(TRAIN_SEQ)
    V, F = u.meshes("0", 12)
    assert V.shape == (13718, 3) and F.max() < len(V)
    for cam in ("c01", "c05"):
        uv, z = u.calibration[cam].project(V)
        raster = np.zeros((360, 640), np.uint8)
        cv2.fillPoly(raster, list(np.round(uv[F] * 16).astype(np.int32)), 1, shift=4)
        assert _iou(raster > 0, g["masks"][VIEWS.index(cam), 12]) > 0.8


def test_reader_explicit_dirs_and_wholebody_schema(dataset, tmp_path):
    anno, vids = tmp_path / "aist_plusplus_final", tmp_path / "dance_videos"
    shutil.copytree(dataset["annotations"], anno, ignore=shutil.ignore_patterns("videos"))
    vids.symlink_to(dataset["videos"])
    from pairgen.sources.aist import AistReader

    r = AistReader(str(tmp_path / "elsewhere"), {"annotations": str(anno), "videos": str(vids)})
    r.check()
    ref = r.load(TEST_SEQ)
    assert len(ref.cameras) == 9
    # AIST++ zip unpacked under ROOT/aist_plusplus_final, videos in ROOT/videos: found without options
    (tmp_path / "videos").symlink_to(dataset["videos"])
    assert AistReader(str(tmp_path), {}).load(TEST_SEQ).cameras == ref.cameras
    # the whole-body alternative (nested views/frames/people x 133 joints, no det_scores)
    p = anno / "keypoints2d" / f"{TEST_SEQ}.pkl"
    kp = pickle.loads(p.read_bytes())["keypoints2d"]
    nested = [[[np.concatenate([kp[v, i], np.full((116, 3), 0.3, np.float32)])] if np.isfinite(kp[v, i]).any() else []
               for i in range(kp.shape[1])] for v in range(9)]
    p.write_bytes(pickle.dumps({"keypoints2d": nested, "timestamps": [np.arange(kp.shape[1])] * 9}))
    alt = r.load(TEST_SEQ)
    assert alt.observations.keys() == ref.observations.keys()
    for key, o in ref.observations.items():
        assert np.allclose(alt.observations[key].keypoints, o.keypoints)
    # no split files: every sequence is "train"
    shutil.rmtree(anno / "splits")
    assert {s for _, s in AistReader("", {"annotations": str(anno), "videos": str(vids)}).unit_names()} == {"train"}


def test_reader_known_bad_views(dataset, tmp_path):
    """c05 of gBR_sBM_cAll_d04_mBR0_ch01 is not synchronised; c07 of gJB_sBM_cAll_d07_mJB3_ch05 is 640x480."""
    root = tmp_path / "root"
    shutil.copytree(dataset["root"], root)
    truth = dict(dataset, root=root, annotations=root, videos=root / "videos", seqs=dict(dataset["seqs"]))
    add_sequence_copy(truth, TRAIN_SEQ, "gBR_sBM_cAll_d04_mBR0_ch01")
    add_sequence_copy(truth, TRAIN_SEQ, "gJB_sBM_cAll_d07_mJB3_ch05")
    write_video(root / "videos" / "gJB_sBM_c07_d07_mJB3_ch05.mp4", [np.zeros((480, 640, 3), np.uint8)] * 3)
    r = _reader(truth)
    u = r.load("gBR_sBM_cAll_d04_mBR0_ch01")
    assert "c05" not in u.cameras and len(u.cameras) == 8
    assert not any(c == "c05" for _, c, _ in u.observations)
    assert u.skipped == [("c05", "camera not synchronised (known AIST issue)", "")]
    u = r.load("gJB_sBM_cAll_d07_mJB3_ch05")
    assert "c07" not in u.cameras and len(u.cameras) == 8
    assert u.skipped[0][:2] == ("c07", "video size does not match calibration") and "640x480" in u.skipped[0][2]
    # a same-aspect downscaled video is usable: intrinsics and keypoints follow the video size
    write_video(root / "videos" / "gJB_sBM_c07_d07_mJB3_ch05.mp4", [np.zeros((180, 320, 3), np.uint8)] * 30)
    u = r.load("gJB_sBM_cAll_d07_mJB3_ch05")
    assert "c07" in u.cameras and (u.calibration["c07"].width, u.calibration["c07"].height) == (320, 180)
    k = u.observations[("0", "c07", 4)].keypoints
    uv = u.calibration["c07"].project(u.joints3d("0", 4))[0]
    assert np.abs(uv - k[:, :2]).max() < 1.0  # half size
    # a video whose container cannot be opened (e.g. a cut download without its index): camera skipped
    (root / "videos" / "gJB_sBM_c02_d07_mJB3_ch05.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    u = r.load("gJB_sBM_cAll_d07_mJB3_ch05")
    assert "c02" not in u.cameras and ("c02", "unreadable video") in [x[:2] for x in u.skipped]
    # no camera left: the unit is bad
    for cam in VIEWS:
        (root / "videos" / f"gJB_sBM_{cam}_d07_mJB3_ch05.mp4").unlink()
    with pytest.raises(BadUnit, match="no usable camera"):
        r.load("gJB_sBM_cAll_d07_mJB3_ch05")


# -- builds ----------------------------------------------------------------------------------------

def test_build_bgsub_default(dataset, tmp_path):
    from pairgen.cli import main

    out = tmp_path / "bgsub"
    assert _build(dataset, out) == 0
    assert main(["verify", str(out)]) == 0
    df = _manifest(out)
    assert len(df) == 24 and set(df["kind"]) == {"cross_view", "cross_pose"}
    assert set(df["sequence"]) == {TRAIN_SEQ, TEST_SEQ} and set(df["split"]) == {"train", "test"}
    assert set(df["track"]) == {"0"} and set(df["subject"]) == {"d04", "d12"}
    assert (df["silhouette_method"] == "bgsub").all()
    ious = _check_against_truth(dataset, out)
    print("bgsub IoU mean", round(float(np.mean(ious)), 3), "min", round(float(min(ious)), 3), "n", len(ious))
    assert np.mean(ious) >= 0.7 and min(ious) >= 0.6


def test_build_keypoints(dataset, tmp_path):
    out = tmp_path / "kp"
    assert _build(dataset, out, "--silhouette", "keypoints", "--kinds", "cross_view", "--min-view-angle-deg", "60") == 0
    df = _manifest(out)
    assert set(df["kind"]) == {"cross_view"} and (df["view_angle_deg"] >= 60).all()
    ious = _check_against_truth(dataset, out)
    print("keypoints IoU mean", round(float(np.mean(ious)), 3), "min", round(float(min(ious)), 3), "n", len(ious))
    assert np.mean(ious) >= 0.5 and min(ious) >= 0.4


def test_build_smpl(dataset, smpl_file, tmp_path):
    out = tmp_path / "smpl"
    assert _build(dataset, out, "--silhouette", "smpl", "--smpl-model", str(smpl_file)) == 0
    ious = _check_against_truth(dataset, out)
    print("smpl IoU mean", round(float(np.mean(ious)), 3), "min", round(float(min(ious)), 3), "n", len(ious))
    assert np.mean(ious) >= 0.9 and min(ious) >= 0.8


def test_console_script_split_train(dataset, tmp_path):
    """A real `pairgen` process; --split train keeps only the train sequence."""
    out = tmp_path / "train"
    df = console_build_and_verify("aist", dataset["root"], out, "--num-pairs", "8", "--split", "train",
                                  "--silhouette", "keypoints", *GAPS)
    assert len(df) == 8 and set(df["split"]) == {"train"} and set(df["sequence"]) == {TRAIN_SEQ}


def test_faults_are_skipped_and_named(dataset, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(dataset["root"], root)
    truth = dict(dataset, root=root, annotations=root, videos=root / "videos", seqs=dict(dataset["seqs"]))
    apply_faults(truth, ("missing_video", "truncated_video", "malformed_keypoints"))
    out = tmp_path / "faults"
    assert _build(truth, out, "--silhouette", "keypoints", root=root) == 0
    df = _manifest(out)
    assert len(df) > 0 and MALFORMED_SEQ not in set(df["sequence"])
    used = set(zip(df["sequence"], df["camera_target"])) | set(zip(df["sequence"], df["camera_reference"]))
    assert (TRAIN_SEQ, "c03") not in used  # missing video: camera skipped
    st = _stats(out)
    named = {u["unit"]: u["reason"] for u in st["skipped_units"]}
    print("fault stats", st["skipped"])
    assert named.get(MALFORMED_SEQ, "").startswith("bad unit: malformed keypoints2d pickle"), named
    assert (TEST_SEQ, "c06") not in used or any(u.startswith(f"{TEST_SEQ}/c06") for u in named)
    assert any(u.startswith(f"{TEST_SEQ}/c06") or u == TEST_SEQ for u in named), named  # truncated video named
    assert named.get(f"{TRAIN_SEQ}/c03") == "missing video", named  # counted once per build of the unit


# -- the hard variant: the dancer across the frame edges, tiny, undetected; missing/cut/resized videos --

@pytest.fixture(scope="module")
def hard_dataset(tmp_path_factory, synthetic_worker, smpl_file):
    return make_aist_fixture(tmp_path_factory.mktemp("aist_hard"), synthetic_worker.generator.body, smpl_file,
                             seqs=((TRAIN_SEQ, "train"),), width=320, height=180, hard=True, keep_masks=False)


def _at(unit, track, cam, frame):
    return cam  # how the fixture names a video: its camera


def _hard_case(truth):
    hard = truth["hard"]

    def case_of(unit, track, cam, frame):
        if cam == hard["tiny"]:
            return True, {"person too small"}
        if (unit, cam) == hard["truncated"]:
            return False, {"frame not decoded"}  # frames past the cut
        if cam in hard["edges"]:
            return False, {"person mostly outside the frame"}
        return None
    return case_of


def test_build_dancer_across_frame_edges(hard_dataset, tmp_path):
    """Regression: a dancer near the edge of a video frame needs a padded crop; frames from videos are
    VideoImages (no ``ndim``), which crashed crop_resize and failed the whole shard."""
    from source_checks import EDGES, check_padded_crops, hard_build, hard_frame_hw, pair_skips

    out = tmp_path / "edges"
    hard_build("aist", hard_dataset["root"], out, "--num-pairs", "30", "--image-size", "128", *GAPS)
    assert not (out / "failures-aist.json").exists()
    assert not any(p["reason"].startswith("internal error") for p in pair_skips(out))
    samples = _samples(out)
    assert len(samples) > 0 and {s.meta["silhouette_method"] for s in samples} == {"bgsub"}
    crossed = check_padded_crops(samples, hard_frame_hw(hard_dataset["hard"], _at,
                                                        (hard_dataset["height"], hard_dataset["width"])))
    assert all(crossed[e] > 0 for e in EDGES), crossed


def test_hard_fixture(hard_dataset, tmp_path):
    """Every planned pair is built or skipped for its true reason; edge crops are padded; verify passes."""
    from source_checks import check_hard_build, hard_build, named_skips

    truth, hard = hard_dataset, hard_dataset["hard"]
    out = tmp_path / "hard"
    hard_build("aist", truth["root"], out, "--num-pairs", "60", "--image-size", "128", "--silhouette", "keypoints",
               *GAPS)
    samples = check_hard_build("aist", out, _hard_case(truth), hard, _at, (truth["height"], truth["width"]),
                               needed=("person too small",)).samples
    used = {(s.meta["sequence"], s.meta[f"camera_{k}"], s.meta[f"frame_{k}"]) for s in samples
            for k in ("target", "reference")}
    for cam, frames in hard["unseen"].items():  # undetected: never planned
        assert not any((c, f) in {(cam, x) for x in frames} for _, c, f in used)
    assert (hard["copy"], "c01") not in {(u, c) for u, c, _ in used}  # missing video
    assert (hard["copy"], "c09") not in {(u, c) for u, c, _ in used}  # another aspect: camera skipped
    assert any(c == hard["half_size"] for _, c, _ in used)  # half size, same aspect: rescaled and used
    named = named_skips(out)
    assert named[f"{hard['copy']}/c01"] == "missing video"
    assert named[f"{hard['copy']}/c09"] == "video size does not match calibration"
    assert named[MALFORMED_SEQ].startswith("bad unit: malformed keypoints2d pickle")
