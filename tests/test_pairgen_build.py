"""End-to-end behaviour of a synthetic build: format, manifests, verify, determinism, resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples


def _hashes(out: Path) -> dict[str, str]:
    files = sorted(out.glob("*.tar")) + sorted((out / "manifest").glob("*.parquet"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_webdataset_reads_every_manifest_row(synthetic_build):
    import webdataset as wds

    out, _ = synthetic_build
    df = pd.read_parquet(out / "manifest")
    urls = layout.shard_urls(out)
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb")
    seen = []
    for s in ds:
        seen.append(s["__key__"])
        for k in ("target.jpg", "reference.jpg"):
            assert s[k].shape == (256, 256, 3) and s[k].dtype == np.float32
        for k in ("target.mask.png", "reference.mask.png", "target.depth.png", "reference.depth.png"):
            assert k in s
        assert s["json"]["key"] == s["__key__"]
    assert seen == df["key"].tolist()
    assert len(seen) == 24
    assert set(df["kind"]) == {"cross_view", "cross_pose"}


def test_manifest_columns_are_filled(synthetic_build):
    out, _ = synthetic_build
    df = pd.read_parquet(out / "manifest")
    cv, cp = df[df.kind == "cross_view"], df[df.kind == "cross_pose"]
    assert cv["time_gap_s"].isna().all() and cp["time_gap_s"].notna().all()
    assert (cp["time_gap_s"] >= 0.25 - 1e-6).all() and (cp["time_gap_s"] <= 1.5 + 1e-6).all()
    assert cv["azimuth_gap_deg"].between(0, 180).all()
    assert (df["human_fraction_target"] > 0.02).all() and (df["human_fraction_target"] < 1).all()
    assert (df["silhouette_method"] == "render").all()
    assert (df["jpeg_bytes_target"] > 1000).all() and df["has_depth"].all() and df["has_keypoints"].all()
    assert df["key"].is_unique
    assert df["shard"].str.fullmatch(r"synthetic-\d{6}\.tar").all()


def test_verify_accepts_build_and_rejects_damage(synthetic_build, tmp_path):
    import shutil

    from pairgen.verify import verify

    out, _ = synthetic_build
    assert verify(str(out))["ok"]
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    tar = sorted(bad.glob("*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # truncated tar
    (bad / "manifest" / "synthetic-000001.parquet").unlink()
    report = verify(str(bad))
    assert not report["ok"]
    text = "\n".join(report["problems"])
    assert "synthetic-000000" in text and "synthetic-000001" in text


def test_same_seed_same_bytes_and_ray_matches_local(synthetic_build, tmp_path):
    """Ray with 2 workers rebuilds the session's shards byte for byte (same seed)."""
    from pairgen.build import run_build
    from pairgen.config import BuildConfig

    out, cfg = synthetic_build
    again = tmp_path / "ray"
    summary = run_build(BuildConfig(**{**cfg.to_json(), "kinds": cfg.kinds, "out": str(again), "local": False,
                                       "workers": 2}), progress=False)
    assert summary["pairs_built"] == 24
    assert _hashes(again) == _hashes(out)
    # a different seed gives different pairs
    other = tmp_path / "seed8"
    run_build(BuildConfig(**{**cfg.to_json(), "kinds": cfg.kinds, "out": str(other), "seed": 8, "num_pairs": 8}),
              progress=False)
    assert _hashes(other)["synthetic-000000.tar"] != _hashes(out)["synthetic-000000.tar"]


def test_rerun_skips_finished_shards(synthetic_build):
    from pairgen.build import run_build

    out, cfg = synthetic_build
    before = _hashes(out)
    summary = run_build(cfg, progress=False)
    assert summary["shards_built"] == 0 and summary["shards_skipped_finished"] == 3
    assert _hashes(out) == before


def test_kill_minus_9_then_resume_gives_identical_output(synthetic_build, tmp_path):
    """SIGKILL a build after its first shard; the same command then completes it, bytes identical."""
    out0, cfg = synthetic_build
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pairgen.cli", "build", "--source", "synthetic", "--out", str(out),
           "--num-pairs", "24", "--shard-size", "8", "--seed", "7", "--local", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and layout.finished_shards(out):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = layout.finished_shards(out)
    assert 1 <= len(finished) < 3, f"kill landed at an unexpected point: {finished}"
    for p in out.rglob("*"):  # nothing half-written under a final name
        if p.suffix == ".tar":
            assert p.stem in finished
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600).returncode
    assert rc == 0
    assert _hashes(out) == _hashes(out0)
    assert not list((out / ".tmp").glob("*"))


def test_failed_shard_is_recorded_and_resumed(tmp_path, monkeypatch):
    from pairgen.build import run_build
    from pairgen.config import BuildConfig
    from pairgen.sources import synthetic

    real_build = synthetic.SyntheticWorker.build_into

    def flaky(self, task, sink):
        if task.index == 1:
            raise RuntimeError("injected fault in shard 1")
        return real_build(self, task, sink)

    monkeypatch.setattr(synthetic.SyntheticWorker, "build_into", flaky)
    cfg = BuildConfig(out=str(tmp_path / "o"), num_pairs=6, shard_size=2, seed=1, local=True, retries=1)
    summary = run_build(cfg, progress=False)
    assert summary["shards_failed"] == ["synthetic-000001.tar"]
    assert summary["pairs_built"] == 4
    fail = json.loads((tmp_path / "o" / "failures-synthetic.json").read_text())
    assert fail["failed"][0]["attempts"] == 2 and "injected fault" in fail["failed"][0]["error"]
    monkeypatch.setattr(synthetic.SyntheticWorker, "build_into", real_build)
    summary = run_build(cfg, progress=False)
    assert summary["shards_built"] == 1 and not summary["failures"]
    assert not (tmp_path / "o" / "failures-synthetic.json").exists()
    assert len(layout.finished_shards(tmp_path / "o")) == 3


def test_samples_decode_with_sizes_and_masks(synthetic_build):
    out, _ = synthetic_build
    key, members = next(iter_tar_samples(str(layout.shard_urls(out)[0])))
    s = decode_sample(key, members)
    assert s.target_mask.dtype == np.uint8 and set(np.unique(s.target_mask)) <= {0, 255}
    assert s.target_depth.dtype == np.uint16
    # depth is exactly where the silhouette is
    assert np.array_equal(s.target_depth > 0, s.target_mask > 0)
    d = s.target_depth[s.target_depth > 0]
    assert 1500 < np.median(d) < 12000  # millimetres: cameras 2.5-8 m away


@pytest.mark.parametrize("argv,needle", [
    (["--source", "nope"], "unknown source"),
    (["--num-pairs", "0"], "--num-pairs"),
    (["--image-size", "100"], "--image-size"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, needle):
    from pairgen.cli import main

    out = tmp_path / "o"
    rc = main(["build", "--out", str(out), "--local", "--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0]
    assert not out.exists()


def test_cli_refuses_foreign_out_dir_and_bad_backgrounds(tmp_path, capsys):
    from pairgen.cli import main

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    assert main(["build", "--out", str(foreign), "--local", "--quiet"]) == 2
    assert "not a pairgen output" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]

    empty = tmp_path / "bg_empty"
    empty.mkdir()
    assert main(["build", "--out", str(tmp_path / "o1"), "--backgrounds", str(empty), "--local", "--quiet"]) == 2
    assert "no images" in capsys.readouterr().err
    corrupt = tmp_path / "bg_corrupt"
    corrupt.mkdir()
    (corrupt / "a.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert main(["build", "--out", str(tmp_path / "o2"), "--backgrounds", str(corrupt), "--local", "--quiet"]) == 2
    assert "cannot decode" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_cli_unwritable_out(tmp_path, capsys):
    from pairgen.cli import main

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert main(["build", "--out", str(ro / "o"), "--local", "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_cli_unwritable_out_as_root(tmp_path, capsys):
    """A path under a regular file can never be created, even by root."""
    from pairgen.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["build", "--out", str(f / "o"), "--local", "--quiet"]) == 2
    assert "pairgen: error:" in capsys.readouterr().err


def test_backgrounds_dir_is_used(tmp_path):
    import cv2

    from pairgen.build import run_build
    from pairgen.config import BuildConfig

    bg = tmp_path / "bg"
    bg.mkdir()
    img = np.zeros((120, 200, 3), np.uint8)
    img[:, :, 2] = 255  # pure red in BGR
    cv2.imwrite(str(bg / "red.png"), img)
    out = tmp_path / "o"
    run_build(BuildConfig(out=str(out), num_pairs=2, shard_size=2, seed=3, local=True, backgrounds=str(bg)),
              progress=False)
    key, members = next(iter_tar_samples(str(layout.shard_urls(out)[0])))
    s = decode_sample(key, members)
    background = s.target[s.target_mask == 0].astype(int)
    assert background[:, 0].mean() > 230 and background[:, 1:].mean() < 25
    assert s.meta["background"] == ["image", "image"]


def test_stats_and_preview_write_pngs(synthetic_build, tmp_path):
    import cv2

    from pairgen.preview import preview
    from pairgen.stats import stats

    out, _ = synthetic_build
    text = stats(str(out), plot=str(tmp_path / "stats.png"))
    assert "cross_view" in text and "cross_pose" in text and "24 pairs" in text
    assert cv2.imread(str(tmp_path / "stats.png")) is not None
    n = preview(str(out), str(tmp_path / "p.png"), num=8)
    img = cv2.imread(str(tmp_path / "p.png"))
    assert n == 8 and img.shape[1] > 4 * 256


def test_every_registered_source_imports_and_describes_itself(capsys):
    from pairgen.cli import main
    from pairgen.sources import REGISTRY, source_class

    for name in REGISTRY:
        cls = source_class(name)
        assert cls.name == name and cls.summary and cls.needs
    assert main(["sources"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}\n" in out for name in REGISTRY)


@pytest.mark.parametrize("source", ["aist", "humbi", "interhand", "3dpw", "posetrack", "jrdb", "mars", "pennaction"])
def test_real_source_rejects_a_root_that_is_not_its_dataset(source, tmp_path, capsys):
    from pairgen.cli import main

    assert main(["build", "--source", source, "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--local",
                 "--quiet"]) != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", ["--local", "--workers=1"])
def test_progress_moves_per_pair_within_a_shard(tmp_path, mode):
    """Issue 11: the bar used to move only when a whole shard finished (0% for minutes with the
    default --shard-size 500). Now workers report each pair: with one 40-pair shard the bar passes
    through counts between 0 and 40 while "shards 0/1" still shows; Ray says when workers start."""
    import re

    r = subprocess.run([str(Path(sys.executable).with_name("pairgen")), "build", "--out", str(tmp_path / "o"),
                        "--num-pairs", "40", "--shard-size", "40", mode], capture_output=True, text=True,
                       env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=300)
    assert r.returncode == 0, r.stderr
    during = {int(m.group(1)) for m in re.finditer(r"\| *(\d+)/40 \[[^\]]*shards 0/1", r.stderr)}
    assert any(0 < n < 40 for n in during), r.stderr[-2000:]
    assert "shards 1/1" in r.stderr
    assert "Warp CUDA warning" not in r.stderr
    if mode != "--local":
        assert "pairgen: starting 1 Ray worker(s)" in r.stderr and "1 worker(s) ready on 1 node(s)" in r.stderr
