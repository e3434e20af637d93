"""TensorBoard after a resume: every logged step appears exactly once, as TensorBoard reads the run.

TensorBoard reads all event files of ``tb/`` in order and applies the ``SessionLog.START`` purge
that a resumed writer records (events of steps >= its purge step, from earlier files, are hidden):
EventAccumulator does exactly that, so it is what the test reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.config import PretrainConfig
from trainer.loop import train
from trainer_shards import build_shards

torch.set_num_threads(1)  # CPU tests share few cores: one thread spends the least CPU time


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("shards"), n_shards=1, per_shard=16, size=64)


def _cfg(shards: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(shards=str(shards), out=str(out), model="tiny", steps=10, batch_size=2, workers=0,
                shuffle_buffer=4, log_every=2, ckpt_every=100, image_every=100, color_jitter=0.0)
    return PretrainConfig(**(base | kw))


def _tb(out: Path) -> EventAccumulator:
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in (acc.Images(tag) if tag == "reconstruction" else acc.Scalars(tag))]


def _metric_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_logs_every_step_once(shards, tmp_path):
    out = tmp_path / "run"
    train(_cfg(shards, out, stop_at=4))
    train(_cfg(shards, out))
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 2  # one file per run
    acc = _tb(out)
    assert _metric_steps(out) == [2, 4, 6, 8, 10]
    for tag in ("train/loss", "train/lr", "train/grad_norm"):
        assert _steps(acc, tag) == [2, 4, 6, 8, 10], tag  # the checkpoint step (4) is kept, once
    assert _steps(acc, "reconstruction") == [1, 4, 10]  # first step, the stop_at step, the last step
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(losses)


def test_tail_logged_after_the_checkpoint_is_replaced_once(shards, tmp_path):
    """A run killed after logging past its checkpoint: the resumed run logs those steps again and
    TensorBoard shows each once, with the resumed run's values (as metrics.jsonl keeps them)."""
    out = tmp_path / "run"
    train(_cfg(shards, out, stop_at=4))
    kept = tmp_path / "checkpoint-step4.pt"
    shutil.copy(out / "checkpoint.pt", kept)
    train(_cfg(shards, out, stop_at=8, seed=1))  # logs 6, 8 (other batches: other losses), then "dies"...
    shutil.copy(kept, out / "checkpoint.pt")  # ... before its checkpoint: the run resumes at step 4
    train(_cfg(shards, out))
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 3
    acc = _tb(out)
    assert _metric_steps(out) == [2, 4, 6, 8, 10]
    assert _steps(acc, "train/loss") == [2, 4, 6, 8, 10]
    assert _steps(acc, "reconstruction") == [1, 4, 10]  # the dead run's step-8 image is gone
    straight = tmp_path / "straight"
    train(_cfg(shards, straight))
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(
        [e.value for e in _tb(straight).Scalars("train/loss")])  # not the killed run's values
