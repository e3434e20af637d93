"""Penn Action source: the reader on a rendered dataset in the real layout (labels/*.mat written with
scipy.io.savemat), end-to-end builds checked against the fixture's ground truth (same track,
crops hold the joints, silhouettes on the target and not on the other person, gaps = frames / fps),
and faults (malformed .mat, corrupt JPEG, frames missing on disk, a one-frame video)."""

from __future__ import annotations

import functools

import os
import shutil

import numpy as np
import pytest

from fixtures_pennaction import FAULTS, VIDEOS, inject_faults, make_pennaction_fixture
from pairgen.real import crop as cropping
from pairgen.real.types import BadUnit
from pairgen.sources.pennaction import PennActionReader
from source_checks import check_accounting, console_build_and_verify, build_and_verify, read_samples as _samples, \
    read_stats as _stats

COCO_SLOTS = (0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)  # README order -> COCO-17


@pytest.fixture(scope="module")
def penn(tmp_path_factory, synthetic_worker):
    """Four videos (16-20 frames, 480x270), one with a second, unannotated person."""
    return make_pennaction_fixture(tmp_path_factory.mktemp("penn"), synthetic_worker.generator.body)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, penn):
    base = tmp_path_factory.mktemp("penn_faults") / "Penn_Action"
    shutil.copytree(penn["root"], base)
    truth = dict(penn)
    truth["faults"] = inject_faults(truth, FAULTS, base)
    truth["root"] = base
    return truth


_build = functools.partial(build_and_verify, "pennaction")


def _crop_mask(mask: np.ndarray, box: np.ndarray, S: int) -> np.ndarray:
    return cropping.crop_resize(mask.astype(np.float32), box, S) > 0.5


def _check_against_truth(samples, truth, fps: float = 30.0) -> dict:
    """Same track in both images, gaps = frame difference / fps, crops hold the labelled joints,
    silhouettes overlap the target and not the second person. Returns the measured figures."""
    S = samples[0].target.shape[0]
    ious, on_other, other_in_crop = [], [], 0
    for s in samples:
        m = s.meta
        vid = int(m["sequence"])
        gt = truth["videos"][vid]
        assert m["kind"] == "cross_pose" and m["track"] == "0" and m["subject"] == m["sequence"] == f"{vid:04d}"
        assert m["split"] == gt["split"] and m["fps"] == fps
        assert m["camera_target"] == m["camera_reference"] == "cam0" and m["frame_target"] != m["frame_reference"]
        assert m["time_gap_s"] == pytest.approx(abs(m["frame_target"] - m["frame_reference"]) / fps, abs=1e-6)
        assert m["keypoint_format"] == "coco17"
        for side, mask in (("target", s.target_mask), ("reference", s.reference_mask)):
            frame = m[f"frame_{side}"]
            box = np.array([m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")])
            joints = gt["joints"][frame]
            in_crop = cropping.to_crop(joints, box, S)
            assert ((in_crop >= 0) & (in_crop < S)).all(), f"{s.key} {side}: a labelled joint falls outside the crop"
            # the sample's keypoints are this track's labelled joints (the same person in both images)
            kps = np.array(m[f"keypoints_{side}"])
            vis = gt["visibility"][frame - 1]
            assert np.abs(kps[list(COCO_SLOTS)][vis, :2] - in_crop[vis]).max() < 0.01
            pred = mask > 0
            gt_mask = _crop_mask(gt["masks"][frame], box, S)
            ious.append(float((pred & gt_mask).sum() / max((pred | gt_mask).sum(), 1)))
            if gt["other"].get(frame) is not None:
                other = _crop_mask(gt["other"][frame], box, S) & ~gt_mask
                if other.sum() > 0.02 * S * S:
                    other_in_crop += 1
                    on_other.append(float((pred & other).sum() / max(pred.sum(), 1)))
    return {"mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)), "n": len(ious),
            "on_other_max": max(on_other, default=0.0), "other_in_crop": other_in_crop}


# -- labels and the reader -------------------------------------------------------------------
def test_labels_have_the_real_loadmat_layout(penn):
    import scipy.io

    m = scipy.io.loadmat(str(penn["root"] / "labels" / "0001.mat"))
    T = VIDEOS[1][0]
    assert m["nframes"][0, 0] == T and m["action"][0] == penn["videos"][1]["action"] and m["pose"][0] in ("front", "side")
    assert m["x"].shape == m["y"].shape == m["visibility"].shape == (T, 13) and m["bbox"].shape == (T, 4)
    assert m["train"][0, 0] == 1 and m["dimensions"].tolist() == [[270, 480, T]]
    assert scipy.io.loadmat(str(penn["root"] / "labels" / "0003.mat"))["train"][0, 0] != 1
    assert sorted(p.name for p in (penn["root"] / "frames" / "0001").iterdir())[:2] == ["000001.jpg", "000002.jpg"]


def test_reader_lists_videos_and_loads_observations(penn):
    reader = PennActionReader(str(penn["root"]))
    reader.check()
    assert reader.unit_names() == [("0001", "train"), ("0002", "train"), ("0003", "test"), ("0004", "test")]
    for vid, (T, train, fmt, _) in VIDEOS.items():
        unit = reader.load(f"{vid:04d}")
        gt = penn["videos"][vid]
        assert unit.name == unit.subject == f"{vid:04d}" and unit.split == gt["split"] and unit.fps == 30.0
        assert unit.frames == list(range(1, T + 1)) and unit.cameras == ["cam0"] and unit.skipped == []
        assert unit.kind == "body" and unit.silhouette_default == "keypoints" and unit.meshes is None
        assert set(unit.observations) == {("0", "cam0", f) for f in range(1, T + 1)}
        for f in unit.frames:
            obs = unit.observations[("0", "cam0", f)]
            k, vis = obs.keypoints, gt["visibility"][f - 1]
            assert k.shape == (17, 3) and (k[1:5, 2] == 0).all()  # eyes and ears are not labelled
            assert np.allclose(k[list(COCO_SLOTS)][vis, :2], gt["joints"][f][vis], atol=1e-6)
            assert (k[list(COCO_SLOTS), 2] == vis).all()
            assert np.allclose(obs.box, gt["bbox"][f - 1])  # [x y w h] of video 0003 detected
            assert unit.image_path("cam0", f) == penn["root"] / "frames" / f"{vid:04d}" / f"{f:06d}.jpg"
    # the occluded wrist of video 0002 (frames 3-5) is not usable
    unit = reader.load("0002")
    assert [unit.observations[("0", "cam0", f)].keypoints[9, 2] for f in (2, 3, 4, 5, 6)] == [1, 0, 0, 0, 1]


def test_reader_options(penn, tmp_path):
    root = str(penn["root"])
    readme = PennActionReader(root).load("0001").observations[("0", "cam0", 4)].keypoints
    other = PennActionReader(root, {"joint_order": "right_first", "fps": "25"})
    other.check()
    unit = other.load("0001")
    swapped = unit.observations[("0", "cam0", 4)].keypoints
    assert unit.fps == 25.0
    pairs = [(5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
    for a, b in pairs:
        assert np.array_equal(swapped[a], readme[b]) and np.array_equal(swapped[b], readme[a])
    assert np.array_equal(swapped[0], readme[0])
    # forcing the wrong box reading on the [x y w h] video: the box misses the joints and is dropped
    unit = PennActionReader(root, {"bbox": "xyxy"}).load("0003")
    assert [(p, r) for p, r, _ in unit.skipped] == [("bbox", "bbox does not hold the joints: ignored")]
    assert all(o.box is None for o in unit.observations.values())
    for bad, match in (({"fps": "0"}, "fps=0"), ({"joint_order": "left"}, "joint_order=left"),
                       ({"bbox": "cxcywh"}, "bbox=cxcywh")):
        with pytest.raises(ValueError, match=match):
            PennActionReader(root, bad).check()
    # an unknown key is refused by the source's check (the keys PennActionReader.option_help declares)
    from pairgen.config import BuildConfig
    from pairgen.sources.pennaction import PennActionSource

    with pytest.raises(ValueError, match=r"unknown --reader-option fsp \(accepted: bbox, fps, joint_order\)"):
        PennActionSource(BuildConfig(source="pennaction", root=root, reader_options=("fsp=30",))).check()
    with pytest.raises(ValueError, match="frames/ and labels/"):
        PennActionReader(str(tmp_path)).check()


def test_reader_rejects_malformed_labels(penn, tmp_path):
    import scipy.io

    base = tmp_path / "Penn_Action"
    shutil.copytree(penn["root"], base)
    good = scipy.io.loadmat(str(base / "labels" / "0002.mat"))
    fields = {k: v for k, v in good.items() if not k.startswith("__")}
    scipy.io.savemat(str(base / "labels" / "0002.mat"), {**fields, "x": fields["x"][:, :12]})
    scipy.io.savemat(str(base / "labels" / "0003.mat"), {k: v for k, v in fields.items() if k != "visibility"})
    (base / "labels" / "0004.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" + bytes(100))
    shutil.rmtree(base / "frames" / "0001")
    reader = PennActionReader(str(base))
    assert dict(reader.unit_names())["0004"] == "unknown"  # unreadable: no split, named when built
    with pytest.raises(BadUnit, match=r"malformed 0002.mat: x is \[18, 12\], expected \[18, 13\]"):
        reader.load("0002")
    with pytest.raises(BadUnit, match="malformed 0003.mat: no variable visibility"):
        reader.load("0003")
    with pytest.raises(BadUnit, match="malformed 0004.mat"):
        reader.load("0004")
    with pytest.raises(BadUnit, match="missing frames folder frames/0001"):
        reader.load("0001")


def test_reader_reports_missing_frames_and_single_frame(faulty):
    reader = PennActionReader(str(faulty["root"]))
    unit = reader.load("0003")
    assert unit.skipped == [("frames 000006-000009", "frames missing on disk", "4 of the 16 frames listed by nframes")]
    assert unit.frames == [1, 2, 3, 4, 5] + list(range(10, 17))
    one = reader.load("0005")
    assert one.frames == [1] and one.split == "train"


# -- end to end ------------------------------------------------------------------------------
def test_build_in_process_against_truth(penn, tmp_path):
    """Default kinds (cross_view cannot be mined from one camera): only cross_pose pairs come out."""
    out = tmp_path / "kp"
    _build(penn["root"], out, "--num-pairs", "64", "--shard-size", "16")
    samples = _samples(out)
    # one camera: the cross-view share of the quota goes to cross-pose, so the build is complete
    assert len(samples) == 64 and {s.meta["sequence"] for s in samples} == {"0001", "0002", "0003", "0004"}
    # the 13 raw Penn joints travel in the JSON for the auxiliary keypoint loss, mapped into the crops
    for s in samples:
        for side in ("target", "reference"):
            raw = np.array(s.meta[f"pennaction13_{side}"])
            coco = np.array(s.meta[f"keypoints_{side}"])
            assert raw.shape == (13, 3) and np.allclose(raw[0, :2], coco[0, :2])  # head sits in COCO's nose slot
    assert {s.meta["silhouette_method"] for s in samples} == {"keypoints"}
    res = _check_against_truth(samples, penn)
    print(f"pennaction keypoints: {len(samples)} pairs, IoU mean {res['mean_iou']:.3f} min {res['min_iou']:.3f} "
          f"over {res['n']} crops; second person in {res['other_in_crop']} crops, max share of the silhouette on "
          f"it {res['on_other_max']:.3f}")
    assert res["mean_iou"] >= 0.5 and res["min_iou"] >= 0.35
    assert res["other_in_crop"] >= 2 and res["on_other_max"] < 0.15


def test_console_script_with_fps_option(penn, tmp_path):
    """The console script in a subprocess; --reader-option fps=25 changes the recorded gaps."""
    out = tmp_path / "cli"
    rows = console_build_and_verify("pennaction", penn["root"], out, "--num-pairs", "24", "--kinds", "cross_pose",
                                    "--reader-option", "fps=25")
    assert len(rows) == 24 and set(rows["kind"]) == {"cross_pose"} and set(rows["track"]) == {"0"}
    assert set(zip(rows["subject"], rows["split"])) == {("0001", "train"), ("0002", "train"), ("0003", "test"),
                                                         ("0004", "test")}
    gaps = (rows["frame_target"] - rows["frame_reference"]).abs() / 25.0
    assert np.allclose(rows["time_gap_s"], gaps, atol=1e-6)
    assert (rows["time_gap_s"] >= 0.25 - 0.5 / 25).all()
    _check_against_truth(_samples(out), penn, fps=25.0)


def test_split_train_keeps_train_videos(penn, tmp_path):
    out = tmp_path / "train"
    _build(penn["root"], out, "--num-pairs", "12", "--split", "train")
    samples = _samples(out)
    assert samples and {s.meta["split"] for s in samples} == {"train"}
    assert {s.meta["sequence"] for s in samples} <= {"0001", "0002"}


def test_build_with_faults_skips_and_names_bad_units(faulty, tmp_path):
    out = tmp_path / "faults"
    _build(faulty["root"], out, "--num-pairs", "200", "--kinds", "cross_pose")
    stats = _stats(out)
    named = [(u["unit"], u["reason"]) for s in stats for u in s["skipped_units"]]
    counts: dict = {}
    for s in stats:
        for k, v in s["skipped"].items():
            counts[k] = counts.get(k, 0) + v
    f = faulty["faults"]
    assert any(u == f["bad_mat"] and r.startswith("bad unit: malformed 0004.mat") for u, r in named), named
    vid, frame = f["corrupt_jpeg"]
    assert any(u == f"{vid}/cam0/{frame}" and "corrupt JPEG" in r for u, r in named), named
    assert ("0003/frames 000006-000009", "frames missing on disk") in named, named
    assert (f["single_frame"], "no pair could be mined") in named, named
    dropped = check_accounting(out)["dropped"]  # parts, not pairs: in metrics.dropped
    assert dropped.get("frames missing on disk") == 1 and dropped.get("no pair could be mined") == 1, dropped
    assert set(counts) <= {"frame not decoded"}, counts  # the pairs of the corrupt JPEG
    samples = _samples(out)
    assert samples and {s.meta["sequence"] for s in samples} == {"0001", "0002", "0003"}
    for s in samples:
        m = s.meta
        used = {m["frame_target"], m["frame_reference"]}
        assert not (m["sequence"] == "0003" and used & {6, 7, 8, 9})
        assert not (m["sequence"] == "0002" and 1 in used)
    _check_against_truth(samples, faulty)


# -- skip reasons: every pair planned and not built is counted under its true reason ------------
def _rewrite_labels(base, vid: str, **changes) -> None:
    import scipy.io

    m = scipy.io.loadmat(str(base / "labels" / f"{vid}.mat"))
    fields = {k: v for k, v in m.items() if not k.startswith("__")}
    scipy.io.savemat(str(base / "labels" / f"{vid}.mat"), {**fields, **changes})


def test_nan_keypoints_are_dropped_with_their_reason(penn, tmp_path):
    """Regression: visible joints stored as NaN (frames 5-8 of 0002, with their boxes) made pairs
    planned on those frames and skipped as "empty silhouette"; now the frames are dropped while
    loading, named "keypoints not finite (NaN)", and never planned. Two NaN joints among many are
    left out and named too."""
    import scipy.io

    base = tmp_path / "Penn_Action"
    shutil.copytree(penn["root"], base)
    m = scipy.io.loadmat(str(base / "labels" / "0002.mat"))
    x, y = m["x"].astype(np.float64), m["y"].astype(np.float64)
    x[4:8], y[4:8] = np.nan, np.nan  # frames 5-8: every joint
    x[11, :2] = np.nan  # frame 12: the head and the left shoulder
    _rewrite_labels(base, "0002", x=x, y=y)
    unit = PennActionReader(str(base)).load("0002")
    assert [(p, r) for p, r, _ in unit.skipped] == [
        ("frames 000005-000008", "keypoints not finite (NaN)"),
        ("frame 000012", "some keypoints not finite (NaN): those joints left out")]
    assert not {5, 6, 7, 8} & set(unit.frames) and 12 in unit.frames
    assert (unit.observations[("0", "cam0", 12)].keypoints[[0, 5], 2] == 0).all()
    out = tmp_path / "nan"
    _build(base, out, "--num-pairs", "64", "--kinds", "cross_pose")
    totals = check_accounting(out)
    assert "empty silhouette" not in totals["skipped"], totals
    assert totals["dropped"].get("keypoints not finite (NaN)") == 1, totals
    for s in _samples(out):
        assert not (s.meta["sequence"] == "0002" and {s.meta["frame_target"], s.meta["frame_reference"]} & {5, 6, 7, 8})


def test_unlabelled_person_is_skipped_as_such(penn, tmp_path):
    """Regression: a frame whose joints are all invisible but that has a box gave an empty keypoint
    silhouette, counted as "empty silhouette"; the reason is now "fewer than 2 labelled keypoints"."""
    import scipy.io

    base = tmp_path / "Penn_Action"
    shutil.copytree(penn["root"], base)
    vis = scipy.io.loadmat(str(base / "labels" / "0004.mat"))["visibility"].copy()
    vis[::2] = 0  # every odd frame: nobody labelled, the box kept
    _rewrite_labels(base, "0004", visibility=vis)
    out = tmp_path / "unlabelled"
    _build(base, out, "--num-pairs", "80", "--kinds", "cross_pose", "--split", "test")
    totals = check_accounting(out)
    assert totals["skipped"].get("fewer than 2 labelled keypoints", 0) > 0, totals
    assert "empty silhouette" not in totals["skipped"], totals


def test_frames_of_another_size_are_skipped_as_such(penn, tmp_path):
    """Regression: frames stored at half the size the labels' ``dimensions`` state were cropped at
    the labels' pixels and skipped as "person mostly outside the frame" (or cropped at the wrong
    place); now each such pair is skipped as a frame of another size, with keypoint and bgsub
    silhouettes alike (bgsub's background median also crashed on frames of two sizes)."""
    import cv2

    base = tmp_path / "Penn_Action"
    shutil.copytree(penn["root"], base)
    for p in sorted((base / "frames" / "0003").glob("*.jpg")):
        img = cv2.imread(str(p))
        if int(p.stem) % 2 == 0:  # the even frames only: the background median sees two sizes
            cv2.imwrite(str(p), cv2.resize(img, (240, 135), interpolation=cv2.INTER_AREA))
    reason = "frame size 240x135 differs from the annotation's 480x270"
    for method in ("keypoints", "bgsub"):
        out = tmp_path / method
        _build(base, out, "--num-pairs", "60", "--kinds", "cross_pose", "--split", "test", "--silhouette", method)
        totals = check_accounting(out)
        assert totals["skipped"].get(reason, 0) > 0 and "person mostly outside the frame" not in totals["skipped"], \
            (method, totals)
        for s in _samples(out):
            if s.meta["sequence"] == "0003":
                assert s.meta["frame_target"] % 2 and s.meta["frame_reference"] % 2, s.key


# -- the hard variant: the person across every frame edge, tiny, unlabelled at both ends, fully
#    occluded; a corrupt, a half-size and a missing frame --------------------------------------------

@pytest.fixture(scope="module")
def hard(tmp_path_factory, synthetic_worker):
    """One 24-frame video, built end to end with keypoint silhouettes."""
    from source_checks import hard_build

    truth = make_pennaction_fixture(tmp_path_factory.mktemp("penn_hard"), synthetic_worker.generator.body,
                                    videos={1: (24, True, "xyxy", False)}, hard=True, keep_masks=False)
    out = tmp_path_factory.mktemp("penn_hard_out") / "out"
    hard_build("pennaction", truth["root"], out, "--num-pairs", "56", "--image-size", "128",
               "--min-gap-s", "0.03", "--max-gap-s", "0.8")
    return truth, out


def test_hard_fixture(hard):
    """Every planned pair is built or skipped for its true reason, crops across the edges are padded,
    unlabelled and missing frames are never planned, verify passes (in the fixture)."""
    from source_checks import at_frame, check_hard_build, named_skips, panned_case

    truth, out = hard
    h = truth["hard"]

    def occluded(unit, track, cam, frame):
        return (True, {"fewer than 2 labelled keypoints"}) if frame in h["occluded"] else None

    built = check_hard_build("pennaction", out, panned_case(h, rest=occluded), h, at_frame,
                             (truth["height"], truth["width"]))
    planned = {f for *_, f in built.planned}
    assert h["half_size"] in planned and set(h["occluded"]) & planned
    assert not planned & {*h["unlabelled"], h["missing"]}  # nobody labelled / no file: never planned
    assert named_skips(out)[f"{h['video']}/frame {h['missing']:06d}"] == "frames missing on disk"


def test_parallel_planning_gives_the_same_plan(penn, tmp_path):
    """Issue 12: a dataset of many units is planned by several processes (batches of units loaded
    and mined in parallel); the plan is the same as one process's, whatever the number of processes."""
    from pairgen.config import BuildConfig
    from pairgen.real import source as real_source
    from pairgen.sources import make_source

    base = tmp_path / "Penn_Action"
    (base / "labels").mkdir(parents=True)
    (base / "frames").mkdir()
    originals = sorted((penn["root"] / "labels").glob("*.mat"))
    n_units = 2 * real_source.PLAN_BATCH + 8  # more than one process is used above 2 batches
    for i in range(n_units):  # many videos: copies of the fixture's labels, frames shared by links
        src = originals[i % len(originals)]
        shutil.copy(src, base / "labels" / f"{i + 1:04d}.mat")
        (base / "frames" / f"{i + 1:04d}").symlink_to(penn["root"] / "frames" / src.stem)

    def plan(**kw):
        cfg = BuildConfig(source="pennaction", root=str(base), out=str(tmp_path / "o"), num_pairs=400,
                          shard_size=40, seed=3, **kw)
        source = make_source(cfg)
        return source.planning_processes(n_units), [(t.index, t.planned, t.payload) for t in source.plan()]

    procs_serial, serial = plan(local=True)
    procs_parallel, parallel = plan(workers=2)
    assert procs_serial == 1 and procs_parallel == min(2, os.cpu_count())
    assert serial == parallel and sum(p for _, p, _ in serial) == 400


def test_resumed_build_reuses_its_plan(penn, tmp_path):
    """Issue 12: a resumed build reads OUT/plan-<source>.parquet instead of planning again (for a
    full dataset, minutes of reading annotations). Shown by a label file that breaks after the first
    run: planning again would leave its unit out and change the shards; the resume does not read it,
    rebuilds only the missing shard, and gives the same bytes. --replan plans again, and rebuilds the
    shards the new plan changes (their stats record the task they were built from)."""
    import hashlib

    from pairgen.build import run_build
    from pairgen.config import BuildConfig
    from pairgen.verify import verify

    base = tmp_path / "Penn_Action"
    shutil.copytree(penn["root"], base, symlinks=True)
    out = tmp_path / "out"
    cfg = dict(source="pennaction", root=str(base), out=str(out), num_pairs=40, shard_size=8, seed=1, local=True)
    first = run_build(BuildConfig(**cfg), progress=False, log=lambda m: None)
    assert first["shards_total"] >= 3

    def files():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.glob("*.tar")) + sorted(out.glob("manifest/*.parquet"))}

    before = files()
    names = sorted(p.stem for p in out.glob("*.tar"))
    for rel in (f"{names[-1]}.tar", f"manifest/{names[-1]}.parquet", f"stats/{names[-1]}.json"):
        (out / rel).unlink()
    broken = sorted((base / "labels").glob("*.mat"))[0]
    broken.write_bytes(b"not a mat file")
    logs = []
    again = run_build(BuildConfig(**cfg), progress=False, log=logs.append)
    assert any("reusing the plan in plan-pennaction.parquet" in m for m in logs), logs
    assert again["shards_built"] == 1 and files() == before and verify(str(out))["ok"]
    logs = []
    replanned = run_build(BuildConfig(**cfg, replan=True), progress=False, log=logs.append)
    assert not any("reusing the plan" in m for m in logs)
    assert replanned["shards_built"] >= 1 and any("built from another plan" in m for m in logs), logs
    assert verify(str(out))["ok"]
