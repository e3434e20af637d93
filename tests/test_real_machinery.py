"""The shared real-source machinery (mining, decoding, crops, silhouettes, RealSource) on a tiny
rendered multi-camera capture with known ground truth, read through a minimal Reader."""

from __future__ import annotations

import numpy as np
import pytest

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples
from pairgen.real import crop as cropping
from pairgen.real.mining import mine_pairs
from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, CameraModel, Observation, Reader, Unit

FPS = 10.0
W, H = 320, 240


@pytest.fixture(scope="module")
def capture(tmp_path_factory, synthetic_worker):
    """3 static cameras x 8 frames of a walking person; JPEGs on disk, GT masks and joints in memory."""
    from pairgen.synthetic import appearance, camera as cam
    from pairgen.synthetic.background import procedural_background
    from pairgen.synthetic.gl import GLBodyRenderer
    from pairgen.synthetic.motions import MOTIONS, Clip
    from pairgen.synthetic.render import Camera
    from pairgen.synthetic.rig import DOF_NAMES

    body = synthetic_worker.generator.body
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    D = len(DOF_NAMES)
    clip = Clip("walk", False, 1.0, 1.0, 0.0, np.zeros(D), np.zeros((D, 1)), np.ones((D, 1)), np.zeros((D, 1)))
    assert "walk" in MOTIONS
    times = np.arange(8) / FPS
    posed = body.forward(np.full((8, 6), 0.5), clip.angles(times), np.zeros(8))
    renderer = GLBodyRenderer(W, body.faces, body.uv, 256, height=H)
    tex = appearance.random_outfit_texture(rng, synthetic_worker.generator.regions)[0]
    cams, gt, calib = {}, {}, {}
    for ci, az in enumerate((0.0, 1.2, 2.6)):
        center = cam.camera_center(np.array([0, 0, 0.0]), az, 0.1, 4.0)
        R, t = cam.look_at(center, np.zeros(3))
        c = Camera(R, t, 260.0, 260.0, W / 2, H / 2, W, H)
        name = f"c{ci}"
        cams[name] = c
        calib[name] = CameraModel(np.array(c.K), R, t, None, W, H)
        bg = procedural_background(np.random.default_rng(ci), max(W, H))[:H, :W]
        (root / name).mkdir()
        for f in range(8):
            V = posed.vertices[f]
            col, depth = renderer.render([(*body.surface(V), c)], tex, np.full(3, 0.5),
                                         [(np.array([0.2, 1.0, -1.0]), np.ones(3), 2.5)])[0]
            img = np.where((depth > 0)[..., None], col, bg)
            import cv2

            cv2.imwrite(str(root / name / f"{f:04d}.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            gt[(name, f)] = depth > 0
    renderer.close()
    return {"root": root, "cams": cams, "calib": calib, "gt": gt, "posed": posed, "faces": body.mesh_faces}


class ToyReader(Reader):
    name = "toy"
    summary = "test capture"
    data: dict = {}

    def unit_names(self):
        return [("seq0", "train")]

    def load(self, name):
        d = self.data
        if name != "seq0":
            raise BadUnit("unknown")
        obs = {}
        for cam, c in d["cams"].items():
            for f in range(8):
                uv, z = c.project(d["posed"].keypoints[f])
                k = np.concatenate([uv, np.ones((17, 1))], 1)
                obs[("0", cam, f)] = Observation(keypoints=k)
        return Unit(name="seq0", split="train", subject="s0", fps=FPS, frames=list(range(8)), cameras=list(d["cams"]),
                    observations=obs, images=("files", lambda cam, f: d["root"] / cam / f"{f:04d}.jpg"),
                    calibration=d["calib"], meshes=lambda track, f: (d["posed"].vertices[f], d["faces"]),
                    joints3d=lambda track, f: d["posed"].keypoints[f], silhouette_default="keypoints")


class ToySource(RealSource):
    reader_cls = ToyReader


@pytest.fixture
def toy_registry(capture, monkeypatch):
    from pairgen import sources

    ToyReader.data = capture
    monkeypatch.setitem(sources.REGISTRY, "toy", f"{__name__}:ToySource")
    return capture


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_mining_is_deterministic_and_geometric(toy_registry):
    unit = ToyReader(".").load("seq0")
    a = mine_pairs(unit, 6, 6, seed=1, min_gap_s=0.2, max_gap_s=0.5)
    assert a == mine_pairs(unit, 6, 6, seed=1, min_gap_s=0.2, max_gap_s=0.5)
    cv = [p for p in a if p.kind == "cross_view"]
    cp = [p for p in a if p.kind == "cross_pose"]
    assert len(cv) == 6 and len(cp) == 6
    for p in cv:
        assert p.frame_target == p.frame_reference and p.cam_target != p.cam_reference
        ca, cb = toy_registry["cams"][p.cam_target], toy_registry["cams"][p.cam_reference]
        centre = toy_registry["posed"].keypoints[p.frame_target].mean(0)
        da, db = centre - ca.center, centre - cb.center
        expect = np.degrees(np.arccos(np.dot(da, db) / np.linalg.norm(da) / np.linalg.norm(db)))
        assert p.view_angle_deg == pytest.approx(expect, abs=1e-3)
    for p in cp:
        assert p.cam_target == p.cam_reference and p.frame_target != p.frame_reference
        assert p.time_gap_s == pytest.approx(abs(p.frame_target - p.frame_reference) / FPS)
        assert 0.2 - 1e-9 <= p.time_gap_s <= 0.5 + 1e-9
    big = mine_pairs(unit, 6, 0, seed=1, min_view_angle_deg=100)
    assert big and all(p.view_angle_deg >= 100 for p in big)


@pytest.mark.parametrize("method,min_iou", [("keypoints", 0.5), ("bgsub", 0.7), ("smpl", 0.9)])
def test_build_crops_and_silhouettes_match_ground_truth(toy_registry, tmp_path, method, min_iou):
    from pairgen.build import run_build
    from pairgen.config import BuildConfig
    from pairgen.verify import verify

    out = tmp_path / method
    model_file = tmp_path / "model.pkl"  # the toy reader's meshes need no model; the option needs a file
    model_file.write_bytes(b"")
    cfg = BuildConfig(source="toy", root=str(toy_registry["root"]), out=str(out), num_pairs=12, shard_size=50,
                      local=True, silhouette=method, min_gap_s=0.2, max_gap_s=0.5,
                      smpl_model=str(model_file) if method == "smpl" else None)
    summary = run_build(cfg, progress=False)
    assert summary["pairs_built"] == 12, summary
    assert verify(str(out))["ok"]
    ious = []
    for key, members in iter_tar_samples(str(layout.shard_urls(out)[0])):
        s = decode_sample(key, members)
        m = s.meta
        for side, mask, cam, frame in (("target", s.target_mask, m["camera_target"], m["frame_target"]),
                                       ("reference", s.reference_mask, m["camera_reference"], m["frame_reference"])):
            box = np.array([m[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")])
            gt = cropping.crop_resize(toy_registry["gt"][(cam, frame)].astype(np.uint8) * 255, box, 256, nearest=True)
            ious.append(_iou(mask > 0, gt > 0))
            # the crop holds all of the person's projected joints
            uv, _ = toy_registry["cams"][cam].project(toy_registry["posed"].keypoints[frame])
            inside = cropping.to_crop(uv, box, 256)
            assert ((inside >= 0) & (inside < 256)).all()
    print(method, "IoU mean", round(float(np.mean(ious)), 3), "min", round(float(min(ious)), 3))
    assert min(ious) >= min_iou - 0.1 and np.mean(ious) >= min_iou, (method, np.round(ious, 3))


def test_corrupt_jpeg_is_skipped_and_named(toy_registry, tmp_path):
    import shutil

    from pairgen.build import run_build
    from pairgen.config import BuildConfig

    root = tmp_path / "root"
    shutil.copytree(toy_registry["root"], root)
    data = dict(toy_registry, root=root)
    ToyReader.data = data
    for f in range(8):
        (root / "c1" / f"{f:04d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    out = tmp_path / "o"
    summary = run_build(BuildConfig(source="toy", root=str(root), out=str(out), num_pairs=12, local=True,
                                    min_gap_s=0.2, max_gap_s=0.5), progress=False)
    ToyReader.data = toy_registry
    assert 0 < summary["pairs_built"] < 12
    import json

    from source_checks import check_accounting

    stats = json.loads(layout.stats_path(out, layout.finished_shards(out)[0]).read_text())
    # the frames are dropped parts (counted per frame, not as pairs); their pairs are skipped pairs
    assert stats["metrics"]["dropped"]["corrupt JPEG"] >= 1
    assert stats["skipped"]["frame not decoded"] == 12 - summary["pairs_built"]
    assert any(u["unit"].startswith("seq0/c1/") and u["pairs"] == 0 for u in stats["skipped_units"])
    check_accounting(out)


def test_unknown_split_is_a_one_line_error(toy_registry, tmp_path, capsys):
    from pairgen.cli import main

    out = tmp_path / "o"
    rc = main(["build", "--source", "toy", "--root", str(toy_registry["root"]), "--out", str(out), "--split", "nope",
               "--local", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no unit in split 'nope'" in err[0] and "train" in err[0]
    assert not out.exists()


def test_video_regions_are_the_whole_frames_pixels(tmp_path):
    """A VideoImage converts only the region a crop asks for; its pixels equal the same region of
    the whole frame's RGB conversion (odd edges, frame borders, tiny and large regions)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_aist import write_video

    from pairgen.real.frames import video_frames

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for i in range(3):  # smooth colour ramps plus noise: every chroma sample matters
        base = np.stack([(xx * 0.7 + i * 20) % 256, (yy * 0.9 + xx * 0.2) % 256, (xx + yy + i * 50) % 256], -1)
        frames.append(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
    path = tmp_path / "v.mp4"
    write_video(path, frames, fps=10)
    metrics: dict = {}
    got = list(video_frames(path, {0, 1, 2}, 10.0, metrics))
    assert [i for i, _ in got] == [0, 1, 2] and metrics["decoded_frames"] == 3
    for _, img in got:
        assert img.shape == (H, W, 3)
        regions = [(0, H, 0, W // 8), (1, 2, 1, 2), (0, 1, W - 1, W), (H - 5, H, 0, W // 4), (7, 120, 13, 101)]
        for _ in range(40):
            y0, x0 = int(rng.integers(0, H - 1)), int(rng.integers(0, W - 1))
            regions.append((y0, int(rng.integers(y0 + 1, min(H, y0 + 30) + 1)), x0,
                            int(rng.integers(x0 + 1, min(W, x0 + 30) + 1))))
        parts = [img[y0:y1, x0:x1] for y0, y1, x0, x1 in regions]
        assert img._rgb is None  # each part was converted on its own
        whole = np.asarray(img)
        for (y0, y1, x0, x1), part in zip(regions, parts):
            assert part.shape == (y1 - y0, x1 - x0, 3) and part.dtype == np.uint8
            assert np.array_equal(part, whole[y0:y1, x0:x1]), (y0, y1, x0, x1)
        assert np.array_equal(img[5:50, 60:200], whole[5:50, 60:200])  # sliced from the whole frame now
    assert metrics["decode_s"] > 0


def test_in_frame_is_the_nearest_crop_of_the_frame():
    """cropping.in_frame (two 1-D resizes) equals crop_resize of an all-ones frame, nearest."""
    rng = np.random.default_rng(5)
    checked = 0
    while checked < 500:
        h, w = int(rng.integers(20, 1200)), int(rng.integers(20, 1200))
        side = float(rng.uniform(2, 2.5 * max(h, w)))
        cx, cy = rng.uniform(-0.5 * w, 1.5 * w), rng.uniform(-0.5 * h, 1.5 * h)
        box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
        used = cropping.crop_box_used(box)
        if not (used[0] < w and used[2] > 0 and used[1] < h and used[3] > 0):
            continue  # the worker skips people outside the frame before asking
        size = int(rng.choice([32, 256, int(rng.integers(2, 600)), int(used[2] - used[0])]))
        expect = cropping.crop_resize(np.broadcast_to(np.uint8(1), (h, w)), box, size, nearest=True) > 0
        assert np.array_equal(cropping.in_frame(box, size, h, w), expect), (h, w, box, size)
        checked += 1
