"""Faults a user can cause, end to end: undecodable or empty shards, bad --init files, usage
errors, signals, a run directory that stops accepting writes, partial or damaged checkpoints.

CLI-level behaviour (exit status, one-line errors) runs the ``trainer`` console script in a
subprocess, on tiny shards written here; every run has a timeout, so a hang fails the test.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import PretrainConfig, TrainerError
from trainer.data import PairStream, StreamConfig, make_loader, read_shard, resolve_shards
from trainer.loop import train
from trainer_shards import build_shards

torch.set_num_threads(2)
TRAINER = str(Path(sys.executable).with_name("trainer"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--model", "tiny", "--batch-size", "2", "--shuffle-buffer", "8", "--image-every", "1000"]


def run_trainer(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([TRAINER, *args], capture_output=True, text=True, env=ENV, timeout=timeout, **kw)


def one_line_error(proc: subprocess.CompletedProcess, status: int = 2) -> str:
    """The single stderr line of a failed run (warnings before it are allowed, tracebacks are not)."""
    assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("good"), n_shards=1, per_shard=16)


def _cfg(shards: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(shards=str(shards), out=str(out), model="tiny", steps=6, batch_size=2, workers=0,
                shuffle_buffer=8, log_every=1, ckpt_every=100, image_every=1000)
    return PretrainConfig(**(base | kw))


# --------------------------------------------------------------------------- (5) no sample decodes


def test_all_samples_undecodable_stops_with_one_line_error(tmp_path):
    """Every target JPEG is garbage: was an endless loop; now exit 2 naming the shard and the reason."""
    bad = build_shards(tmp_path / "bad", n_shards=1, per_shard=8, corrupt_every=1)
    err = one_line_error(run_trainer("pretrain", "--shards", str(bad), "--out", str(tmp_path / "r"),
                                     "--workers", "0", "--steps", "3", *TINY, timeout=90))
    assert err.startswith("trainer: error: no usable pair in --shards")
    assert "synthetic-000000.tar" in err and "corrupt target.jpg" in err and "(x8)" in err


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_stops_after_skip_limit_in_a_row(tmp_path, workers):
    """The first pair decodes (the start-up check passes), the other 39 do not: the training stream
    of each data-loader worker gives up after --skip-limit failures in a row; the run exits 2."""
    bad = build_shards(tmp_path / "bad", n_shards=1, per_shard=40, corrupt_from=1)
    err = one_line_error(run_trainer("pretrain", "--shards", str(bad), "--out", str(tmp_path / "r"),
                                     "--workers", str(workers), "--steps", "50", "--skip-limit", "20", *TINY,
                                     timeout=120))
    where = "the data loader" if workers == 0 else "data-loader worker"
    assert f"trainer: error: {where}" in err and "20 samples in a row were unusable (--skip-limit 20)" in err
    assert "synthetic-000000.tar" in err and "corrupt target.jpg" in err


def test_stream_default_skip_limit_in_process_and_in_workers(tmp_path):
    """Without the start-up check, the stream itself stops at SKIP_LIMIT (main process and workers)."""
    from trainer.config import SKIP_LIMIT
    from trainer.data import check_batch

    shards = resolve_shards(str(build_shards(tmp_path, n_shards=1, per_shard=8, corrupt_every=1)))
    cfg = StreamConfig(batch_size=2, shuffle_buffer=4, img_size=64, patch_size=16)
    with pytest.raises(TrainerError, match=rf"the data loader: {SKIP_LIMIT} samples in a row were unusable"):
        next(iter(PairStream(shards, cfg, verbose=False)))
    loader = make_loader(PairStream(shards, cfg, verbose=False), workers=2, pin_memory=False)
    with pytest.raises(TrainerError, match=rf"data-loader worker \d of 2: {SKIP_LIMIT} samples in a row") as info:
        check_batch(next(iter(loader)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["empty", "no_silhouettes", "not_a_tar", "failing_pipe"])
def test_no_usable_sample_for_other_reasons(tmp_path, case):
    """Empty shards, samples all lacking a member, files that are not tars, a pipe: URL that fails."""
    if case == "empty":
        spec = str(build_shards(tmp_path / "s", n_shards=2, per_shard=0))
        expect = "2 empty or unreadable shards unusable): shards"
    elif case == "no_silhouettes":
        spec = str(build_shards(tmp_path / "s", n_shards=1, per_shard=3, silhouettes=False))
        expect = "lacks target.mask.png, reference.mask.png (x3) (the trainer needs pairgen samples with silhouettes)"
    elif case == "not_a_tar":
        spec = str(tmp_path / "junk-000000.tar")
        Path(spec).write_bytes(np.random.default_rng(0).bytes(4096))
        expect = "unreadable shard: "
    else:
        spec = "pipe:cat " + str(tmp_path / "vanished-000000.tar")
        expect = "unreadable shard: "
    err = one_line_error(run_trainer("pretrain", "--shards", spec, "--out", str(tmp_path / "r"),
                                     "--workers", "0", "--steps", "2", *TINY, timeout=90))
    assert err.startswith("trainer: error: no usable pair in --shards") and expect in err


def test_shards_vanishing_mid_run_are_skipped_then_reported(tmp_path):
    """A shard deleted while training is skipped (warned once); when all are gone the stream stops."""
    build_shards(tmp_path, n_shards=2, per_shard=8)
    shards = resolve_shards(str(tmp_path))
    it = iter(PairStream(shards, StreamConfig(batch_size=2, shuffle_buffer=2, img_size=64, skip_limit=50),
                         verbose=False))
    next(it)
    Path(shards.urls[0]).unlink()
    keys = [k for _ in range(30) for k in next(it)["key"]]  # goes on with the other shard
    assert sum(k.startswith("synthetic-000001") for k in keys) >= 50  # shard 0: what was open or buffered
    Path(shards.urls[1]).unlink()
    with pytest.raises(TrainerError, match="empty or unreadable shards in a row.*No such file"):
        for _ in range(100):
            next(it)


def test_failing_pipe_is_reported_to_the_handler_not_raised(tmp_path, good):
    """A pipe: command's exit status (webdataset raises it on close) reaches the handler."""
    errors = []
    assert list(read_shard("pipe:false", handler=lambda e: errors.append(e) or True)) == []
    assert len(errors) == 1 and "exit 1" in str(errors[0])
    tar = resolve_shards(str(good)).urls[0]
    assert len(list(read_shard(f"pipe:cat {tar}", handler=errors.append))) == 16 and len(errors) == 1


# --------------------------------------------------------------------------- (11b) a missing member anywhere


def test_first_sample_without_silhouette_is_skipped_like_any_other(tmp_path):
    """Pair 0 lacks its target silhouette, pair 3 its reference one: both skipped and counted; the run trains."""
    shards = build_shards(tmp_path / "s", n_shards=1, per_shard=8,
                          drop={0: ("target.mask.png",), 3: ("reference.mask.png",)})
    out = tmp_path / "r"
    proc = run_trainer("pretrain", "--shards", str(shards), "--out", str(out), "--workers", "0", "--steps", "3",
                       "--log-every", "1", "--model", "tiny", "--batch-size", "2", "--shuffle-buffer", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["corrupt_skipped"] for r in records] == [1, 1, 0]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3


# --------------------------------------------------------------------------- (11a) --init files


def _init_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its error must contain)."""
    from safetensors.torch import save_file

    from trainer.model import build_model

    files = {}
    p = tmp / "notes.txt"
    p.write_text("not a checkpoint\n")
    files["text"] = (p, "is a text file, not a torch checkpoint")
    p = tmp / "random.bin"
    p.write_bytes(b"\x13" + np.random.default_rng(1).bytes(4095))
    files["random_bytes"] = (p, "is not a torch checkpoint (neither a zip archive nor a pickle)")
    p = tmp / "list.pth"
    torch.save([torch.zeros(2)], p)
    files["torch_list"] = (p, "has no model weights: expected a dict with a 'model' state dict, found a list")
    p = tmp / "other_dict.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, p)
    files["torch_other_dict"] = (p, "found a dict with keys state_dict")
    p = tmp / "not_croco.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, p)
    files["not_croco"] = (p, "not a CroCo state dict")
    sd = build_model("tiny").state_dict()
    p = tmp / "tiny.pth"  # loaded with --model vitb-dec512x8 below
    torch.save({"model": sd}, p)
    files["other_preset"] = (p, "holds a preset tiny (enc 64x2, dec 32x2, RoPE100), not --model vitb-dec512x8")
    p = tmp / "truncated.pth"
    torch.save({"model": sd}, p)
    p.write_bytes(p.read_bytes()[:5000])
    files["truncated"] = (p, "(corrupt or truncated?)")
    sd["enc_blocks.0.mlp.fc1.weight"] = torch.zeros(7, 64)
    p = tmp / "shape.pth"
    torch.save({"model": sd}, p)
    files["shape_mismatch"] = (p, "does not load strictly into tiny: Error(s) in loading state_dict for CroCoMan: "
                                  "size mismatch for enc_blocks.0.mlp.fc1.weight")
    p = tmp / "encoder.safetensors"
    save_file({"w": torch.zeros(2)}, p)
    files["safetensors"] = (p, "is a safetensors file")
    return files


def test_init_with_a_file_that_is_not_a_usable_checkpoint(tmp_path, good):
    files = _init_files(tmp_path)
    for name, (path, phrase) in files.items():
        model = ["--model", "vitb-dec512x8"] if name == "other_preset" else []
        proc = run_trainer("pretrain", "--shards", str(good), "--out", str(tmp_path / name), "--init", str(path),
                           "--workers", "0", "--steps", "1", *TINY, *model)
        err = one_line_error(proc)
        assert str(path) in err and phrase in err, (name, err)
        assert not (tmp_path / name).exists()  # refused before the run directory is made


# --------------------------------------------------------------------------- (11c) usage errors


@pytest.mark.parametrize("argv, line", [
    (["pretrain", "--steps", "x", "--shards", "a", "--out", "b"],
     "trainer pretrain: error: argument --steps: invalid int value: 'x' (see trainer pretrain --help)"),
    (["pretrain", "--shards", "a"],
     "trainer pretrain: error: the following arguments are required: --out (see trainer pretrain --help)"),
    (["eval", "--ckpt", "c", "--shards", "s", "--bogus"],
     "trainer eval: error: unrecognized arguments: --bogus (see trainer eval --help)"),
    ([], "trainer: error: the following arguments are required: command (see trainer --help)"),
])
def test_usage_errors_are_one_line_with_a_hint(argv, line):
    proc = run_trainer(*argv, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr == line + "\n", proc.stderr


# --------------------------------------------------------------------------- signals, concurrent runs


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float) -> list[str]:
    """stdout lines up to the first starting with ``prefix`` (the process is killed after ``timeout``)."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(prefix):
                break
    finally:
        watchdog.cancel()
    return seen


def _live_in_group(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run (zombies waiting for init do not count)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def test_sigterm_to_the_process_group_saves_a_checkpoint_and_resumes(tmp_path, good):
    """SIGTERM (as a scheduler sends it, to every process of the job, data-loader workers included)
    ends the step, writes a checkpoint, exits 143; a second trainer on the same --out is refused
    meanwhile; re-running resumes."""
    out = tmp_path / "r"
    args = ["pretrain", "--shards", str(good), "--out", str(out), "--workers", "2", "--steps", "10000",
            "--log-every", "1", "--ckpt-every", "10000", *TINY]
    proc = subprocess.Popen([TRAINER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    try:
        seen = _wait_for_line(proc, "step 3/", 120)
        assert seen and seen[-1].startswith("step 3/"), seen
        second = one_line_error(run_trainer(*args, timeout=60))
        assert f"another trainer is running in {out} (pid {proc.pid}" in second
        os.killpg(proc.pid, signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 3 and f"stopped by SIGTERM at step {step}; checkpoint {out / 'checkpoint.pt'} written" in rest
    deadline = time.monotonic() + 15  # no data-loader worker or fork server left behind
    while _live_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _live_in_group(proc.pid)
    assert not list(out.glob(".*.partial"))
    again = run_trainer(*[a if a != "10000" else str(step + 2) for a in args])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {out} at step {step}" in again.stdout
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step + 2


def test_sigkill_leaves_no_data_loader_processes_behind(tmp_path, good):
    """Killed outright (SIGKILL, the OOM killer), the trainer cannot clean up: its data-loader
    workers and their fork server must notice and end (they used to wait for each other forever)."""
    out = tmp_path / "r"
    proc = subprocess.Popen([TRAINER, "pretrain", "--shards", str(good), "--out", str(out), "--workers", "2",
                             "--steps", "10000", "--log-every", "1", *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV,
                            start_new_session=True)
    try:
        seen = _wait_for_line(proc, "step 2/", 120)
        assert seen and seen[-1].startswith("step 2/"), seen
        assert len(_live_in_group(proc.pid)) >= 4  # trainer, fork server, 2 workers (+ resource tracker)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while _live_in_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _live_in_group(proc.pid)
    finally:
        for pid in _live_in_group(proc.pid):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- checkpoints and the run directory


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # like a full disk, also for root


def test_checkpoint_write_failure_keeps_the_previous_checkpoint(tmp_path, good):
    """A checkpoint that cannot be written (files over 1 MiB fail, as on a full disk): one line, exit 2,
    the previous checkpoint intact, no partial file left; a later run resumes from it."""
    out = tmp_path / "r"
    args = ["pretrain", "--shards", str(good), "--out", str(out), "--workers", "0", "--steps", "6",
            "--ckpt-every", "2", *TINY]
    assert run_trainer(*args, "--stop-at", "2").returncode == 0
    err = one_line_error(run_trainer(*args, preexec_fn=_limit_file_size))
    assert f"cannot write {out / 'checkpoint.pt'}: [Errno 27] File too large; stopped at step 4" in err
    assert f"the last checkpoint ({out / 'checkpoint.pt'}, step 2) is kept" in err
    assert not list(out.glob(".*.partial"))
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    proc = run_trainer(*args)
    assert proc.returncode == 0 and f"resuming {out} at step 2" in proc.stdout, proc.stderr[-3000:]


def test_partial_and_damaged_checkpoints_on_resume(tmp_path, good):
    """A save killed midway leaves ``.checkpoint.pt.<pid>.partial`` (and maybe a cut metrics line):
    the next run removes it, says so and resumes from the previous checkpoint. A damaged
    checkpoint.pt itself is refused with one line (not silently restarted over)."""
    out = tmp_path / "r"
    args = ["pretrain", "--shards", str(good), "--out", str(out), "--workers", "0", "--steps", "6",
            "--log-every", "1", *TINY]
    assert run_trainer(*args, "--stop-at", "2").returncode == 0
    ckpt = out / "checkpoint.pt"
    partial = out / ".checkpoint.pt.4242.partial"
    partial.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    proc = run_trainer(*args, "--stop-at", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"removed {partial.name}, a partial checkpoint left by an interrupted save; resuming from checkpoint.pt" \
        in proc.stdout and f"resuming {out} at step 2" in proc.stdout
    assert not partial.exists()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    (out / "checkpoint.pt.bak").write_bytes(ckpt.read_bytes())
    ckpt.write_bytes(ckpt.read_bytes()[:100_000])
    err = one_line_error(run_trainer(*args))
    assert err.startswith(f"trainer: error: cannot resume: cannot read checkpoint {ckpt} (corrupt or truncated?)")
    assert "move it away to start the run over" in err
    torch.save({"model": torch.load(out / "checkpoint.pt.bak", weights_only=True)["model"]}, ckpt)  # weights only
    err = one_line_error(run_trainer(*args))
    assert f"cannot resume: {ckpt} is not the checkpoint of a trainer run (no preset, step, optimizer" in err
    assert "pass it as --init" in err


def test_run_directory_write_failure_stops_after_a_last_checkpoint(tmp_path, good):
    """Reconstruction PNGs cannot be written (``images`` is a file): the run stops with one line at
    step 1, after writing a checkpoint there, instead of a traceback that loses the step."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "images").write_text("in the way")
    expect = (f"cannot write {re.escape(str(out / 'images'))}: .*; stopped at step 1, after writing "
              f"{re.escape(str(out / 'checkpoint.pt'))}")
    with pytest.raises(TrainerError, match=expect) as info:
        train(_cfg(good, out))
    assert "\n" not in str(info.value)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1
