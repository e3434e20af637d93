"""Training loop end to end on CPU: acceptance run, exact resume, NaN stop, CLI errors, eval, export, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import cli
from trainer.config import PretrainConfig, TrainerError
from trainer.loop import train
from trainer_shards import build_shards

torch.set_num_threads(2)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=32)


def _cfg(shards: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(shards=str(shards), out=str(out), model="tiny", steps=6, batch_size=4, workers=0,
                shuffle_buffer=8, log_every=2, ckpt_every=100, image_every=100)
    return PretrainConfig(**(base | kw))


def _params(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def test_acceptance_cli_run_learns_and_writes_run_dir(shards, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.cli", "pretrain", "--shards", str(shards), "--out", str(out),
           "--model", "tiny", "--steps", "60", "--batch-size", "8", "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert records[-1]["loss"] < 0.9 * records[0]["loss"]  # mean of the last 10 steps vs the first 10
    assert json.loads((out / "config.json").read_text())["config"]["model"] == "tiny"
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert len(list((out / "images").glob("*.png"))) >= 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 60
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert again.returncode == 0 and "already finished" in again.stdout


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_equals_straight_run(shards, tmp_path, workers):
    straight = tmp_path / "straight"
    train(_cfg(shards, straight, workers=workers, kp_loss_weight=0.5))
    resumed = tmp_path / "resumed"
    train(_cfg(shards, resumed, workers=workers, kp_loss_weight=0.5, stop_at=3))
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["step"] == 3
    train(_cfg(shards, resumed, workers=workers, kp_loss_weight=0.5))
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x)["loss"] for x in (straight / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert la[-1] == lb[-1]  # the loss of steps 5-6, logged by both runs


def test_nan_loss_stops_and_keeps_last_good_checkpoint(shards, tmp_path, monkeypatch):
    import trainer.objective as objective

    real, calls = objective.masked_mse, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(objective, "masked_mse", flaky)
    out = tmp_path / "nan"
    with pytest.raises(TrainerError, match="NaN/Inf"):
        train(_cfg(shards, out, ckpt_every=2, log_every=100, steps=10))
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())


def _cli_error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trainer: error:") and "\n" not in err
    return err


def test_cli_errors_are_one_line(shards, tmp_path, capsys):
    out = str(tmp_path / "r")
    base = ["pretrain", "--out", out, "--model", "tiny", "--workers", "0"]
    assert "no finished shards" in _cli_error(base + ["--shards", str(tmp_path)], capsys)
    assert "not found" in _cli_error(base + ["--shards", str(tmp_path / "x-000000.tar")], capsys)
    bare = build_shards(tmp_path / "bare", n_shards=1, per_shard=2, silhouettes=False)
    assert "silhouettes" in _cli_error(base + ["--shards", str(bare)], capsys)
    assert "batch-size" in _cli_error(base + ["--shards", str(shards), "--batch-size", "0"], capsys)
    assert "unknown model preset" in _cli_error(
        ["pretrain", "--shards", str(shards), "--out", out, "--model", "vit-huge"], capsys)
    wrong = tmp_path / "wrong.pth"
    from trainer.model import build_model

    torch.save({"model": build_model("tiny").state_dict()}, wrong)
    err = _cli_error(["pretrain", "--shards", str(shards), "--out", out, "--init", str(wrong),
                      "--model", "vitb-dec512x8"], capsys)
    assert "preset tiny" in err and "not --model vitb-dec512x8" in err


def test_eval_and_export(shards, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(shards, run, steps=4))
    capsys.readouterr()
    assert cli.main(["eval", "--ckpt", str(run / "checkpoint.pt"), "--shards", str(shards), "--workers", "0",
                     "--json-out", str(tmp_path / "eval.json")]) == 0
    printed = capsys.readouterr().out
    assert "cross_view" in printed and "cross_pose" in printed and "loss_no_ref" in printed
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["cross_view"]["pairs"] + res["cross_pose"]["pairs"] == 64
    assert res["all"]["gain"] == pytest.approx(res["all"]["loss_no_ref"] / res["all"]["loss_ref"])
    assert cli.main(["export", "--ckpt", str(run / "checkpoint.pt"), "--out", str(tmp_path / "exp")]) == 0
    from safetensors.torch import load_file

    enc = load_file(tmp_path / "exp" / "encoder.safetensors")
    full = _params(run)
    assert set(enc) == {k for k in full if k.startswith(("patch_embed.", "enc_blocks.", "enc_norm."))}
    assert all(torch.equal(enc[k], full[k]) for k in enc)


def test_sincos_export_matches_timm_vit_base():
    from trainer.compat_timm import import_timm
    from trainer.export import TIMM_KWARGS, timm_vit_state_dict
    from trainer.model import build_model

    torch.manual_seed(0)
    ours = build_model("vitb-dec512x8-sincos", dec_depth=1).eval()
    timm = import_timm()
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, **TIMM_KWARGS).eval()
    vit.load_state_dict(timm_vit_state_dict(ours), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens, _ = ours.encode(x)
        torch.testing.assert_close(vit.forward_features(x), tokens, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vit(x), tokens.mean(dim=1), atol=1e-4, rtol=1e-4)


def test_torchrun_ddp_two_processes(shards, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU): 10 DDP steps; both ranks end with the same weights."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "trainer.cli", "pretrain", "--shards", str(shards), "--out", str(out), "--model", "tiny",
           "--steps", "10", "--batch-size", "4", "--workers", "0", "--log-every", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 10 and ck["data"]["world"] == 2 and len(ck["data"]["ranks"]) == 2
    assert json.loads((out / "config.json").read_text())["global_batch"] == 8
    assert proc.stdout.count("step 10/10") == 1  # rank 0 logs only
