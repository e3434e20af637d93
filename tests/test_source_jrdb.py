"""JRDB / JRDB-Pose source: the reader on a rendered split folder in the real layout, end-to-end builds
checked against the fixture's ground truth (same track on both sides, crops hold the joints,
silhouettes on the person and off the others, gaps at 15 fps, cross-view pairs between the two
overlapping cameras), and faults."""

from __future__ import annotations

import functools

import shutil

import numpy as np
import pytest

from fixtures_jrdb import CAMS, FAULTS, SEAM_TRACK, SPLIT_DIR, STITCHED, inject_faults, make_jrdb_fixture, mask
from pairgen.real import crop as cropping
from pairgen.real.types import BadUnit
from pairgen.sources.jrdb import JRDB_TO_COCO, JrdbReader, jrdb_to_coco
from source_checks import console_build_and_verify, build_and_verify, dropped_totals, iou as _iou, \
    read_samples as _samples, read_stats as _stats

SEQ1, SEQ2 = "bytes-cafe-2019-02-07_0", "gates-ai-lab-2019-02-08_0"


@pytest.fixture(scope="module")
def jrdb(tmp_path_factory, synthetic_worker):
    """Two sequences (16 and 8 frames), 3 pedestrians, image_0 + image_2 (752x480) + panorama (3760x480)."""
    return make_jrdb_fixture(tmp_path_factory.mktemp("jrdb"), synthetic_worker.generator.body)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, jrdb):
    """A copy of the split folder with every fault injected."""
    d = tmp_path_factory.mktemp("jrdb_faults") / SPLIT_DIR
    shutil.copytree(jrdb["root"], d)
    truth = dict(jrdb)
    truth["faults"] = inject_faults(truth, FAULTS, d)
    truth["root"] = d
    return truth


_build = functools.partial(build_and_verify, "jrdb")


def _in_crop(full: np.ndarray, box: np.ndarray, S: int) -> np.ndarray:
    # area/linear resampling is centred on pixels like the crop itself (cv2's nearest is not)
    return cropping.crop_resize(full.astype(np.float32), box, S) > 0.5


def _check_against_truth(samples, truth) -> dict:
    """Pairing, gaps, crops and silhouettes against the ground truth; returns the measured figures."""
    S = samples[0].target.shape[0]
    ious, others, recalls, kinds = [], [], [], set()
    for s in samples:
        m = s.meta
        kinds.add(m["kind"])
        unit = m["sequence"]
        seq = unit.split("@")[0]
        assert m["subject"] == seq and m["split"] == ("train" if seq == SEQ1 else "val")
        assert m["fps"] == 15.0 and m["view_angle_deg"] is None  # no calibration used
        track = m["track"]
        if m["kind"] == "cross_view":
            assert m["frame_target"] == m["frame_reference"] and m["camera_target"] != m["camera_reference"]
            assert {m["camera_target"], m["camera_reference"]} == set(CAMS) and not unit.endswith("@stitched")
        else:
            assert m["camera_target"] == m["camera_reference"] and m["frame_target"] != m["frame_reference"]
            assert m["time_gap_s"] == pytest.approx(abs(m["frame_target"] - m["frame_reference"]) / 15.0, abs=1e-6)
            assert (m["camera_target"] == STITCHED) == unit.endswith("@stitched")
        for side, sil in (("target", s.target_mask), ("reference", s.reference_mask)):
            cam, frame = m[f"camera_{side}"], m[f"frame_{side}"]
            gt = truth["sequences"][seq]
            box = np.array([m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")])
            # the track's joints (those inside the image) fall inside the crop
            uv = gt["joints"][(track, cam, frame)]
            W = truth["stitched_width"] if cam == STITCHED else truth["width"]
            ok = np.isfinite(uv).all(1) & (uv[:, 0] >= 0) & (uv[:, 0] < W)
            ok &= (uv[:, 1] >= 0) & (uv[:, 1] < truth["height"])
            assert ok.sum() >= 12, f"{s.key} {side}: the person is mostly outside the image"
            in_crop = cropping.to_crop(uv[ok], box, S)
            assert ((in_crop >= 0) & (in_crop < S)).all(), f"{s.key} {side}: a GT joint falls outside the crop"
            # the silhouette lies on this track's visible GT mask, not on the other pedestrians
            own = _in_crop(mask(truth, seq, track, cam, frame), box, S)
            rest = np.zeros_like(own)
            for t in {k[0] for k in gt["joints"]} - {track}:
                rest |= _in_crop(mask(truth, seq, t, cam, frame), box, S)
            sil = sil > 0
            ious.append(_iou(sil, own))
            recalls.append(float((sil & own).sum() / max(own.sum(), 1)))
            others.append(float((sil & rest).sum() / max(sil.sum(), 1)))
    return {"kinds": kinds, "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)),
            "max_other": float(np.max(others)), "mean_other": float(np.mean(others)),
            "mean_recall": float(np.mean(recalls)), "n": len(ious)}


# -- the reader ------------------------------------------------------------------------------
def test_jrdb_to_coco_mapping():
    k = np.zeros((17, 3))
    k[:, 0] = np.arange(17) * 10.0
    k[:, 1] = 5.0
    k[:, 2] = 2
    k[4, 2] = 0  # neck: unlabelled (and not a COCO joint anyway)
    k[12, 2] = 0  # left hand not labelled -> COCO left wrist unusable
    c = jrdb_to_coco(k)
    names = {1: 2, 2: 1, 5: 5, 6: 3, 7: 7, 8: 6, 9: 12, 10: 9, 11: 11, 12: 10, 13: 14, 14: 13, 15: 16, 16: 15}
    for coco, jr in names.items():
        assert JRDB_TO_COCO[coco] == jr
        if jr != 12:
            assert c[coco, 0] == 10.0 * jr and c[coco, 2] == 1.0
    assert c[9, 2] == 0  # from the unlabelled left hand
    assert (c[[0, 3, 4], 2] == 0).all()  # nose and ears: no JRDB joint


def test_reader_lists_units_and_loads_filtered_observations(jrdb):
    for root in (jrdb["root"], jrdb["root"].parent):  # the split folder or its parent
        reader = JrdbReader(str(root))
        reader.check()
        assert reader.unit_names() == [(SEQ1, "train"), (SEQ1 + "@stitched", "train"), (SEQ2, "val"),
                                       (SEQ2 + "@stitched", "val")]
    gt = jrdb["sequences"][SEQ1]
    unit = reader.load(SEQ1)
    assert unit.cameras == list(CAMS) and unit.fps == 15.0 and unit.subject == SEQ1 and unit.split == "train"
    assert unit.calibration == {} and unit.silhouette_default == "keypoints" and unit.skipped == []
    expected = {k for k in gt["boxes"] if k[1] in CAMS and not gt["truncated"][k]
                and gt["occlusion"][k] in ("Fully_visible", "Mostly_visible")}
    assert set(unit.observations) == expected  # bicycle:3, truncated and occluded boxes dropped
    for key, obs in unit.observations.items():
        x, y, w, h = gt["boxes"][key]
        assert np.allclose(obs.box, [x, y, x + w, y + h], atol=0.01)
        ok = obs.keypoints[:, 2] > 0
        visible = jrdb_to_coco(np.column_stack([np.zeros((17, 2)), gt["pose_v"][key]]), 2)[:, 2] > 0
        assert (ok == visible).all() and ok.sum() >= 8 and not ok[[0, 3, 4]].any()  # occluded joints dropped
        assert np.abs(obs.keypoints[ok, :2] - gt["joints"][key][ok]).max() < 0.01
        assert unit.image_path(key[1], key[2]).is_file()
    # cross-view instants exist: one pedestrian seen whole by both cameras
    both = {(t, f) for t, c, f in unit.observations if c == "image_0"} & \
           {(t, f) for t, c, f in unit.observations if c == "image_2"}
    assert len(both) >= 3
    st = reader.load(SEQ1 + "@stitched")
    assert st.cameras == [STITCHED] and st.skipped == [
        (f"{STITCHED} track {SEAM_TRACK}", "box wraps around the 360-degree seam", "0, 1, 2")]
    assert all(t != str(SEAM_TRACK) for t, _, _ in st.observations)
    for key, obs in st.observations.items():
        ok = obs.keypoints[:, 2] > 0
        assert np.abs(obs.keypoints[ok, :2] - gt["joints"][key][ok]).max() < 0.01


def test_reader_options(jrdb):
    root = str(jrdb["root"])
    gt = jrdb["sequences"][SEQ1]
    loose = JrdbReader(root, {"allow_truncated": "true", "max_occlusion": "Fully_occluded", "fps": "30",
                              "occluded_joints": "keep"}).load(SEQ1)
    assert set(loose.observations) == {k for k in gt["boxes"] if k[1] in CAMS}
    assert loose.fps == 30.0
    occluded = [k for k in loose.observations if (gt["pose_v"][k] == 1).any()]
    assert occluded  # pedestrian 2 walks behind pedestrian 1: its hidden joints are kept here
    for k in occluded:
        assert (loose.observations[k].keypoints[:, 2] > 0).sum() == (
            jrdb_to_coco(np.column_stack([np.zeros((17, 2)), gt["pose_v"][k]]), 1)[:, 2] > 0).sum()
    assert JrdbReader(root, {"views": "individual"}).unit_names() == [(SEQ1, "train"), (SEQ2, "val")]
    assert JrdbReader(root, {"views": "stitched", "val": "none"}).unit_names() == [
        (SEQ1 + "@stitched", "train"), (SEQ2 + "@stitched", "train")]
    shifted = JrdbReader(root, {"pose_frame_offset": "1"}).load(SEQ1)  # pose of frame f read as f + 1
    key = sorted(shifted.observations)[0]
    assert shifted.observations[key].box is not None
    for bad in ({"views": "all"}, {"max_occlusion": "Half"}, {"allow_truncated": "maybe"}, {"fps": "-1"},
                {"occluded_joints": "hide"}):
        with pytest.raises(ValueError):
            JrdbReader(root, bad)
    # an unknown key is refused by the source's check (the keys JrdbReader.option_help declares)
    from pairgen.config import BuildConfig
    from pairgen.sources.jrdb import JrdbSource

    with pytest.raises(ValueError, match=r"unknown --reader-option colour \(accepted: allow_truncated, fps, "):
        JrdbSource(BuildConfig(source="jrdb", root=root, reader_options=("colour=red",))).check()


def test_reader_rejects_roots_and_reports_faults(faulty, tmp_path):
    with pytest.raises(ValueError, match="no JRDB labels"):
        JrdbReader(str(tmp_path)).check()
    reader = JrdbReader(str(faulty["root"]))
    f = faulty["faults"]
    with pytest.raises(BadUnit, match="malformed labels_2d_stitched"):
        reader.load(f["malformed_labels"])
    unit2 = reader.load(SEQ2)
    assert unit2.cameras == ["image_0"]
    assert [(p, r) for p, r, _ in unit2.skipped] == [("image_2", "malformed labels JSON")]
    unit1 = reader.load(SEQ1)
    seq, cam, gone = f["missing_frames"]
    reasons = {(p, r): d for p, r, d in unit1.skipped}
    assert reasons[(cam, "labelled frames missing on disk")] == ", ".join(map(str, gone))
    assert reasons[("image_0", "single-frame tracks (no cross-pose pair)")] == "tracks 7"
    assert not any(c == cam and fr in gone for _, c, fr in unit1.observations)
    assert ("7", "image_0", 4) in unit1.observations


# -- end to end ------------------------------------------------------------------------------
def test_build_console_script_verify_and_truth(jrdb, tmp_path):
    """The console script in a subprocess (default silhouette: keypoints), then the GT checks."""
    out = tmp_path / "kp"
    rows = console_build_and_verify("jrdb", jrdb["root"], out, "--num-pairs", "48", "--shard-size", "16")
    assert len(rows) >= 40 and set(rows["kind"]) == {"cross_view", "cross_pose"}
    assert set(rows["track"]) <= {"1", "2", "5"} and rows["track"].str.len().min() > 0
    assert set(rows["subject"]) == {SEQ1, SEQ2} and set(zip(rows["subject"], rows["split"])) == {
        (SEQ1, "train"), (SEQ2, "val")}
    assert set(rows["silhouette_method"]) == {"keypoints"}
    assert rows["sequence"].str.endswith("@stitched").any()
    res = _check_against_truth(_samples(out), jrdb)
    print(f"jrdb keypoints silhouette IoU: mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} over {res['n']} "
          f"(GT covered {res['mean_recall']:.3f}); "
          f"on other people: mean {res['mean_other']:.3f} max {res['max_other']:.3f}; "
          f"cross_view {int((rows['kind'] == 'cross_view').sum())} "
          f"cross_pose {int((rows['kind'] == 'cross_pose').sum())}")
    assert res["kinds"] == {"cross_view", "cross_pose"}
    assert res["mean_iou"] >= 0.5 and res["max_other"] < 0.15


def test_split_train_and_kinds(jrdb, tmp_path):
    out = tmp_path / "train"
    _build(jrdb["root"], out, "--num-pairs", "12", "--split", "train", "--kinds", "cross_view")
    samples = _samples(out)
    assert samples and {s.meta["split"] for s in samples} == {"train"}
    assert {s.meta["subject"] for s in samples} == {SEQ1} and {s.meta["kind"] for s in samples} == {"cross_view"}
    _check_against_truth(samples, jrdb)


def test_box_only_observations_fall_back_to_box_masks(jrdb, tmp_path):
    """Without per-camera pose files the individual cameras have boxes only: the keypoints method
    draws the box (rough). Measured and reported; pairing and crops stay right."""
    d = tmp_path / SPLIT_DIR
    shutil.copytree(jrdb["root"], d)
    shutil.rmtree(d / "labels" / "labels_2d_pose_coco")
    unit = JrdbReader(str(d)).load(SEQ1)
    assert all(o.keypoints is None for o in unit.observations.values())
    out = tmp_path / "box"
    _build(d, out, "--num-pairs", "24", "--reader-option", "views=individual")
    res = _check_against_truth(_samples(out), jrdb)
    print(f"jrdb box-only silhouette IoU: mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} over {res['n']}; "
          f"GT covered {res['mean_recall']:.3f}; "
          f"on other people: mean {res['mean_other']:.3f} max {res['max_other']:.3f}")
    assert res["mean_iou"] >= 0.2 and res["mean_recall"] >= 0.95  # the whole box: covers the person, loosely


def test_build_with_faults_skips_and_names_bad_parts(faulty, tmp_path):
    """bgsub (the fixture's cameras are static) decodes frame 0 of every camera, so the corrupt JPEG is met."""
    out = tmp_path / "faults"
    _build(faulty["root"], out, "--num-pairs", "48", "--silhouette", "bgsub")
    stats = _stats(out)
    named = [(u["unit"], u["reason"]) for s in stats for u in s["skipped_units"]]
    f = faulty["faults"]
    assert any(u == f["malformed_labels"] and "malformed labels_2d_stitched" in r for u, r in named), named
    seq, cam, fr = f["corrupt_jpeg"]
    assert any(u == f"{seq}/{cam}/{fr}" and "corrupt JPEG" in r for u, r in named), named
    assert (f"{SEQ2}/image_2", "malformed labels JSON") in named, named
    assert (f"{SEQ1}/image_2", "labelled frames missing on disk") in named, named
    assert (f"{SEQ1}/image_0", "single-frame tracks (no cross-pose pair)") in named, named
    assert (f"{SEQ1}@stitched/{STITCHED} track {SEAM_TRACK}", "box wraps around the 360-degree seam") in named, named
    assert dropped_totals(out).get("labelled frames missing on disk") == 1  # a part, not pairs
    samples = _samples(out)
    assert samples
    for s in samples:  # nothing from the dropped unit, camera or frames
        m = s.meta
        assert m["sequence"] != f["malformed_labels"]
        assert not (m["sequence"] == SEQ2 and "image_2" in (m["camera_target"], m["camera_reference"]))
        for side in ("target", "reference"):
            assert not (m["sequence"] == SEQ1 and m[f"camera_{side}"] == cam and m[f"frame_{side}"] == fr)
            assert not (m["sequence"] == SEQ1 and m[f"camera_{side}"] == f["missing_frames"][1]
                        and m[f"frame_{side}"] in f["missing_frames"][2])
    res = _check_against_truth(samples, faulty)
    print(f"jrdb bgsub silhouette IoU (static fixture cameras): mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} "
          f"over {res['n']}; on other people: mean {res['mean_other']:.3f} max {res['max_other']:.3f}")


# -- the hard variant: pedestrian 1 across every edge of image_0 and tiny, pedestrians unlabelled for a
#    while or only mid-sequence; a missing, a corrupt and a half-size image ------------------------------

@pytest.fixture(scope="module")
def hard(tmp_path_factory, synthetic_worker):
    """The first sequence (24 frames), individual cameras only, truncated boxes kept, keypoint silhouettes."""
    from source_checks import hard_build

    truth = make_jrdb_fixture(tmp_path_factory.mktemp("jrdb_hard"), synthetic_worker.generator.body,
                              sequences={SEQ1: 24}, hard=True, keep_masks=False)
    out = tmp_path_factory.mktemp("jrdb_hard_out") / "out"
    hard_build("jrdb", truth["root"], out, "--num-pairs", "80", "--image-size", "128", "--min-gap-s", "0.05",
               "--max-gap-s", "1.5", "--reader-option", "views=individual", "--reader-option", "allow_truncated=true")
    return truth, out


def _at(unit, track, cam, frame):
    return cam, frame  # how the fixture names an image: camera and frame


def _hard_case(truth: dict, **options):
    from source_checks import OUTSIDE, hard_case

    hard, gt = truth["hard"], truth["sequences"][truth["hard"]["seq"]]
    # a pedestrian cut by an image border (walking into the next camera) shows a sliver: a box below
    # --min-person-px, or visible joints that share no limb (the keypoint mask draws nothing)
    cut = {"person too small", "labelled keypoints share no limb (no keypoint silhouette)",
           "fewer than 2 labelled keypoints"}

    def edge_of(unit, track, cam, frame):
        return hard["pans"].get(frame) if cam == hard["cam"] else None

    def rest(unit, track, cam, frame):
        if gt["truncated"].get((track, cam, frame)):
            return False, cut
        return False, {"fewer than 2 labelled keypoints"}  # a pedestrian behind another: no visible joint

    return hard_case(hard, _at, edge_of, edge_reasons={OUTSIDE} | cut, rest=rest, **options)


def test_hard_fixture(hard):
    """Every planned pair is built or skipped for its true reason, crops across the edges are padded,
    unlabelled frames and missing images are never planned, verify passes (in the fixture)."""
    from source_checks import SIZE_ANY, check_hard_build, named_skips

    truth, out = hard
    h = truth["hard"]
    # the frame of another size: its true reason is checked by the next test
    planned = check_hard_build("jrdb", out, _hard_case(truth, resized=SIZE_ANY), h, _at,
                               (truth["height"], truth["width"])).planned
    assert {(h["track"], h["cam"], f) for f, e in h["pans"].items() if e != "tiny"} & {p[1:] for p in planned}
    assert not {("2", f) for f in h["unlabelled"][2]} & {(t, f) for _, t, _, f in planned}
    first, last = h["span"][5]
    assert all(first <= f <= last for _, t, _, f in planned if t == "5")
    assert h["missing"] not in {(c, f) for *_, c, f in planned}
    assert named_skips(out)[f"{h['seq']}/{h['missing'][0]}"] == "labelled frames missing on disk"


def test_hard_fixture_frame_of_another_size_is_skipped_for_its_size(hard):
    """An image_0 frame written at half size: the labels' pixels are not its pixels, so its pairs
    are skipped for that reason."""
    from source_checks import check_half_size_skipped

    truth, out = hard
    check_half_size_skipped(out, _hard_case(truth), truth["hard"], _at)
