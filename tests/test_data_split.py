"""``--data-split rank``: each epoch's shards split over (rank, data-loader worker), pairs disjoint
across ranks within an epoch, the same batch count on every rank, ``--mix`` respected, exact resume;
two ranks simulated in-process (rank=0/1, world=2), and one real torchrun run on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from trainer import cli
from trainer.config import PretrainConfig, TrainerError
from trainer.data import (STATE_KEYS, PairStream, RankSplit, ShardSet, StreamConfig, make_loader, mix_plan,
                          resolve_shards)
from trainer.loop import train
from trainer_shards import build_shards

torch.set_num_threads(1)  # CPU tests share few cores: one thread spends the least CPU time
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
CFG = dict(batch_size=2, shuffle_buffer=4, img_size=32, patch_size=16, color_jitter=0.0)


def _stream_batches(shards: ShardSet, rank: int, world: int, workers: int, n: int, mix=None, state=None,
                    batch_size: int = 2) -> list[dict]:
    """The first ``n`` batches rank ``rank`` of ``world`` gets, through the real DataLoader."""
    cfg = StreamConfig(**(CFG | {"batch_size": batch_size}))
    split = RankSplit(shards, mix, cfg.batch_size)
    stream = PairStream(shards, cfg, rank, world, mix, state, verbose=False, split=split)
    it = iter(make_loader(stream, workers, pin_memory=False))
    return [next(it) for _ in range(n)]


def _by_epoch(batches: list[dict]) -> dict[int, list[dict]]:
    out = defaultdict(list)
    for b in batches:
        out[b["epoch"]].append(b)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_get_disjoint_pairs_and_equal_batch_counts(tmp_path, workers):
    # 7 shards of 6 pairs (uneven over 2 ranks x 2 workers), every 4th target corrupt: shares run short
    shards = resolve_shards(str(build_shards(tmp_path, n_shards=7, per_shard=6, size=32, corrupt_every=4)))
    per_rank = [_stream_batches(shards, rank, 2, workers, 24) for rank in (0, 1)]
    epochs = [_by_epoch(b) for b in per_rank]
    full = sorted(set(epochs[0]) & set(epochs[1]))[:-1]  # the last epoch seen may be cut short by n
    assert len(full) >= 2
    seen_shards = [set(), set()]
    for e in full:
        counts = [len(epochs[r][e]) for r in (0, 1)]
        assert counts[0] == counts[1] > 0, (e, counts)  # the same batch count on both ranks
        keys = [set(k for b in epochs[r][e] for k in b["key"]) for r in (0, 1)]
        assert not keys[0] & keys[1], e  # disjoint across ranks within an epoch
        per_worker = Counter(b["worker"] for b in epochs[0][e])
        assert len(set(per_worker.values())) == 1 and len(per_worker) == max(1, workers)
        for r in (0, 1):
            seen_shards[r] |= {k.rsplit("-", 1)[0] for k in keys[r]}
    assert seen_shards[0] & seen_shards[1]  # epochs reshuffle: a shard goes to either rank over time
    for b in per_rank[0]:
        assert b["epoch_batches"] >= 1 and set(STATE_KEYS) <= set(b)


def test_mix_weights_hold_with_the_rank_split(tmp_path):
    build_shards(tmp_path, source="aaa", n_shards=2, per_shard=8, size=32)
    build_shards(tmp_path, source="bbb", n_shards=6, per_shard=8, size=32, seed=1)
    shards = resolve_shards(str(tmp_path))
    mix = mix_plan(shards, "aaa=1,bbb=1,cross_view=1,cross_pose=3")
    per_rank = [_stream_batches(shards, rank, 2, 0, 60, mix=mix) for rank in (0, 1)]
    counts = Counter()
    epochs = [_by_epoch(b) for b in per_rank]
    for e in sorted(set(epochs[0]) & set(epochs[1]))[:-1]:
        keys = [{k for b in epochs[r][e] for k in b["key"]} for r in (0, 1)]
        assert not keys[0] & keys[1] and len(epochs[0][e]) == len(epochs[1][e])
        for r in (0, 1):
            for b in epochs[r][e]:
                counts.update(zip(b["source"], b["kind"]))
    total = sum(counts.values())
    share_a = (counts["aaa", "cross_view"] + counts["aaa", "cross_pose"]) / total
    share_pose = (counts["aaa", "cross_pose"] + counts["bbb", "cross_pose"]) / total
    assert total > 150 and abs(share_a - 0.5) < 0.08 and abs(share_pose - 0.75) < 0.08, (share_a, share_pose)


def test_resume_replays_the_same_batches(tmp_path):
    shards = resolve_shards(str(build_shards(tmp_path, n_shards=4, per_shard=6, size=32, corrupt_every=5)))
    straight = _stream_batches(shards, 1, 2, 0, 12)
    for cut in (3, 5, 6):  # mid-epoch and around the end of the first epoch
        state = {0: {k: straight[cut][k] for k in STATE_KEYS}}
        resumed = _stream_batches(shards, 1, 2, 0, 4, state=state)
        for a, b in zip(straight[cut + 1:], resumed):
            assert a["key"] == b["key"] and (a["epoch"], a["epoch_batches"]) == (b["epoch"], b["epoch_batches"])
            assert torch.equal(a["visible"], b["visible"]) and torch.equal(a["target"], b["target"])


def test_rank_split_refuses_what_cannot_work(tmp_path, capsys):
    root = build_shards(tmp_path / "one", n_shards=1, per_shard=8, size=32)
    shards = resolve_shards(str(root))
    with pytest.raises(TrainerError, match="manifests"):
        RankSplit(ShardSet(shards.urls), None, 2)
    with pytest.raises(TrainerError, match="ranks x data-loader workers"):
        RankSplit(shards, None, 2).check(seed=0, slots=2)  # one shard cannot be split over two
    RankSplit(shards, None, 2).check(seed=0, slots=1)
    out = tmp_path / "run"
    rc = cli.main(["pretrain", "--shards", str(root), "--out", str(out), "--model", "tiny", "--workers", "2",
                   "--batch-size", "2", "--data-split", "rank"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--data-split rank" in err and "--workers" in err


def _cfg(shards: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(shards=str(shards), out=str(out), model="tiny", steps=6, batch_size=4, workers=0,
                shuffle_buffer=4, log_every=1, ckpt_every=100, image_every=100, data_split="rank")
    return PretrainConfig(**(base | kw))


def test_training_with_the_rank_split_resumes_exactly(tmp_path):
    shards = build_shards(tmp_path / "shards", n_shards=3, per_shard=6, size=32)  # 4 batches of 4 an epoch
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(shards, straight))
    train(_cfg(shards, resumed, stop_at=5))  # stops in the second epoch
    ck = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert ck["data"]["split"] == "rank" and ck["data"]["ranks"][0][0]["epoch"] == 1
    train(_cfg(shards, resumed))
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (straight, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_torchrun_two_ranks_with_the_rank_split(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU), --data-split rank: both ranks step together to the end."""
    shards = build_shards(tmp_path / "shards", n_shards=3, per_shard=8, size=32)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "trainer.cli", "pretrain", "--shards", str(shards), "--out", str(out), "--model", "tiny",
           "--steps", "6", "--batch-size", "2", "--workers", "0", "--log-every", "3", "--data-split", "rank"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 6 and ck["data"]["split"] == "rank" and len(ck["data"]["ranks"]) == 2
    states = [r[0] for r in ck["data"]["ranks"]]
    assert states[0]["batches"] == states[1]["batches"] == 6
    assert states[0]["epoch"] == states[1]["epoch"] == 1  # slots of 16 and 8 pairs: 4 batches of 2 an epoch
