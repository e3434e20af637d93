"""The SMPL body path (--body smpl --smpl-model FILE) and AMASS motions (--motions DIR)."""

from __future__ import annotations

import numpy as np
import pytest

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples
from geometry_checks import keypoints_inside_fraction
from smpl_fixture import make_amass_files, make_smpl_file


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory, synthetic_worker):
    return make_smpl_file(tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl", synthetic_worker.generator.body)


def _samples(out):
    return [decode_sample(k, m) for tar in layout.shard_urls(out) for k, m in iter_tar_samples(str(tar))]


def _keypoints_inside(samples) -> float:
    return keypoints_inside_fraction(samples)[0]


def test_smpl_body_builds_and_verifies(smpl_file, tmp_path):
    from pairgen.build import run_build
    from pairgen.config import BuildConfig
    from pairgen.verify import verify

    out = tmp_path / "smpl"
    summary = run_build(BuildConfig(out=str(out), num_pairs=8, shard_size=4, seed=2, local=True, body="smpl",
                                    smpl_model=str(smpl_file)), progress=False)
    assert summary["pairs_built"] == 8 and verify(str(out))["ok"]
    samples = _samples(out)
    assert {s.meta["body"]["model"] for s in samples} == {"smpl"}
    assert {s.meta["kind"] for s in samples} == {"cross_view", "cross_pose"}
    for s in samples:
        frac = (s.target_mask > 0).mean()
        assert 0.03 < frac < 0.6  # a whole, upright person, not an explosion of triangles
        ys, xs = np.nonzero(s.target_mask)
        assert np.ptp(ys) > np.ptp(xs) * 0.6  # taller than wide (or a spread pose)
    assert _keypoints_inside(samples) >= 0.9


def test_smpl_rig_matches_anny_rig_directions(smpl_file, synthetic_worker):
    """The same joint angles bend both bodies the same way (limb directions agree)."""
    from pairgen.synthetic.motions import sample_clip
    from pairgen.synthetic.smpl_body import SmplBody

    anny = synthetic_worker.generator.body
    smpl = SmplBody(str(smpl_file))
    rng = np.random.default_rng(0)
    angles = np.concatenate([sample_clip(rng).angles([0.5]) for _ in range(6)])
    ph = np.full((6, 6), 0.5)
    ka = anny.forward(ph, angles, np.zeros(6)).keypoints
    ks = smpl.forward(ph, angles, np.zeros(6)).keypoints
    cos = []
    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16)):  # limbs
        da, ds = ka[:, b] - ka[:, a], ks[:, b] - ks[:, a]
        cos.append(np.sum(da * ds, 1) / (np.linalg.norm(da, axis=1) * np.linalg.norm(ds, axis=1)))
    assert np.mean(cos) > 0.9


def test_amass_motions_drive_the_smpl_body(smpl_file, tmp_path):
    from pairgen.build import run_build
    from pairgen.config import BuildConfig
    from pairgen.synthetic.amass import MotionBank

    motions = make_amass_files(tmp_path / "amass")
    bank = MotionBank.from_directory(str(motions))
    assert len(bank.files) == 2 and any("shape.npz" in k for k in bank.skipped)
    out = tmp_path / "amass_out"
    run_build(BuildConfig(out=str(out), num_pairs=4, shard_size=4, seed=0, local=True, body="smpl",
                          smpl_model=str(smpl_file), motions=str(motions), kinds=("cross_pose",)), progress=False)
    samples = _samples(out)
    assert len(samples) == 4
    assert all(s.meta["motion_clip"]["motion"].startswith("amass:walk") for s in samples)
    assert all(s.meta["motion"] > 0.01 for s in samples)
    assert _keypoints_inside(samples) >= 0.9


def test_bad_smpl_inputs_are_one_line_errors(tmp_path, capsys):
    from pairgen.cli import main

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    assert main(["build", "--out", str(tmp_path / "o"), "--body", "smpl", "--smpl-model", str(bad), "--local", "--quiet"]) == 2
    assert "not a loadable SMPL-format file" in capsys.readouterr().err
    assert main(["build", "--out", str(tmp_path / "o"), "--body", "smpl", "--local", "--quiet"]) == 2
    assert "--smpl-model" in capsys.readouterr().err
    assert main(["build", "--out", str(tmp_path / "o"), "--motions", str(tmp_path), "--local", "--quiet"]) == 2
    assert "needs --body smpl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
