"""HUMBI body source: the reader on a rendered bundle in the real layout, end-to-end builds checked
against the fixture's ground truth (pairing, view angles, gaps, crops, silhouettes), and faults."""

from __future__ import annotations

import functools

import shutil

import numpy as np
import pytest

from fixtures_humbi import BUNDLE, FAULTS, inject_faults, make_humbi_fixture
from pairgen.real import crop as cropping
from pairgen.real.types import BadUnit
from pairgen.sources.humbi import HumbiReader, read_cameras
from smpl_fixture import make_smpl_file
from source_checks import console_build_and_verify, build_and_verify, dropped_totals, iou as _iou, \
    read_samples as _samples, read_stats as _stats


@pytest.fixture(scope="module")
def humbi(tmp_path_factory, synthetic_worker):
    """Two subjects x 8 cameras x 8 frame folders, 480x270 JPEGs; returns the ground truth."""
    return make_humbi_fixture(tmp_path_factory.mktemp("humbi"), synthetic_worker.generator.body)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, humbi):
    """A copy of the bundle with every fault injected."""
    bundle = tmp_path_factory.mktemp("humbi_faults") / BUNDLE
    shutil.copytree(humbi["root"], bundle)
    truth = dict(humbi)
    truth["faults"] = inject_faults(truth, FAULTS, bundle)
    truth["root"] = bundle
    return truth


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory, synthetic_worker):
    return make_smpl_file(tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl", synthetic_worker.generator.body)


_build = functools.partial(build_and_verify, "humbi")


def _check_against_truth(samples, truth) -> dict:
    """Pairing, view angles, gaps and crops against the ground truth; returns the silhouette IoUs."""
    S = samples[0].target.shape[0]
    ious, kinds = [], set()
    for s in samples:
        m = s.meta
        kinds.add(m["kind"])
        gt = truth["subjects"][int(m["subject"])]
        assert m["track"] == "0" and m["sequence"] == f"subject_{m['subject']}" and m["split"] in ("train", "val")
        if m["kind"] == "cross_view":
            assert m["frame_target"] == m["frame_reference"] and m["camera_target"] != m["camera_reference"]
            ca, cb = (gt["cameras"][int(m[k])] for k in ("camera_target", "camera_reference"))
            centre = gt["joints"][m["frame_target"]].mean(0)
            da, db = centre - ca.center, centre - cb.center
            angle = np.degrees(np.arccos(np.clip(da @ db / np.linalg.norm(da) / np.linalg.norm(db), -1, 1)))
            assert m["view_angle_deg"] == pytest.approx(angle, abs=0.01)
        else:
            assert m["camera_target"] == m["camera_reference"] and m["frame_target"] != m["frame_reference"]
            assert m["view_angle_deg"] is None  # one camera: no angle (null, not 0)
            assert m["time_gap_s"] == pytest.approx(abs(m["frame_target"] - m["frame_reference"]) / 60.0, abs=1e-6)
        for side, mask in (("target", s.target_mask), ("reference", s.reference_mask)):
            cam_id, frame = int(m[f"camera_{side}"]), m[f"frame_{side}"]
            cam = gt["cameras"][cam_id]
            box = np.array([m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")])
            uv, _ = cam.project(gt["joints"][frame])
            in_crop = cropping.to_crop(uv, box, S)
            assert ((in_crop >= 0) & (in_crop < S)).all(), f"{s.key} {side}: a GT joint falls outside the crop"
            # area/linear resampling is centred on pixels like the crop itself (cv2's nearest is not)
            gt_mask = cropping.crop_resize(gt["masks"][(cam_id, frame)].astype(np.float32), box, S) > 0.5
            ious.append(_iou(mask > 0, gt_mask))
    assert kinds == {"cross_view", "cross_pose"}
    return {"mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)), "n": len(ious)}


# -- the reader ------------------------------------------------------------------------------
def test_reader_lists_subjects_and_loads_calibrated_observations(humbi):
    for root in (humbi["root"], humbi["root"].parent):  # one bundle, or a folder of bundles
        reader = HumbiReader(str(root))
        reader.check()
        assert reader.unit_names() == [("subject_1", "train"), ("subject_10", "val")]
    unit = reader.load("subject_1")
    gt = humbi["subjects"][1]
    assert unit.subject == "1" and unit.split == "train" and unit.fps == 60.0 and unit.kind == "body"
    assert unit.frames == humbi["frames"] and unit.cameras == [str(c) for c in humbi["cameras"]]
    assert len(unit.observations) == 64 and unit.skipped == []
    assert unit.silhouette_default == "keypoints" and unit.meshes is None
    for cid, cam in gt["cameras"].items():
        cal = unit.calibration[str(cid)]
        assert (cal.width, cal.height) == (480, 270)  # read from the JPEG header
        assert np.allclose(cal.K, cam.K, atol=1e-6) and np.allclose(cal.R, cam.R, atol=1e-8)
        assert np.allclose(cal.t, cam.t, atol=1e-6)
    for (track, cam, frame), obs in unit.observations.items():
        uv, _ = gt["cameras"][int(cam)].project(gt["joints"][frame])
        assert track == "0" and obs.keypoints.shape == (17, 3) and (obs.keypoints[:, 2] > 0).all()
        assert np.abs(obs.keypoints[:, :2] - uv).max() < 1e-3
        ys, xs = np.nonzero(gt["masks"][(int(cam), frame)])  # the box holds (nearly) the whole person
        b = obs.box
        inside = (xs >= b[0]) & (xs <= b[2]) & (ys >= b[1]) & (ys <= b[3])
        assert inside.mean() > 0.97
        assert unit.image_path(cam, frame).is_file()
    assert np.allclose(unit.joints3d("0", 31), gt["joints"][31], atol=1e-6)


def test_reader_rejects_roots_and_camera_files(humbi, tmp_path):
    with pytest.raises(ValueError, match="subject_<N>/body"):
        HumbiReader(str(tmp_path)).check()
    body = tmp_path / "subject_3" / "body"
    shutil.copytree(humbi["root"] / "subject_1" / "body", body)
    cams, skipped, listed = read_cameras(body)
    assert sorted(cams) == humbi["cameras"] and not skipped and listed == set(humbi["cameras"])
    # project.txt may hold M up to a scale: still consistent
    lines = (body / "project.txt").read_text().splitlines()
    scaled = lines[:3] + [ln if len(ln.split()) != 4 else " ".join(f"{2.5 * float(v):.10g}" for v in ln.split())
                          for ln in lines[3:]]
    (body / "project.txt").write_text("\n".join(scaled) + "\n")
    assert len(read_cameras(body)[0]) == 8
    (body / "intrinsic.txt").write_text("Numcam: 1\nnumframes: 1\nnumP: 1\n0 0\n1 0 240\n0 1 x\n0 0 1\n")
    with pytest.raises(BadUnit, match="malformed intrinsic.txt at line 4"):
        read_cameras(body)


def test_reader_reports_partial_faults_and_bad_units(faulty):
    reader = HumbiReader(str(faulty["root"]))
    unit = reader.load("subject_1")
    f = faulty["faults"]
    reasons = {(part, reason) for part, reason, _ in unit.skipped}
    bad_cam = str(f["bad_camera"][1])
    assert (f"camera {bad_cam}", "project.txt disagrees with K R [I|-C]") in reasons
    assert bad_cam not in unit.cameras and not any(c == bad_cam for _, c, _ in unit.observations)
    assert (f"frame {f['bad_keypoints'][1]:08d}", "malformed keypoints.txt") in reasons
    assert (f"frame {f['missing_image_folder'][1]:08d}", "missing image folder") in reasons
    for _, cam, fr in f["missing_image"]:
        assert (f"frame {fr:08d} camera {cam}", "missing image") in reasons
        assert ("0", str(cam), fr) not in unit.observations
    assert f["bad_keypoints"][1] not in unit.frames and f["missing_image_folder"][1] not in unit.frames
    assert len(unit.skipped) == 5
    # the corrupt JPEG is not decoded by the reader: its camera keeps its size from another frame
    assert unit.calibration[str(f["corrupt_jpeg"][1])].width == 480
    with pytest.raises(BadUnit, match="malformed extrinsic.txt"):
        reader.load(f"subject_{f['bad_extrinsic']}")


# -- end to end ------------------------------------------------------------------------------
def test_build_keypoints_console_script_verify_and_geometry(humbi, tmp_path):
    """The console script in a subprocess (default silhouette: keypoints), then the GT checks."""
    out = tmp_path / "kp"
    rows = console_build_and_verify("humbi", humbi["root"].parent, out, "--num-pairs", "32", "--shard-size", "16")
    assert len(rows) == 32 and set(rows["kind"]) == {"cross_view", "cross_pose"}
    assert set(rows["subject"]) == {"1", "10"} and set(rows["track"]) == {"0"}
    assert set(zip(rows["subject"], rows["split"])) == {("1", "train"), ("10", "val")}
    assert set(rows["silhouette_method"]) == {"keypoints"}
    res = _check_against_truth(_samples(out), humbi)
    print(f"humbi keypoints silhouette IoU: mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} over {res['n']}")
    assert res["mean_iou"] >= 0.5


def test_build_bgsub_silhouettes(humbi, tmp_path):
    out = tmp_path / "bgsub"
    _build(humbi["root"], out, "--num-pairs", "32", "--silhouette", "bgsub")
    res = _check_against_truth(samples := _samples(out), humbi)
    assert {s.meta["silhouette_method"] for s in samples} == {"bgsub"}
    print(f"humbi bgsub silhouette IoU: mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} over {res['n']}")
    assert res["mean_iou"] >= 0.7


def test_build_smpl_silhouettes(humbi, smpl_file, tmp_path):
    """With --smpl-model the default silhouette is smpl: smpl_vertex.txt + the model's faces."""
    out = tmp_path / "smpl"
    _build(humbi["root"], out, "--num-pairs", "32", "--smpl-model", str(smpl_file))
    res = _check_against_truth(samples := _samples(out), humbi)
    assert {s.meta["silhouette_method"] for s in samples} == {"smpl"}
    print(f"humbi smpl silhouette IoU: mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} over {res['n']}")
    assert res["mean_iou"] >= 0.9


def test_split_train_keeps_train_subjects(humbi, tmp_path):
    out = tmp_path / "train"
    _build(humbi["root"], out, "--num-pairs", "12", "--split", "train")
    samples = _samples(out)
    assert samples and {s.meta["split"] for s in samples} == {"train"} and {s.meta["subject"] for s in samples} == {"1"}


def test_build_with_faults_skips_and_names_bad_parts(faulty, tmp_path):
    """A malformed extrinsic.txt skips its subject; a corrupt JPEG skips what needs it (bgsub decodes
    every frame of the cameras it uses, so the corrupt image is met)."""
    out = tmp_path / "faults"
    _build(faulty["root"], out, "--num-pairs", "48", "--silhouette", "bgsub")
    stats = _stats(out)
    named = [(u["unit"], u["reason"]) for s in stats for u in s["skipped_units"]]
    f = faulty["faults"]
    assert any(u == f"subject_{f['bad_extrinsic']}" and "malformed extrinsic.txt" in r for u, r in named), named
    _, cam, fr = f["corrupt_jpeg"]
    assert any(u == f"subject_1/{cam}/{fr}" and "corrupt JPEG" in r for u, r in named), named
    samples = _samples(out)
    assert samples and {s.meta["subject"] for s in samples} == {"1"}
    for s in samples:  # nothing from the dropped camera / frames
        m = s.meta
        assert str(f["bad_camera"][1]) not in (m["camera_target"], m["camera_reference"])
        assert not {f["bad_keypoints"][1], f["missing_image_folder"][1]} & {m["frame_target"], m["frame_reference"]}


def test_partial_faults_reach_the_stats(faulty, tmp_path):
    """Cameras, frames and images the reader dropped (unit.skipped) are counted and named in the stats.
    Needs RealSource to record ``unit.skipped`` (see the report): fails until it does."""
    out = tmp_path / "partial"
    _build(faulty["root"], out, "--num-pairs", "16")
    named = {(u["unit"], u["reason"]) for s in _stats(out) for u in s["skipped_units"]}
    f = faulty["faults"]
    assert (f"subject_1/camera {f['bad_camera'][1]}", "project.txt disagrees with K R [I|-C]") in named, named
    assert (f"subject_1/frame {f['bad_keypoints'][1]:08d}", "malformed keypoints.txt") in named, named
    assert dropped_totals(out).get("missing image") == len(f["missing_image"])  # parts, not pairs


# -- the hard variant: the person across every frame edge and tiny (per camera), undetected in the
#    first and last frame folders; a missing, a corrupt and a half-size image --------------------------

@pytest.fixture(scope="module")
def hard(tmp_path_factory, synthetic_worker):
    """One subject, built end to end with keypoint silhouettes, both kinds."""
    from source_checks import hard_build

    truth = make_humbi_fixture(tmp_path_factory.mktemp("humbi_hard"), synthetic_worker.generator.body, subjects=(1,),
                               hard=True, keep_masks=False)
    out = tmp_path_factory.mktemp("humbi_hard_out") / "out"
    hard_build("humbi", truth["root"], out, "--num-pairs", "70", "--image-size", "128", "--min-gap-s", "0.1")
    return truth, out


def _at(unit, track, cam, frame):
    return int(cam), frame  # how the fixture names an image: camera number and frame


def _hard_case(hard: dict, **options):
    from source_checks import hard_case

    return hard_case(hard, _at, lambda unit, track, cam, frame: hard["edges"].get(int(cam)), **options)


def test_hard_fixture(hard):
    """Every planned pair is built or skipped for its true reason, crops across the edges are padded,
    undetected frames and missing images are never planned, verify passes (in the fixture)."""
    from source_checks import SIZE_ANY, check_hard_build, named_skips

    truth, out = hard
    h = truth["hard"]
    # the image of another size: its true reason is checked by the next test
    built = check_hard_build("humbi", out, _hard_case(h, resized=SIZE_ANY), h, _at, (truth["height"], truth["width"]))
    planned = {_at(*side) for side in built.planned}
    assert not {f for _, f in planned} & set(h["unseen"])  # nobody detected: never planned
    assert h["missing"] not in planned
    cam, fr = h["missing"]
    assert named_skips(out)[f"subject_{h['subject']}/frame {fr:08d} camera {cam}"] == "missing image"


def test_hard_fixture_image_of_another_size_is_skipped_for_its_size(hard):
    """An image written at half size (HUMBI's sizes come from each camera's JPEG headers): the
    projected joints are not its pixels, so its pairs are skipped for that reason."""
    from source_checks import check_half_size_skipped

    truth, out = hard
    check_half_size_skipped(out, _hard_case(truth["hard"]), truth["hard"], _at)
