"""The 3DPW source on a tiny rendered dataset in the exact 3DPW layout (two actors, moving camera)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures_threedpw import (CORRUPT_IMAGES, INVALID, MALFORMED_SEQ, MISSING_IMAGES, NO_2D, SHORT_SEQ,
                               make_threedpw_fixture, project)
from pairgen.real import crop as cropping
from pairgen.real.types import BadUnit
from smpl_fixture import make_smpl_file
from source_checks import check_accounting, console_build_and_verify, iou as _iou, read_manifest as _manifest, \
    read_samples as _samples
from source_checks import skipped_totals as _stats

TRAIN, TEST, VAL = "courtyard_walkPair_00", "downtown_walkPair_01", "outdoors_walkPair_02"
GAPS = ["--min-gap-s", "0.1", "--max-gap-s", "0.5"]  # the fixture's sequences last 20 frames (0.67 s)
OP18_TO_COCO = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
OP18_FROM_SMPL = (24, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28)  # GT rows (24.. = face points)


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory, synthetic_worker):
    return make_smpl_file(tmp_path_factory.mktemp("tdpw_smpl") / "SMPL_TEST.pkl", synthetic_worker.generator.body)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, smpl_file):
    return make_threedpw_fixture(tmp_path_factory.mktemp("3dpw"), smpl_file)


def _reader(truth, **options):
    from pairgen.sources.threedpw import ThreeDPWReader

    return ThreeDPWReader(str(truth["root"]), options)


def _build(truth, out: Path, *extra: str, root: Path | None = None, n: int = 24) -> int:
    from pairgen.cli import main

    rc = main(["build", "--source", "3dpw", "--root", str(root or truth["root"]), "--out", str(out),
               "--local", "--quiet", "--num-pairs", str(n), "--shard-size", "50", *GAPS, *extra])
    if rc == 0:
        check_accounting(out)  # every planned pair built or counted under its reason
    return rc


def _check_against_truth(truth, out: Path, S: int = 256) -> tuple[list[float], list[float]]:
    """Every pair against the fixture's truth; returns (IoUs with the own actor's visible mask,
    fractions of the silhouette lying on the other actor)."""
    ious, on_other = [], []
    seen_other = 0
    for s in _samples(out):
        m = s.meta
        g = truth["seqs"][m["sequence"]]
        a = int(m["track"])
        assert m["kind"] == "cross_pose" and m["camera_target"] == m["camera_reference"] == "cam0"
        assert m["subject"] == m["sequence"] and m["split"] == g["split"]
        assert m["frame_target"] != m["frame_reference"]
        gap = abs(m["frame_target"] - m["frame_reference"]) / 30.0
        assert abs(m["time_gap_s"] - gap) < 1e-6 and 0.1 - 1 / 60 <= gap <= 0.5 + 1 / 60
        for side, mask in (("target", s.target_mask), ("reference", s.reference_mask)):
            frame = m[f"frame_{side}"]
            assert g["actors"][a]["valid"][frame], (m["sequence"], a, frame)  # campose_valid respected
            box = np.array([m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")])
            uv = project(g["K"], g["cam_poses"][frame], g["actors"][a]["joints"][frame])
            inside = cropping.to_crop(uv, box, S)
            assert ((inside > -1) & (inside < S + 1)).all(), (m["sequence"], a, frame)
            crop = lambda mk: cropping.crop_resize(mk.astype(np.uint8) * 255, box, S, nearest=True) > 0  # noqa: E731
            own = crop(g["actors"][a]["masks"][frame])
            sil = mask > 0
            ious.append(_iou(sil, own))
            for b, other in enumerate(g["actors"]):
                if b != a:
                    o = crop(other["masks"][frame])
                    seen_other += bool(o.any())
                    on_other.append(float((sil & o).sum() / max(sil.sum(), 1)))
    print("crops showing the other actor", seen_other, "of", len(on_other))
    assert seen_other > 0  # the other actor does show up in some crops
    return ious, on_other


# -- reader ----------------------------------------------------------------------------------------

def test_reader_lists_and_loads_a_sequence(dataset, smpl_file):
    import cv2

    r = _reader(dataset)
    r.check()
    assert r.unit_names() == [(TRAIN, "train"), (TEST, "test"), (VAL, "val")]
    assert _reader(dataset, split="val").unit_names() == [(VAL, "val")]
    u = r.load(TRAIN)
    g = dataset["seqs"][TRAIN]
    assert (u.split, u.subject, u.fps, u.cameras, u.frames) == ("train", TRAIN, 30.0, ["cam0"], list(range(20)))
    assert u.images[0] == "files" and u.image_path("cam0", 7).name == "image_00007.jpg"
    assert u.silhouette_default == "keypoints" and u.meshes is None and u.skipped == []
    cal = u.calibration["cam0"]
    assert np.allclose(cal.K, g["K"]) and np.allclose(cal.R, np.eye(3)) and np.allclose(cal.t, 0)
    assert (cal.width, cal.height) == (360, 640)
    # one track per actor; campose_valid False frames are never observed
    for a, bad in INVALID.items():
        for f in range(20):
            assert ((str(a), "cam0", f) in u.observations) == (f not in bad)
    assert len(u.observations) == 40 - sum(len(b) for b in INVALID.values())
    # poses2d (OpenPose-18) -> COCO-17; conf 1
    k = u.observations[("0", "cam0", 11)].keypoints
    want = project(g["K"], g["cam_poses"][11], g["actors"][0]["joints"][11][list(OP18_FROM_SMPL)])
    assert np.abs(k[:, :2] - want[list(OP18_TO_COCO)]).max() < 1e-6 and (k[:, 2] == 1).all()
    # a frame without 2D detections: SMPL jointPositions projected with that frame's camera (no eyes/ears)
    a, f = 1, NO_2D[1][0]
    k = u.observations[(str(a), "cam0", f)].keypoints
    smpl24 = project(g["K"], g["cam_poses"][f], g["actors"][a]["joints"][f][:24])
    assert (k[1:5, 2] == 0).all() and (k[5:, 2] == 1).all() and k[0, 2] == 1
    assert np.abs(k[5:, :2] - smpl24[[16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8]]).max() < 1e-6
    assert np.abs(k[0, :2] - smpl24[15]).max() < 1e-6  # nose slot = head joint
    # joints3d: the frame's camera coordinates, so cam0 (identity) projects them into that frame
    assert np.abs(cal.project(u.joints3d("1", 13))[0] - smpl24_frame(g, 1, 13)).max() < 1e-6
    # meshes with the user's SMPL file: betas[:10], poses, trans -> that frame's camera coordinates
    u = _reader(dataset, smpl_model=str(smpl_file)).load(TRAIN)
    assert u.silhouette_default == "smpl"
    for a in (0, 1):
        for f in (2, 15):
            V, F = u.meshes(str(a), f)
            assert V.shape == (13718, 3) and F.max() < len(V)
            uv, z = cal.project(V)
            raster = np.zeros((640, 360), np.uint8)
            for tri in np.round(uv[F] * 16).astype(np.int32):
                cv2.fillConvexPoly(raster, tri, 1, shift=4)
            assert _iou(raster > 0, g["actors"][a]["masks"][f]) > 0.9


def smpl24_frame(g, a, f):
    return project(g["K"], g["cam_poses"][f], g["actors"][a]["joints"][f][:24])


def test_reader_gendered_model_folder_and_bad_pickles(dataset, smpl_file, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("SMPL_MALE.pkl", "SMPL_FEMALE.pkl"):
        shutil.copy(smpl_file, models / name)
    r = _reader(dataset, smpl_model=str(models))
    r.check()
    u = r.load(TEST)
    V0, _ = u.meshes("0", 4)
    ref = _reader(dataset, smpl_model=str(smpl_file)).load(TEST)
    assert np.allclose(V0, ref.meshes("0", 4)[0], atol=1e-5)
    assert set(r._models) == {"neutral", "male"}  # check() loads one; actor 0 is 'm'
    u.meshes("1", 4)
    assert set(r._models) == {"neutral", "male", "female"}
    with pytest.raises(ValueError, match="not a loadable SMPL"):
        _reader(dataset, smpl_model=str(tmp_path)).check()
    # an unreadable pickle / a pickle without the camera keys: BadUnit naming the problem
    root = tmp_path / "root"
    (root / "sequenceFiles" / "train").mkdir(parents=True)
    (root / "imageFiles").mkdir()
    (root / "sequenceFiles" / "train" / "a_b_00.pkl").write_bytes(b"not a pickle")
    import pickle

    (root / "sequenceFiles" / "train" / "a_c_00.pkl").write_bytes(pickle.dumps({"sequence": "a_c_00"}, protocol=2))
    from pairgen.sources.threedpw import ThreeDPWReader

    r = ThreeDPWReader(str(root), {})
    with pytest.raises(BadUnit, match="malformed sequence pickle a_b_00.pkl"):
        r.load("a_b_00")
    with pytest.raises(BadUnit, match="missing cam_poses"):
        r.load("a_c_00")


# -- builds ----------------------------------------------------------------------------------------

def test_build_keypoints_default(dataset, tmp_path):
    from pairgen.cli import main

    out = tmp_path / "kp"
    assert _build(dataset, out, n=30) == 0
    assert main(["verify", str(out)]) == 0
    df = _manifest(out)
    assert len(df) == 30 and set(df["kind"]) == {"cross_pose"}
    assert set(df["sequence"]) == {TRAIN, TEST, VAL} and set(df["split"]) == {"train", "test", "val"}
    assert set(df["track"]) == {"0", "1"} and (df["subject"] == df["sequence"]).all()
    assert (df["silhouette_method"] == "keypoints").all()
    ious, on_other = _check_against_truth(dataset, out)
    print("keypoints IoU mean", round(float(np.mean(ious)), 3), "min", round(float(min(ious)), 3), "n", len(ious),
          "on other max", round(max(on_other), 4))
    assert np.mean(ious) >= 0.5 and min(ious) >= 0.4
    assert max(on_other) < 0.15


def test_num_pairs_reached_without_cross_view(dataset, tmp_path):
    """One camera: the cross-view share of each unit's quota goes to cross-pose pairs."""
    out = tmp_path / "n"
    assert _build(dataset, out, "--silhouette", "keypoints", n=30) == 0
    assert len(_manifest(out)) == 30


def test_build_smpl(dataset, smpl_file, tmp_path):
    out = tmp_path / "smpl"
    assert _build(dataset, out, "--smpl-model", str(smpl_file)) == 0  # smpl is the default with a model
    df = _manifest(out)
    assert (df["silhouette_method"] == "smpl").all() and set(df["track"]) == {"0", "1"}
    ious, on_other = _check_against_truth(dataset, out)
    print("smpl IoU mean", round(float(np.mean(ious)), 3), "min", round(float(min(ious)), 3), "n", len(ious),
          "on other max", round(max(on_other), 4))
    assert np.mean(ious) >= 0.9 and min(ious) >= 0.8
    assert max(on_other) < 0.15


def test_console_script_split_train(dataset, tmp_path):
    """A real `pairgen` process; --split train keeps only the train sequence."""
    out = tmp_path / "train"
    df = console_build_and_verify("3dpw", dataset["root"], out, "--num-pairs", "8", "--split", "train",
                                  "--kinds", "cross_pose", *GAPS)
    assert len(df) == 8 and set(df["split"]) == {"train"} and set(df["sequence"]) == {TRAIN}


def test_faults_are_skipped_and_named(dataset, tmp_path):
    from fixtures_threedpw import apply_faults

    root = tmp_path / "root"
    shutil.copytree(dataset["root"], root)
    truth = dict(dataset, root=root, seqs=dict(dataset["seqs"]))
    apply_faults(truth, ("short_track", "malformed_pickle", "missing_images", "corrupt_jpeg"))
    u = _reader(truth).load(SHORT_SEQ)
    assert ("actor1", "track too short", "1 usable frame(s)") in u.skipped
    assert not any(t == "1" for t, _, _ in u.observations)
    u = _reader(truth).load(TRAIN)
    assert [s[:2] for s in u.skipped] == [(f"image_{i:05d}.jpg", "missing image") for i in MISSING_IMAGES]
    assert not any(f in MISSING_IMAGES for _, _, f in u.observations)
    out = tmp_path / "faults"
    assert _build(truth, out, root=root, n=60) == 0
    df = _manifest(out)
    assert len(df) > 0 and MALFORMED_SEQ not in set(df["sequence"])
    used = set()
    for side in ("target", "reference"):
        used |= set(zip(df["sequence"], df[f"frame_{side}"]))
    assert not any((TRAIN, f) in used for f in MISSING_IMAGES)
    assert not any((TEST, f) in used for f in CORRUPT_IMAGES)
    assert set(df.loc[df["sequence"] == SHORT_SEQ, "track"]) == {"0"}
    st = _stats(out)
    named = {u["unit"]: u["reason"] for u in st["skipped_units"]}
    print("fault stats", st["skipped"])
    assert named.get(MALFORMED_SEQ, "").startswith("bad unit: malformed sequence pickle"), named
    assert named.get(f"{SHORT_SEQ}/actor1") == "track too short", named
    for i in MISSING_IMAGES:
        assert named.get(f"{TRAIN}/image_{i:05d}.jpg") == "missing image", named
    corrupt = [k for k in named if k.startswith(f"{TEST}/cam0/")]
    assert corrupt and all(named[k].startswith("corrupt JPEG") for k in corrupt), named
    assert {int(k.rsplit("/", 1)[1]) for k in corrupt} <= set(CORRUPT_IMAGES)


# -- the hard variant: actor 0 across every frame edge, both tiny, actor 1 valid mid-sequence only;
#    a corrupt, a half-size and a missing image ----------------------------------------------------------

@pytest.fixture(scope="module")
def hard(tmp_path_factory, smpl_file):
    """One 24-frame sequence, built end to end with keypoint silhouettes."""
    from source_checks import hard_build

    truth = make_threedpw_fixture(tmp_path_factory.mktemp("3dpw_hard"), smpl_file, seqs=(("courtyard_walkPair_00",
                                  "train", 2),), n_frames=24, hard=True, keep_masks=False)
    out = tmp_path_factory.mktemp("3dpw_hard_out") / "out"
    hard_build("3dpw", truth["root"], out, "--num-pairs", "56", "--image-size", "128",
               "--min-gap-s", "0.03", "--max-gap-s", "0.8")
    return truth, out


def test_hard_fixture(hard):
    """Every planned pair is built or skipped for its true reason, crops across the edges are padded,
    invalid frames and missing images are never planned, verify passes (in the fixture)."""
    from source_checks import SIZE_ANY, at_frame, check_hard_build, named_skips, panned_case

    truth, out = hard
    h = truth["hard"]
    # the frame of another size: its true reason is checked by the next test; across an edge: actor 0
    # crosses it, actor 1 is wherever the turn puts them
    built = check_hard_build("3dpw", out, panned_case(h, resized=SIZE_ANY), h, at_frame,
                             (truth["height"], truth["width"]))
    planned = {(t, f) for _, t, _, f in built.planned}
    first, last = h["span"][1]
    assert all(first <= f <= last for t, f in planned if t == "1")  # actor 1's track starts and ends mid-way
    assert h["missing"] not in {f for _, f in planned}
    assert {f for t, f in planned if t == "0"} & {f for f, e in h["pans"].items() if e != "tiny"}
    assert named_skips(out)[f"{h['seq']}/image_{h['missing']:05d}.jpg"] == "missing image"


def test_hard_fixture_frame_of_another_size_is_skipped_for_its_size(hard):
    """An image written at half size (3DPW's size is 2 cx x 2 cy of cam_intrinsics): the annotation's
    pixels are not its pixels, so its pairs are skipped for that reason, not built from wrong pixels."""
    from source_checks import at_frame, check_half_size_skipped, panned_case

    truth, out = hard
    check_half_size_skipped(out, panned_case(truth["hard"]), truth["hard"], at_frame)
