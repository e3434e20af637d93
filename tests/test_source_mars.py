"""MARS source: the reader on a rendered MARS-like dataset in the real layout (tracklets of 256x128
person crops, info tables), end-to-end builds checked against the fixture's ground truth (same
tracklet, gaps, crops, silhouettes against the person and the neighbours) and faults."""

from __future__ import annotations

import functools

import json

import numpy as np
import pytest

from fixtures_mars import CROP_H, CROP_W, copy_fixture, inject_faults, make_mars_fixture
from manifests import layout
from pairgen.real import crop as cropping
from pairgen.real.frames import read_image
from pairgen.real.types import BadUnit
from pairgen.sources.mars import MarsReader
from source_checks import console_build_and_verify, build_and_verify, iou as _iou, read_samples as _samples

FPS = 25.0


@pytest.fixture(scope="module")
def mars(tmp_path_factory, synthetic_worker):
    """3 people x 3 cameras x 24 instants -> 18 tracklets of 12 crops (12 train, 6 test)."""
    return make_mars_fixture(tmp_path_factory.mktemp("mars") / "MARS", synthetic_worker.generator.body)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, mars):
    truth = copy_fixture(mars, tmp_path_factory.mktemp("mars_faults") / "MARS")
    inject_faults(truth, ("corrupt_jpeg", "short_tracklet", "missing_listed_files", "missing_listed_tracklet"))
    return truth


_build = functools.partial(build_and_verify, "mars")


def _named(out) -> list[tuple[str, str]]:
    stats = [json.loads(layout.stats_path(out, n).read_text()) for n in layout.finished_shards(out)]
    return [(u["unit"], u["reason"]) for s in stats for u in s["skipped_units"]]


def _check_against_truth(samples, truth) -> dict:
    """Same tracklet, gaps, crops and silhouettes against the ground truth; returns the figures."""
    S = samples[0].target.shape[0]
    ious, on_others, with_others = [], [], 0
    for s in samples:
        m = s.meta
        track = m["track"]
        assert m["kind"] == "cross_pose" and m["sequence"] == track and track in truth["tracklets"]
        assert m["subject"] == track[:4] and m["camera_target"] == m["camera_reference"] == f"C{track[5]}"
        assert m["split"] == truth["images"][(track, 1)]["split"]
        assert m["frame_target"] != m["frame_reference"]
        assert m["time_gap_s"] == pytest.approx(abs(m["frame_target"] - m["frame_reference"]) / FPS, abs=1e-6)
        for side, img, mask in (("target", s.target, s.target_mask), ("reference", s.reference, s.reference_mask)):
            gt = truth["images"][(track, m[f"frame_{side}"])]
            box = np.array([m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")])
            # square crop around the tall 128x256 image: padded left and right
            assert box[2] - box[0] == box[3] - box[1] and box[0] < 0 and box[2] > CROP_W
            # the pair's image is this tracklet's frame (same person, same instant)
            expect = cropping.crop_resize(read_image(gt["path"]), box, S)
            assert np.abs(img.astype(np.int16) - expect).mean() < 4.0, f"{s.key} {side}: not {track}"
            in_crop = cropping.to_crop(gt["joints"], box, S)
            assert ((in_crop >= 0) & (in_crop < S)).all(), f"{s.key} {side}: a GT joint falls outside the crop"
            own = cropping.crop_resize(gt["mask"].astype(np.float32), box, S) > 0.5
            others = cropping.crop_resize(gt["others"].astype(np.float32), box, S) > 0.5
            sil = mask > 0
            ious.append(_iou(sil, own))
            on_others.append(float((sil & others).sum() / max(sil.sum(), 1)))
            with_others += bool(others.any())
    return {"mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)), "n": len(ious),
            "max_on_others": float(np.max(on_others)), "sides_with_others": with_others}


# -- the reader ------------------------------------------------------------------------------
def test_reader_lists_tracklets_and_loads_boxes(mars, tmp_path):
    reader = MarsReader(str(mars["root"]))
    reader.check()
    expect = sorted((t, mars["images"][(t, 1)]["split"]) for t in mars["tracklets"])
    assert reader.unit_names() == expect and len(expect) == 18  # no 00-1 junk, no 0000 distractors
    assert {s for _, s in expect} == {"train", "test"}
    assert [n for n, _ in MarsReader(str(mars["root"]), {"split": "test"}).unit_names()] == \
        [t for t, s in expect if s == "test"]
    info = reader.info("train")
    assert info.problem is None and info.listed == {t: set(f) for t, f in mars["tracklets"].items() if t < "0003"}
    unit = reader.load("0002C3T0002")
    assert (unit.split, unit.subject, unit.cameras, unit.fps, unit.kind) == ("train", "0002", ["C3"], FPS, "body")
    assert unit.frames == mars["tracklets"]["0002C3T0002"] and unit.skipped == []
    assert unit.silhouette_default == "grabcut" and unit.meshes is None and unit.calibration == {}
    for (track, cam, F), obs in unit.observations.items():
        assert track == "0002C3T0002" and cam == "C3" and obs.keypoints is None
        # full height, central half of the 128-wide crop (reader option person_width)
        assert np.allclose(obs.box, [31.5, -0.5, 95.5, CROP_H - 0.5])
        assert unit.image_path(cam, F) == mars["images"][(track, F)]["path"]
    whole = MarsReader(str(mars["root"]), {"fps": "12.5", "person_width": "1"}).load("0003C1T0001")
    assert whole.split == "test" and whole.fps == 12.5
    assert np.allclose(whole.observations[("0003C1T0001", "C1", 1)].box, [-0.5, -0.5, 127.5, 255.5])
    with pytest.raises(ValueError, match="fps"):
        MarsReader(str(mars["root"]), {"fps": "fast"}).check()
    with pytest.raises(ValueError, match="bbox_train"):
        MarsReader(str(tmp_path)).check()
    with pytest.raises(BadUnit):
        reader.load("00-1C1T0001")


def test_reader_cross_checks_the_info_table(mars, tmp_path):
    """File names win: a table row whose pid/camid disagree with its names is recorded, not used."""
    from scipy.io import loadmat, savemat

    truth = copy_fixture(mars, tmp_path / "MARS")
    mat = truth["root"] / "info" / "tracks_train_info.mat"
    rows = loadmat(str(mat))["track_train_info"]
    rows[2, 3] = 5  # row 3 (0001C2T0001) claims camera 5
    savemat(str(mat), {"track_train_info": rows})
    unit = MarsReader(str(truth["root"])).load("0001C2T0001")
    assert unit.frames == truth["tracklets"]["0001C2T0001"] and unit.cameras == ["C2"]
    assert [(p, r) for p, r, _ in unit.skipped] == [("info row 3", "tracks_train_info.mat row disagrees with its "
                                                                   "names (file names used)")]



def test_info_name_with_an_absurd_frame_number_marks_its_row_not_the_split(mars, tmp_path):
    """A name list line whose F number does not fit a frame (> 2^31 - 1) is a bad name of its row:
    that row is recorded and not used; the other rows and tracklets are read as before."""
    truth = copy_fixture(mars, tmp_path / "MARS")
    names = truth["root"] / "info" / "train_name.txt"
    lines = names.read_text().splitlines()
    i = next(k for k, n in enumerate(lines) if n.startswith("0001C2T0001F"))
    lines[i] = "0001C2T0001F99999999999.jpg"
    names.write_text("\n".join(lines) + "\n")
    reader = MarsReader(str(truth["root"]))
    table = reader.info("train")
    assert table.problem is None and "0001C2T0001" not in table.listed and "0001C1T0001" in table.listed
    unit = reader.load("0001C2T0001")
    assert unit.frames == truth["tracklets"]["0001C2T0001"]
    assert [(p, r) for p, r, _ in unit.skipped] == [("info row 3", "tracks_train_info.mat row disagrees with its "
                                                                   "names (file names used)")]
    assert reader.load("0001C1T0001").skipped == []


def test_a_worker_reads_the_info_table_of_its_tracklets_split_only(mars):
    """A tracklet on disk is placed by its folder: loading it parses that split's info table alone
    (each table is ~0.5M names at full size)."""
    for split in ("train", "test"):
        track = next(t for t in sorted(mars["tracklets"]) if mars["images"][(t, 1)]["split"] == split)
        reader = MarsReader(str(mars["root"]))
        unit = reader.load(track)
        assert unit.split == split and set(reader._info) == {split}

# -- end to end ------------------------------------------------------------------------------
def test_build_console_script_verify_and_ground_truth(mars, tmp_path):
    """The console script in a subprocess, then pairs, gaps, crops and silhouettes against the truth."""
    out = tmp_path / "kp"
    rows = console_build_and_verify("mars", mars["root"], out, "--kinds", "cross_pose", "--num-pairs", "54",
                                    "--shard-size", "24")
    assert len(rows) == 54 and set(rows["kind"]) == {"cross_pose"}
    assert set(rows["track"]) == set(mars["tracklets"]) and set(rows["split"]) == {"train", "test"}
    assert set(rows["subject"]) == {"0001", "0002", "0003"} and set(rows["silhouette_method"]) == {"grabcut"}
    res = _check_against_truth(_samples(out), mars)
    print(f"mars grabcut silhouette IoU: mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} over {res['n']}; "
          f"max share on other people {res['max_on_others']:.3f} "
          f"({res['sides_with_others']} crops hold another person)")
    assert res["sides_with_others"] > 0  # the fixture does put neighbours into some crops
    assert res["max_on_others"] < 0.15
    # no keypoints or masks in MARS: GrabCut seeded by the person box (the best method available here)
    assert res["mean_iou"] >= 0.5


def test_default_kinds_and_split_train(mars, tmp_path):
    """Both kinds asked (the default): MARS yields cross-pose pairs only; --split train keeps train."""
    out = tmp_path / "train"
    _build(mars["root"], out, "--num-pairs", "24", "--split", "train", "--silhouette", "box")
    samples = _samples(out)
    assert samples and {s.meta["split"] for s in samples} == {"train"}
    assert {s.meta["kind"] for s in samples} == {"cross_pose"}
    assert {s.meta["subject"] for s in samples} <= {"0001", "0002"}
    _check_against_truth(samples, mars)


def test_faults_are_skipped_counted_and_named(faulty, tmp_path):
    f = faulty["faults"]
    reader = MarsReader(str(faulty["root"]))
    names = [n for n, _ in reader.unit_names()]
    assert f["short_tracklet"] in names and f["missing_listed_tracklet"] in names
    with pytest.raises(BadUnit, match="1 image"):
        reader.load(f["short_tracklet"])
    with pytest.raises(BadUnit, match="all 12 images listed in info/train_name.txt are missing"):
        reader.load(f["missing_listed_tracklet"])
    track, gone = f["missing_listed_files"]
    unit = reader.load(track)
    assert [p for p, _, _ in unit.skipped] == [f"F{F:03d}" for F in gone]
    assert not set(gone) & set(unit.frames)

    out = tmp_path / "faults"
    _build(faulty["root"], out, "--kinds", "cross_pose", "--num-pairs", "400", "--silhouette", "box")  # every pair; faults do not depend on the silhouette
    named = _named(out)
    assert (f["short_tracklet"], "bad unit: tracklet has 1 image: no cross-pose pair") in named, named
    assert (f["missing_listed_tracklet"],
            "bad unit: all 12 images listed in info/train_name.txt are missing") in named, named
    for F in gone:
        assert (f"{track}/F{F:03d}", "image listed in info/train_name.txt is missing") in named, named
    bad_track, bad_F = f["corrupt_jpeg"]
    assert any(u == f"{bad_track}/C{bad_track[5]}/{bad_F}" and "corrupt JPEG" in r for u, r in named), named
    samples = _samples(out)
    assert samples
    for s in samples:
        m = s.meta
        assert m["track"] not in (f["short_tracklet"], f["missing_listed_tracklet"])
        assert not (m["track"] == bad_track and bad_F in (m["frame_target"], m["frame_reference"]))


def test_malformed_info_mat_falls_back_to_file_names(mars, tmp_path):
    truth = copy_fixture(mars, tmp_path / "MARS")
    inject_faults(truth, ("malformed_info_mat",))
    reader = MarsReader(str(truth["root"]))
    assert reader.info("train").problem[0] == "tracks_train_info.mat"
    assert reader.unit_names() == sorted((t, truth["images"][(t, 1)]["split"]) for t in truth["tracklets"])
    first = reader.load("0001C1T0001")
    assert [(p, r) for p, r, _ in first.skipped] == [("info/tracks_train_info.mat",
                                                      "malformed info table: tracklets from file names")]
    assert reader.load("0001C1T0002").skipped == []  # recorded once per split, on its first tracklet
    out = tmp_path / "fallback"
    _build(truth["root"], out, "--kinds", "cross_pose", "--num-pairs", "24", "--split", "train", "--silhouette", "box")
    assert ("0001C1T0001/info/tracks_train_info.mat", "malformed info table: tracklets from file names") in _named(out)
    assert len(_samples(out)) == 24


def test_box_method_is_recorded_truthfully_and_unsuitable_methods_are_refused(mars, tmp_path, capsys):
    from pairgen.cli import main

    out = tmp_path / "box"
    _build(mars["root"], out, "--num-pairs", "8", "--silhouette", "box")
    samples = _samples(out)
    assert samples and {s.meta["silhouette_method"] for s in samples} == {"box"}
    rc = main(["build", "--source", "mars", "--root", str(mars["root"]), "--out", str(tmp_path / "bg"),
               "--silhouette", "bgsub", "--local", "--quiet"])
    assert rc == 2 and "does not suit mars" in capsys.readouterr().err


# -- the hard variant: every crop padded on all sides, a tracklet of tiny crops, a detection gap, a
#    half-size frame, a garbage frame and listed frames missing on disk --------------------------------

@pytest.fixture(scope="module")
def hard(tmp_path_factory, synthetic_worker):
    """12 instants (one tracklet per person and camera), built end to end."""
    from source_checks import hard_build

    truth = make_mars_fixture(tmp_path_factory.mktemp("mars_hard") / "MARS", synthetic_worker.generator.body,
                              n_frames=12, hard=True)
    out = tmp_path_factory.mktemp("mars_hard_out") / "out"
    hard_build("mars", truth["root"], out, "--num-pairs", "90", "--image-size", "128", "--min-gap-s", "0.04",
               "--max-gap-s", "0.5")
    return truth, out


def _at(unit, track, cam, frame):
    return track, frame  # how the fixture names a frame: its tracklet and index


def _hard_case(hard: dict, **options):
    from source_checks import hard_case

    return hard_case(hard, _at, lambda unit, track, cam, frame: "tiny" if track == hard["tiny"] else None, **options)


def test_hard_fixture(hard):
    """Every planned pair is built or skipped for its true reason, every crop is padded on all four
    sides (black image, empty silhouette there), gaps and missing files are never planned, verify
    passes (in the fixture)."""
    from source_checks import SIZE_ANY, check_hard_build

    truth, out = hard
    h = truth["hard"]
    # the frame of another size: its true reason is checked by the next test
    built = check_hard_build("mars", out, _hard_case(h, resized=SIZE_ANY), h, _at, (CROP_H, CROP_W))
    assert all(n == 2 * len(built.samples) for n in built.crossed.values()), built.crossed
    planned = {(t, f) for _, t, _, f in built.planned}
    track, gap = h["gap"]
    assert not {(track, F) for F in gap} & planned  # not detected there: never planned
    track, gone = h["missing"]
    assert not {(track, F) for F in gone} & planned
    assert (track, "listed images missing on disk") in [(u, r.split(":")[0]) for u, r in _named(out)] or \
        any(u.startswith(track) for u, _ in _named(out))


def test_hard_fixture_frame_of_another_size_is_skipped_for_its_size(hard):
    """A frame of a tracklet written at half size (MARS reads the crop size from the tracklet's first
    JPEG): the person box is not in its pixels, so its pairs are skipped for that reason."""
    from source_checks import check_half_size_skipped

    truth, out = hard
    check_half_size_skipped(out, _hard_case(truth["hard"]), truth["hard"], _at)
