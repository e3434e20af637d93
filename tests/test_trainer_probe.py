"""trainer probe (metrics, frozen backbone, the same held-out split, --labels), --loss-patches,
synthetic --framing and tools/compare_runs.py."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trainer import cli
from trainer.config import ProbeConfig, TrainerError
from trainer.data import PairStream, StreamConfig, resolve_shards
from trainer.loss import keypoint_heatmaps, masked_mse
from trainer.masking import loss_patches, masked_from_visible
from trainer.model import build_model
from trainer.probe import (ProbeNet, Runtime, abs_rel, decode_heatmaps, fit, heatmap_loss, load_labelled,
                           mask_iou, pck, run_probe)
from trainer_shards import build_shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import compare_runs  # noqa: E402

torch.set_num_threads(1)  # the dev box is shared: more threads than free cores spin (20x slower)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probe")
    return (build_shards(root / "train", n_shards=2, per_shard=12, seed=0),
            build_shards(root / "val", n_shards=1, per_shard=10, seed=1))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A checkpoint in our format (preset tiny, step 7) with weights unlike 'random' seed 0's."""
    from trainer.checkpoint import croco_kwargs
    from trainer.config import get_preset

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"model": build_model("tiny").state_dict(), "croco_kwargs": croco_kwargs(get_preset("tiny")),
                "preset": "tiny", "step": 7, "config": {"masking": "human", "loss_patches": "human"}}, path)
    return path


def _cfg(shards, **kw) -> ProbeConfig:
    base = dict(ckpt="random", model="tiny", shards=str(shards[0]), val_shards=str(shards[1]), task="keypoints",
                steps=4, batch_size=8, labels=0, device="cpu")
    return ProbeConfig(**(base | kw))


# --------------------------------------------------------------------------- metrics on known inputs


def test_pck_hand_computed():
    gt = np.array([[[10, 10, 2], [50, 50, 1], [90, 90, 0]],
                   [[0, 0, 2], [100, 100, 2], [30, 30, 2]]], np.float32)
    pred = np.array([[[13, 14, 0], [50, 60, 0], [0, 0, 0]],  # 5 px off, 10 px off, invisible (ignored)
                     [[0, 20, 0], [100, 100, 0], [30, 36, 0]]], np.float32)[..., :2]  # 20, 0, 6 px off
    r = pck(pred, gt, size=100)  # thresholds 5 and 10 px
    assert r["joints"] == 5
    assert r["pck@0.05"] == pytest.approx(2 / 5)  # 5 px and 0 px
    assert r["pck@0.1"] == pytest.approx(4 / 5)  # 5, 10, 0 and 6 px
    assert pck(pred, gt, 100, min_visibility=2)["joints"] == 4
    none = pck(pred, np.zeros_like(gt), 100)  # no visible joint: undefined, not 0
    assert none == {"pck@0.05": None, "pck@0.1": None, "joints": 0}


def test_mask_iou_hand_computed_and_empty_masks():
    gt = np.zeros((4, 4, 4), bool)
    pred = np.zeros_like(gt)
    gt[0, :2, :2] = True  # 4 pixels
    pred[0, :2, :3] = True  # 6 pixels, 4 shared -> 4 / 6
    gt[1, 0, 0] = True  # missed entirely -> 0
    pred[2, 3, 3] = True  # nothing to find, something found -> 0
    iou = mask_iou(pred, gt)  # image 3: both empty -> 1
    assert iou.tolist() == pytest.approx([4 / 6, 0.0, 0.0, 1.0])


def test_abs_rel_hand_computed():
    gt = np.array([[[2.0, 4.0], [5.0, 9.0]], [[3.0, 3.0], [6.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]]])
    valid = np.array([[[True, True], [True, False]], [[True, True], [True, True]], [[False] * 2] * 2])
    pred = np.stack([0.5 * gt[0] - 7.0, np.ones((2, 2)), gt[2]])  # exact up to scale/shift; constant; no valid pixel
    r = abs_rel(pred, gt, valid)
    assert r[0] == pytest.approx(0.0, abs=1e-9)
    assert r[1] == pytest.approx(np.mean([1.5 / 3, 1.5 / 3, 1.5 / 6, 1.5 / 6]))  # constant -> the mean, 4.5
    assert math.isnan(r[2])


def test_heatmap_decoding_finds_the_peak():
    logits = torch.full((1, 2, 8, 8), -20.0)
    logits[0, 0, 3, 5] = 10.0  # cell (x 5, y 3): centre (5.5, 3.5) cells = (22, 14) px
    logits[0, 1, 6, 1] = logits[0, 1, 6, 2] = 10.0  # a tie between two cells: the refinement lands between
    xy = decode_heatmaps(logits)
    assert xy[0, 0].tolist() == pytest.approx([22.0, 14.0], abs=1e-3)
    assert xy[0, 1].tolist() == pytest.approx([8.0, 26.0], abs=1e-3)
    # the loss: cross-entropy against the normalised 2D Gaussian (built separably), visible joints only
    kp = torch.tensor([[[22.0, 14.0, 2.0], [8.0, 26.0, 0.0]]])
    sigma = 4.0
    g = keypoint_heatmaps(torch.cat([kp[..., :2] / 4, kp[..., 2:]], -1), 8, sigma / 4).flatten(2)
    want = -(g[0, 0] / g[0, 0].sum() * torch.log_softmax(logits[0, 0].flatten(), 0)).sum()
    assert heatmap_loss(logits, kp, sigma, 1).item() == pytest.approx(want.item(), rel=1e-5)


# --------------------------------------------------------------------------- loss patches


def test_loss_patches_human_counts_only_masked_human_patches(tmp_path):
    visible = np.array([[0, 3], [1, 2]])
    masked = masked_from_visible(visible, 4)  # [[F, T, T, F], [T, F, F, T]]
    human = np.array([[True, True, False, False], [False, False, True, True]])
    assert loss_patches(masked, human, "masked").tolist() == masked.tolist()
    assert loss_patches(masked, human, "human").tolist() == [[False, True, False, False], [False, False, False, True]]
    with pytest.raises(ValueError):
        loss_patches(masked, human, "all")
    # the pixel loss then averages exactly those patches' errors
    pred = torch.zeros(2, 4, 3)
    target = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    per_patch = target.pow(2).mean(-1)
    got = masked_mse(pred, target, torch.from_numpy(loss_patches(masked, human, "human")), norm_pix=False)
    assert got.item() == pytest.approx(((per_patch[0, 1] + per_patch[1, 3]) / 2).item())
    # and the stream hands the loop those patches as "masked" (all masked ones as "hidden")
    src = build_shards(tmp_path / "s", n_shards=1, per_shard=4, no_person_every=4)
    for mode in ("masked", "human"):
        cfg = StreamConfig(batch_size=4, train=False, loss_patches=mode, color_jitter=0.0)
        batch = next(iter(PairStream(resolve_shards(str(src)), cfg)))
        flags = batch["human"] > 0
        want = batch["hidden"] & flags if mode == "human" else batch["hidden"]
        assert torch.equal(batch["masked"], want)
        assert torch.equal(batch["hidden"], torch.from_numpy(masked_from_visible(batch["visible"].numpy(), 196)))
    assert not batch["masked"][3].any() and batch["hidden"][3].any()  # the person-free pair counts no patch


# --------------------------------------------------------------------------- probe mechanics


def test_frozen_backbone_stays_bit_identical_and_finetune_moves_it(shards):
    cfg = _cfg(shards, steps=3)
    train = load_labelled(resolve_shards(cfg.shards), "--shards", cfg, 224, 16, 8, seed=0, exact=True)
    rt = Runtime(torch.device("cpu"), False, False)
    for finetune in (False, True):
        torch.manual_seed(0)
        net = ProbeNet(build_model("tiny"), 17, binocular=False)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        fit(net, ProbeConfig(**{**cfg.__dict__, "finetune": finetune}), train, rt)
        after = net.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert {k.split(".")[0] for k in changed} >= {"head"}
        enc = {k for k in changed if k.startswith(("model.patch_embed", "model.enc_"))}
        assert bool(enc) == finetune  # frozen: not one bit of the encoder moved
        assert not {k for k in changed if k.startswith(("model.dec", "model.mask_token", "model.prediction"))}
        assert all(not p.requires_grad for p in net.model.parameters()) != finetune


def test_same_val_split_for_every_checkpoint_and_exact_labels(shards, tiny_ckpt):
    a = run_probe(_cfg(shards, labels=5, seed=0))
    b = run_probe(_cfg(shards, ckpt=str(tiny_ckpt), labels=5, seed=1, task="silhouette"))
    assert a["val"]["keys"] == b["val"]["keys"] and len(a["val"]["keys"]) == 10
    assert len(a["train"]["keys"]) == len(set(a["train"]["keys"])) == 5 == a["train"]["samples"]
    assert a["backbone_unchanged"] is True and b["backbone_unchanged"] is True
    again = run_probe(_cfg(shards, labels=5, seed=0, steps=1))
    assert again["train"]["keys"] == a["train"]["keys"]  # drawn by the seed alone
    assert b["train"]["keys"] != a["train"]["keys"]
    assert not set(a["train"]["keys"]) - {f"synthetic-00000{s}-{i:06d}" for s in (0, 1) for i in range(12)}
    assert b["checkpoint"]["step"] == 7 and b["checkpoint"]["run"]["loss_patches"] == "human"
    assert 0.0 <= b["metrics"]["iou"] <= 1.0
    with pytest.raises(TrainerError, match="--labels 30: --shards holds only 24"):
        run_probe(_cfg(shards, labels=30))


def test_cli_errors_are_one_line_exit_2(shards, capsys):
    base = ["probe", "--ckpt", "random", "--model", "tiny", "--shards", str(shards[0]),
            "--val-shards", str(shards[1]), "--steps", "1"]
    cases = [(["--task", "pose"], "invalid choice: 'pose'"),
             (["--task", "depth"], "--task depth needs depth maps"),
             (["--val-shards", str(shards[0])], "--val-shards must be held out"),
             (["--ckpt", "/nonexistent.pt"], "checkpoint not found")]
    for extra, msg in cases:
        try:
            code = cli.main(base + extra)
        except SystemExit as exc:  # usage errors exit from argparse
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_end_to_end_on_a_synthetic_build(synthetic_build, tiny_ckpt, tmp_path, capsys):
    out, _ = synthetic_build
    tars = sorted(str(p) for p in out.glob("synthetic-*.tar"))
    train, val = "::".join(tars[:2]), tars[2]
    js = tmp_path / "kp.json"
    code = cli.main(["probe", "--ckpt", str(tiny_ckpt), "--shards", train, "--val-shards", val, "--task", "keypoints",
                     "--labels", "12", "--steps", "3", "--batch-size", "6", "--binocular", "--seed", "4",
                     "--json-out", str(js), "--tensorboard", str(tmp_path / "tb")])
    assert code == 0
    assert "pck@0.05" in capsys.readouterr().out
    r = json.loads(js.read_text())
    ck = r["checkpoint"]
    assert ck["path"] == str(tiny_ckpt.absolute()) and ck["bytes"] == tiny_ckpt.stat().st_size
    assert len(ck["sha256"]) == 64 and ck["step"] == 7 and ck["preset"] == "tiny"
    assert (r["shards"], r["val_shards"], r["task"], r["labels"], r["seed"]) == (train, val, "keypoints", 12, 4)
    assert r["binocular"] is True and r["finetune"] is False and r["train"]["samples"] == 12
    assert r["val"]["samples"] == 8 and r["metrics"]["joints"] > 0 and 0 <= r["metrics"]["pck@0.1"] <= 1
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    d = run_probe(ProbeConfig(ckpt="random", model="tiny", shards=train, val_shards=val, task="depth", steps=2,
                              batch_size=8, device="cpu", finetune=True))
    assert d["metrics"]["images"] == 8 and 0 <= d["metrics"]["abs_rel"] < 1


# --------------------------------------------------------------------------- compare_runs


def _result(name, seed, value, task="silhouette"):
    return {"name": name, "task": task, "labels": 500, "finetune": False, "binocular": False, "seed": seed,
            "checkpoint": {"path": name}, "metrics": {"iou": value}, "val": {"keys": ["a", "b"]}}


def test_compare_runs_flags_differences_within_the_seed_spread(tmp_path, capsys):
    runs = [_result("random", s, v) for s, v in enumerate((0.50, 0.52, 0.54))]
    runs += [_result("pre", s, v) for s, v in enumerate((0.60, 0.61, 0.62))]  # +0.09, spread 0.04: better
    runs += [_result("other", s, v) for s, v in enumerate((0.51, 0.53, 0.56))]  # +0.0133 < 0.05: noise
    for i, r in enumerate(runs):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    assert compare_runs.main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "0.5200 ± 0.0200 [0.5000, 0.5400]" in out
    assert "pre vs random: iou +0.0900 (better; spread 0.0400)" in out
    assert "other vs random: iou +0.0133 (within noise; spread 0.0500)" in out


def test_compare_runs_probes_each_checkpoint_and_seed(shards, tiny_ckpt, tmp_path, capsys):
    argv = ["--ckpt", "random", "--ckpt", f"run={tiny_ckpt}", "--task", "silhouette", "--shards", str(shards[0]),
            "--val-shards", str(shards[1]), "--labels", "6", "--seeds", "0,1", "--out-dir", str(tmp_path),
            "--model", "tiny", "--steps", "2", "--batch-size", "6"]
    assert compare_runs.main(argv) == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "random-silhouette-seed0.json", "random-silhouette-seed1.json",
        "run-silhouette-seed0.json", "run-silhouette-seed1.json"]
    capsys.readouterr()
    assert compare_runs.main(argv) == 0  # resumes: every result reused
    assert capsys.readouterr().out.count("already done") == 4


# --------------------------------------------------------------------------- synthetic framing


def test_tight_framing_fills_more_of_the_crop(synthetic_build, tmp_path):
    from pairgen.build import BuildError, run_build
    from pairgen.config import BuildConfig
    from pairgen.stats import stats
    from pairgen.synthetic.camera import FRAMINGS
    from pairgen.synthetic.generator import SyntheticSettings

    d = SyntheticSettings()  # wide = the defaults, so wide builds keep their bytes
    assert FRAMINGS["wide"] == {"distance_m": d.distance_m, "fill": d.fill}
    wide_dir, wide_cfg = synthetic_build
    assert wide_cfg.framing == "wide"
    identity = BuildConfig().output_identity()
    assert identity.pop("framing") == "wide"  # recorded, but left out of the digest: older builds' shards match
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    assert BuildConfig().identity_digest() == digest != BuildConfig(framing="tight").identity_digest()
    tight_dir = tmp_path / "tight"
    cfg = BuildConfig(source="synthetic", out=str(tight_dir), num_pairs=8, shard_size=8, seed=7, local=True,
                      framing="tight")
    assert run_build(cfg, progress=False)["pairs_built"] == 8
    wide = pd.read_parquet(wide_dir / "manifest")["human_fraction_target"].to_numpy()[:8]
    tight = pd.read_parquet(tight_dir / "manifest")["human_fraction_target"].to_numpy()
    assert np.median(tight) > 1.2 * np.median(wide)
    assert json.loads((tight_dir / "build-synthetic.json").read_text())["framing"] == "tight"
    with pytest.raises(BuildError, match="framing"):  # resuming with the other framing is refused
        run_build(BuildConfig(**{**cfg.__dict__, "framing": "wide"}), progress=False)
    with pytest.raises(ValueError, match="--framing is a setting of --source synthetic"):
        BuildConfig(source="aist", root="/x", framing="tight").validate()
    assert "  synthetic (target)" in stats(str(tight_dir))
