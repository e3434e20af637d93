"""PoseTrack18 / PoseTrack21 source: the reader on rendered videos in both real layouts, end-to-end
builds checked against the fixture's ground truth (same track, crops, own-person silhouettes, gaps),
and faults (malformed JSON, corrupt JPEG, missing frames, a track labelled once, ignore regions)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fixtures_posetrack import BAD_VIDEO, FAULTS, FPS, VIDEOS, inject_faults, make_posetrack_fixture
from pairgen.real import crop as cropping
from pairgen.real.types import BadUnit
from pairgen.sources.posetrack import PoseTrackReader
from source_checks import check_accounting, console_build_and_verify, read_samples as _samples, read_stats as _stats

TRAIN, VAL = VIDEOS[0][0], VIDEOS[1][0]
GAPS = ["--min-gap-s", "0.1", "--max-gap-s", "0.6"]  # the fixture's videos last 0.64 s


@pytest.fixture(scope="module")
def posetrack(tmp_path_factory, synthetic_worker):
    """Two videos (train: 2 people, val: 2 people + 1 in an ignore region), 16 frames of 384x288,
    written as a PoseTrack18 tree and a PoseTrack21 tree."""
    return make_posetrack_fixture(tmp_path_factory.mktemp("posetrack"), synthetic_worker.generator.body)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, posetrack):
    """A copy of the PoseTrack21 tree with every fault injected."""
    tree = tmp_path_factory.mktemp("posetrack_faults") / "pt21"
    shutil.copytree(posetrack["roots"]["pt21"], tree)
    return tree, inject_faults(posetrack, FAULTS, "pt21", tree)


def _build(root, out, *extra: str) -> None:
    from pairgen.cli import main

    assert main(["build", "--source", "posetrack", "--root", str(root), "--out", str(out), "--local", "--quiet",
                 *GAPS, *extra]) == 0
    assert main(["verify", str(out)]) == 0
    check_accounting(out)


def _gt_crop(mask: np.ndarray, box: np.ndarray, S: int) -> np.ndarray:
    return cropping.crop_resize(mask.astype(np.float32), box, S) > 0.5


def _check_against_truth(samples, truth, fps: float = FPS) -> dict:
    """Same track on both sides, gaps, crops holding the track's joints, silhouettes on the own
    person and off the others; returns IoUs and the fraction of silhouettes on other people."""
    S = samples[0].target.shape[0]
    ious, spill, others_in_crop = [], [], 0
    for s in samples:
        m = s.meta
        video = truth["videos"][m["sequence"]]
        track = int(m["track"])
        assert m["kind"] == "cross_pose" and m["split"] == video["split"]
        assert m["camera_target"] == m["camera_reference"] == "cam0"
        assert track in (0, 1) and track != video["ignored_track"]  # people in ignore regions are dropped
        fa, fb = m["frame_target"], m["frame_reference"]
        assert fa != fb and fa in video["labelled"] and fb in video["labelled"]
        assert m["time_gap_s"] == pytest.approx(abs(fa - fb) / fps, abs=1e-6)
        for side, mask, fr in (("target", s.target_mask, fa), ("reference", s.reference_mask, fb)):
            box = np.array([m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")])
            tr = video["tracks"][track]
            in_crop = cropping.to_crop(tr["joints2d"][fr], box, S)
            assert ((in_crop >= 0) & (in_crop < S)).all(), f"{s.key} {side}: a GT joint falls outside the crop"
            sil = mask > 0
            own = _gt_crop(tr["masks"][fr], box, S)
            ious.append(float((sil & own).sum() / max((sil | own).sum(), 1)))
            other = np.zeros_like(own)
            for t2, tr2 in video["tracks"].items():
                if t2 != track:
                    other |= _gt_crop(tr2["masks"][fr], box, S)
            others_in_crop += other.sum() > 0.01 * S * S
            spill.append(float((sil & other).sum() / max(sil.sum(), 1)))
    return {"mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)), "n": len(ious),
            "max_spill": float(np.max(spill)), "mean_spill": float(np.mean(spill)),
            "others_in_crop": int(others_in_crop)}


# -- the reader ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pt18", "pt21"])
def test_reader_loads_tracks_of_labelled_frames(posetrack, fmt):
    reader = PoseTrackReader(str(posetrack["roots"][fmt]))
    reader.check()
    assert reader.annotation_dir()[1] == {"pt18": "posetrack18", "pt21": "posetrack21"}[fmt]
    assert reader.unit_names() == [(TRAIN, "train"), (VAL, "val")]
    for video, gt in posetrack["videos"].items():
        unit = reader.load(video)
        assert unit.split == gt["split"] and unit.fps == 25.0 and unit.cameras == ["cam0"] and unit.kind == "body"
        assert unit.frames == gt["labelled"] and unit.silhouette_default == "keypoints"
        assert set(unit.observations) == {(str(t), "cam0", f) for t in (0, 1) for f in gt["labelled"]}
        if gt["ignored_track"] is not None:
            assert [(p, r) for p, r, _ in unit.skipped] == [("track 2", "inside an ignore region")]
        else:
            assert unit.skipped == []
        for (track, _, fr), obs in unit.observations.items():
            uv = gt["tracks"][int(track)]["joints2d"][fr]
            k = obs.keypoints
            assert k.shape == (17, 3) and (k[[0] + list(range(5, 17)), 2] == 1).all() and (k[1:5] == 0).all()
            assert np.abs(k[[0] + list(range(5, 17)), :2] - uv[[0] + list(range(5, 17))]).max() < 0.01
            b = obs.box  # the box holds every GT joint and the person's render
            assert (uv[:, 0] >= b[0] - 1).all() and (uv[:, 0] <= b[2] + 1).all()
            assert (uv[:, 1] >= b[1] - 1).all() and (uv[:, 1] <= b[3] + 1).all()
            expected = posetrack["roots"][fmt] / "images" / gt["split"] / video / f"{fr:06d}.jpg"
            assert unit.image_path("cam0", fr) == expected
        subjects = {str(t): (str(gt["tracks"][t]["person_id"]) if fmt == "pt21" else f"{video}/{t}") for t in (0, 1)}
        assert unit.track_subjects == subjects and unit.subject == video
    assert PoseTrackReader(str(posetrack["roots"][fmt]), {"fps": "30"}).load(TRAIN).fps == 30.0


def test_reader_layout_variants_and_bad_roots(posetrack, tmp_path):
    # PoseTrack18 with posetrack_data/annotations/ and posetrack_data/images/
    alt = tmp_path / "alt"
    (alt / "posetrack_data").mkdir(parents=True)
    shutil.copytree(posetrack["roots"]["pt18"] / "annotations", alt / "posetrack_data" / "annotations")
    (alt / "posetrack_data" / "images").symlink_to(posetrack["roots"]["pt18"] / "images")
    reader = PoseTrackReader(str(alt))
    reader.check()
    assert reader.annotation_dir() == (alt / "posetrack_data" / "annotations", "posetrack18")
    assert reader.load(TRAIN).image_path("cam0", 3).is_file()
    # --annotations DIR and --videos DIR apart from the root
    reader = PoseTrackReader(str(tmp_path), {"annotations": str(posetrack["roots"]["pt21"] / "posetrack_data"),
                                             "videos": str(posetrack["roots"]["pt21"])})
    reader.check()
    assert len(reader.load(VAL).observations) == 16
    with pytest.raises(ValueError, match="no per-video JSONs"):
        PoseTrackReader(str(tmp_path / "alt" / "posetrack_data" / "images")).check()
    with pytest.raises(ValueError, match="fps=0"):
        PoseTrackReader(str(posetrack["roots"]["pt18"]), {"fps": "0"}).check()


def test_reader_reports_faults(faulty, posetrack):
    tree, f = faulty
    reader = PoseTrackReader(str(tree))
    assert (BAD_VIDEO[0], "train") in reader.unit_names()
    with pytest.raises(BadUnit, match=f"malformed {BAD_VIDEO[0]}.json"):
        reader.load(BAD_VIDEO[0])
    unit = reader.load(VAL)
    video, frs = f["missing_frames"]
    reasons = {(p, r) for p, r, _ in unit.skipped}
    for fr in frs:
        assert (f"frame {fr:06d}", "missing image") in reasons and fr not in unit.frames
    unit = reader.load(TRAIN)
    assert [(p, r, d) for p, r, d in unit.skipped] == [("track 1", "labelled in one frame only: no pair",
                                                        f"frame {f['single_frame_track'][2]:06d}")]
    assert {t for t, _, _ in unit.observations} == {"0"} and set(unit.track_subjects) == {"0"}
    assert f["corrupt_jpeg"][1] in unit.frames  # the reader does not decode: the worker meets it


# -- end to end ------------------------------------------------------------------------------
def test_build_console_script_pt18_verify_and_truth(posetrack, tmp_path):
    """The console script in a subprocess on the PoseTrack18 tree, then the GT checks."""
    out = tmp_path / "pt18"
    rows = console_build_and_verify("posetrack", posetrack["roots"]["pt18"], out, "--num-pairs", "40",
                                    "--shard-size", "16", "--kinds", "cross_pose", *GAPS)
    assert len(rows) == 40 and set(rows["kind"]) == {"cross_pose"} and set(rows["silhouette_method"]) == {"keypoints"}
    assert set(rows["track"]) == {"0", "1"} and set(zip(rows["sequence"], rows["split"])) == {(TRAIN, "train"),
                                                                                             (VAL, "val")}
    assert set(rows["subject"]) <= {f"{v}/{t}" for v in (TRAIN, VAL) for t in ("0", "1")}  # PT18: <seq>/<track>
    assert set(rows["subject"]) == set(rows["sequence"] + "/" + rows["track"])
    res = _check_against_truth(_samples(out), posetrack)
    print(f"posetrack18 keypoints silhouette: IoU mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} over "
          f"{res['n']}; on other people mean {res['mean_spill']:.3f} max {res['max_spill']:.3f} "
          f"({res['others_in_crop']} crops show another person)")
    assert res["mean_iou"] >= 0.5 and res["others_in_crop"] >= 5 and res["max_spill"] < 0.15


def test_build_pt21_in_process_default_kinds(posetrack, tmp_path):
    """Default --kinds (both): the source only has cross-pose pairs; PoseTrack21 tree, in-process."""
    out = tmp_path / "pt21"
    _build(posetrack["roots"]["pt21"], out, "--num-pairs", "24")
    samples = _samples(out)
    assert len(samples) == 24 and {s.meta["kind"] for s in samples} == {"cross_pose"}
    assert {s.meta["split"] for s in samples} == {"train", "val"} and all(s.meta["subject"] for s in samples)
    res = _check_against_truth(samples, posetrack)
    print(f"posetrack21 keypoints silhouette: IoU mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} over "
          f"{res['n']}; on other people max {res['max_spill']:.3f}")
    assert res["mean_iou"] >= 0.5 and res["max_spill"] < 0.15


def test_split_train_and_fps_option(posetrack, tmp_path):
    out = tmp_path / "train"
    _build(posetrack["roots"]["pt21"], out, "--num-pairs", "12", "--kinds", "cross_pose", "--split", "train",
           "--reader-option", "fps=30")
    samples = _samples(out)
    assert len(samples) == 12 and {s.meta["split"] for s in samples} == {"train"}
    assert {s.meta["sequence"] for s in samples} == {TRAIN} and {s.meta["fps"] for s in samples} == {30.0}
    for s in samples:
        m = s.meta
        assert m["time_gap_s"] == pytest.approx(abs(m["frame_target"] - m["frame_reference"]) / 30.0, abs=1e-6)


def test_build_with_faults_skips_and_names_bad_parts(faulty, posetrack, tmp_path):
    tree, f = faulty
    out = tmp_path / "faults"
    _build(tree, out, "--num-pairs", "80", "--kinds", "cross_pose")
    named = {(u["unit"], u["reason"]) for s in _stats(out) for u in s["skipped_units"]}
    counts: dict = {}
    for s in _stats(out):
        for k, v in s["skipped"].items():
            counts[k] = counts.get(k, 0) + v
    assert any(u == BAD_VIDEO[0] and r.startswith(f"bad unit: malformed {BAD_VIDEO[0]}.json") for u, r in named), named
    video, fr = f["corrupt_jpeg"]
    assert any(u == f"{video}/cam0/{fr}" and r.startswith("corrupt JPEG") for u, r in named), named
    video, frs = f["missing_frames"]
    for fr in frs:
        assert (f"{video}/frame {fr:06d}", "missing image") in named, named
    assert (f"{TRAIN}/track 1", "labelled in one frame only: no pair") in named, named
    assert (f"{VAL}/track 2", "inside an ignore region") in named, named
    dropped = check_accounting(out)["dropped"]  # parts, not pairs: in metrics.dropped
    assert dropped.get("missing image") == len(frs), dropped
    assert set(counts) <= {"frame not decoded"}, counts  # the pairs of the corrupt JPEG
    samples = _samples(out)
    assert samples and {s.meta["sequence"] for s in samples} == {TRAIN, VAL}
    for s in samples:
        m = s.meta
        assert not (m["sequence"] == TRAIN and m["track"] == "1")
        assert not (m["sequence"] == VAL and {m["frame_target"], m["frame_reference"]} & set(frs))
        assert not (m["sequence"] == TRAIN and f["corrupt_jpeg"][1] in (m["frame_target"], m["frame_reference"]))
    res = _check_against_truth(samples, posetrack)
    assert res["mean_iou"] >= 0.5


def test_reader_drops_malformed_entries(posetrack, tmp_path):
    """Broken annotation entries are recorded and dropped, not the video; an unlabelled-only video is bad."""
    tree = tmp_path / "pt18"
    (tree / "annotations" / "train").mkdir(parents=True)
    (tree / "images").symlink_to(posetrack["roots"]["pt18"] / "images")
    doc = json.loads(json.dumps(posetrack["docs"][("pt18", TRAIN)]))
    anns = doc["annotations"]
    anns[0]["keypoints"] = anns[0]["keypoints"][:50]
    del anns[1]["track_id"]
    anns[2]["keypoints"] = [0.0] * 51  # no labelled joint: box-only person, not used (not an error)
    (tree / "annotations" / "train" / f"{TRAIN}.json").write_text(json.dumps(doc))
    unit = PoseTrackReader(str(tree)).load(TRAIN)
    assert [(p, r) for p, r, _ in unit.skipped] == [(f"annotation {anns[0]['id']}", "malformed annotation"),
                                                    (f"annotation {anns[1]['id']}", "malformed annotation")]
    assert len(unit.observations) == 26 - 3
    for im in doc["images"]:
        im["is_labeled"] = False
    (tree / "annotations" / "train" / f"{TRAIN}.json").write_text(json.dumps(doc))
    with pytest.raises(BadUnit, match="no labelled frame"):
        PoseTrackReader(str(tree)).load(TRAIN)


# -- skip reasons and the per-unit error policy ------------------------------------------------
def _tree_with(posetrack, tmp_path, edit) -> "Path":
    """A PoseTrack21 tree sharing the fixture's images, with ``edit(video, doc)`` applied to each JSON."""
    tree = tmp_path / "pt21"
    (tree / "posetrack_data").mkdir(parents=True)
    (tree / "images").symlink_to(posetrack["roots"]["pt21"] / "images")
    for video, split, _, _ in VIDEOS:
        doc = json.loads(json.dumps(posetrack["docs"][("pt21", video)]))
        edit(video, doc)
        (tree / "posetrack_data" / split).mkdir(exist_ok=True)
        (tree / "posetrack_data" / split / f"{video}.json").write_text(json.dumps(doc))
    return tree


def test_nan_keypoints_are_counted_with_their_reason(posetrack, tmp_path):
    """Regression: annotations whose keypoints are NaN were dropped while loading without a word
    (the planned pairs fell from 88 to 45 with no count or reason); now each track's dropped
    frames are named "keypoints not finite (NaN)" and counted, and a few NaN joints among enough
    labelled ones are left out and named as such."""
    nan_frames = posetrack["videos"][TRAIN]["labelled"][::2]
    few_frame = posetrack["videos"][TRAIN]["labelled"][1]
    images = {im["id"]: im for im in posetrack["docs"][("pt21", TRAIN)]["images"]}

    def edit(video, doc):
        if video != TRAIN:
            return
        for ann in doc["annotations"]:
            fr = int(images[ann["image_id"]]["file_name"].rsplit("/", 1)[1][:6])
            k = ann.get("keypoints")
            if k and ann["track_id"] == 1 and fr in nan_frames:
                ann["keypoints"] = [float("nan") if i % 3 != 2 else v for i, v in enumerate(k)]
            elif k and ann["track_id"] == 0 and fr == few_frame:
                ann["keypoints"] = [float("nan") if i in (15, 16, 18, 19) else v for i, v in enumerate(k)]

    tree = _tree_with(posetrack, tmp_path, edit)
    unit = PoseTrackReader(str(tree)).load(TRAIN)
    notes = {(p, r): d for p, r, d in unit.skipped}
    assert notes[("track 1", "keypoints not finite (NaN)")].startswith(f"{len(nan_frames)} frames: ")
    assert notes[("track 0", "some keypoints not finite (NaN): those joints left out")] == f"1 frames: {few_frame:06d}"
    assert not {("1", "cam0", f) for f in nan_frames} & set(unit.observations)
    out = tmp_path / "nan"
    _build(tree, out, "--num-pairs", "200", "--kinds", "cross_pose")
    totals = check_accounting(out)
    assert totals["dropped"].get("keypoints not finite (NaN)") == 1, totals
    assert totals["dropped"].get("some keypoints not finite (NaN): those joints left out") == 1, totals
    for s in _samples(out):
        m = s.meta
        assert not (m["sequence"] == TRAIN and m["track"] == "1" and
                    {m["frame_target"], m["frame_reference"]} & set(nan_frames))


def _break_ignore_regions(video, doc):
    """A real unhandled path of the reader: ``ignore_regions_x`` as a number, not a list of polygons,
    makes ``ignore_polygons`` raise TypeError ('int' object is not subscriptable)."""
    if video == VAL:
        doc["images"][0]["ignore_regions_x"], doc["images"][0]["ignore_regions_y"] = 5, 5


def test_internal_error_in_one_unit_skips_that_unit_only(posetrack, tmp_path):
    """Per-unit error policy, with a real fault: the val video's JSON makes the reader raise a
    TypeError. At plan time (CLI build) the video is left out and named with its traceback, the
    train video is built; in a worker (the shard planned before the JSON broke) the video's pairs
    are counted as "internal error: TypeError" with the traceback, and the other video's pairs
    of the same shard are built. Before, the build (plan) or the whole shard (worker) failed."""
    from pairgen.config import BuildConfig
    from pairgen.sources.posetrack import PoseTrackSource

    broken = _tree_with(posetrack, tmp_path / "broken", _break_ignore_regions)
    with pytest.raises(TypeError):
        PoseTrackReader(str(broken)).load(VAL)
    out = tmp_path / "plan"
    _build(broken, out, "--num-pairs", "40", "--kinds", "cross_pose")
    totals = check_accounting(out)
    assert totals["dropped"] == {"internal error: TypeError": 1}, totals
    [entry] = [u for s in _stats(out) for u in s["skipped_units"] if u["unit"] == VAL]
    assert entry["reason"] == "internal error: TypeError" and entry["pairs"] == 0
    assert "ignore_polygons" in entry["detail"] and "TypeError" in entry["detail"].splitlines()[-1]
    assert {s.meta["sequence"] for s in _samples(out)} == {TRAIN}

    clean = _tree_with(posetrack, tmp_path / "clean", lambda video, doc: None)
    config = BuildConfig(source="posetrack", root=str(clean), out=str(tmp_path / "unused"), num_pairs=40,
                         kinds=("cross_pose",), min_gap_s=0.1, max_gap_s=0.6, shard_size=1000, local=True)
    source = PoseTrackSource(config)
    [task] = source.plan()
    planned = {u: sum(p["unit"] == u for p in task.payload["pairs"]) for u in (TRAIN, VAL)}
    assert all(planned.values()), planned
    _break_ignore_regions(VAL, doc := json.loads((clean / "posetrack_data" / "val" / f"{VAL}.json").read_text()))
    (clean / "posetrack_data" / "val" / f"{VAL}.json").write_text(json.dumps(doc))
    result = source.make_worker().build(task)
    assert len(result.pairs) + sum(result.skipped.values()) == task.planned
    assert result.skipped == {"internal error: TypeError": planned[VAL]}
    assert {r.meta["sequence"] for r in result.pairs} == {TRAIN} and len(result.pairs) == planned[TRAIN]
    [entry] = result.skipped_units
    assert (entry["unit"], entry["pairs"]) == (VAL, planned[VAL]) and "ignore_polygons" in entry["detail"]
    assert len(entry["detail"]) <= 2000


def test_errors_about_the_output_are_not_the_units():
    """What the policy does not swallow: out of memory, a full or read-only disk (also as the cause
    of another exception), KeyboardInterrupt; any other exception is the unit's."""
    import errno

    from pairgen.real.source import unit_fault

    assert unit_fault(TypeError("x")) and unit_fault(OSError(errno.ENOENT, "gone")) and unit_fault(ValueError())
    assert not unit_fault(MemoryError()) and not unit_fault(KeyboardInterrupt())
    for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
        assert not unit_fault(OSError(code, "disk"))
        try:
            try:
                raise OSError(code, "disk")
            except OSError as inner:
                raise RuntimeError("while writing a temporary file") from inner
        except RuntimeError as outer:
            assert not unit_fault(outer)


# -- the hard variant: A across every frame edge, tiny people, B unannotated / mid-video only,
#    a missing, a corrupt and a half-size frame ---------------------------------------------------

HARD_FRAMES = 24


@pytest.fixture(scope="module")
def hard(tmp_path_factory, synthetic_worker):
    """The train video only, 24 frames, PoseTrack21 tree, built end to end with keypoint silhouettes."""
    from source_checks import hard_build

    truth = make_posetrack_fixture(tmp_path_factory.mktemp("posetrack_hard"), synthetic_worker.generator.body,
                                   formats=("pt21",), frames=HARD_FRAMES, videos=VIDEOS[:1], hard=True,
                                   keep_masks=False)
    out = tmp_path_factory.mktemp("posetrack_hard_out") / "out"
    hard_build("posetrack", truth["roots"]["pt21"], out, "--num-pairs", "80", "--image-size", "128",
               "--min-gap-s", "0.04", "--max-gap-s", "0.9")
    return truth, out


def test_hard_fixture(hard):
    """Every planned pair is built or skipped for its true reason, crops across the edges are padded,
    unannotated people and missing frames are never planned, verify passes (in the fixture)."""
    from source_checks import SIZE_ANY, at_frame, check_hard_build, panned_case

    truth, out = hard
    h = truth["hard"]
    # a frame of another size: its true reason is checked by the next test
    built = check_hard_build("posetrack", out, panned_case(h, resized=SIZE_ANY), h, at_frame,
                             (truth["height"], truth["width"]))
    edge_frames = {f for f, e in h["pans"].items() if e != "tiny"}
    assert {m for s in built.samples for m in (s.meta["frame_target"], s.meta["frame_reference"])} & edge_frames
    used = {(t, f) for _, t, _, f in built.planned}
    first, last = h["track_span"][1]
    assert not {("1", f) for f in h["unlabelled"][1]} & used  # unannotated: never planned
    assert all(first <= f <= last for t, f in used if t == "1")  # B's track starts and ends mid-video
    assert h["missing"] not in {f for _, f in used}  # a missing file: dropped by the reader, never planned
    named = {u["unit"]: u["reason"] for u in _stats(out)[0]["skipped_units"]}
    assert named[f"{h['video']}/frame {h['missing']:06d}"] == "missing image"


def test_hard_fixture_frame_of_another_size_is_skipped_for_its_size(hard):
    """A frame written at half size: the annotation's pixels are not its pixels, so its pairs are
    skipped, for that reason (not built from the wrong pixels, nor "mostly outside the frame")."""
    from source_checks import at_frame, check_half_size_skipped, panned_case

    truth, out = hard
    check_half_size_skipped(out, panned_case(truth["hard"]), truth["hard"], at_frame)
