"""Masking rule, crop alignment, the shard stream (corrupt samples, mixing, determinism), device transforms."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from trainer.config import TrainerError
from trainer.data import (PairStream, StreamConfig, decode_pair, mix_plan, random_crop, resolve_shards,
                          to_model_input)
from trainer.masking import human_centric_visible, masked_from_visible, uniform_visible
from trainer_shards import build_shards

torch.set_num_threads(2)


def test_human_centric_counts_follow_the_paper_rule():
    rng = np.random.default_rng(0)
    n, r = 196, 0.75
    human = np.zeros((4, n), bool)
    for i, n_h in enumerate((40, 80, 13, 1)):
        human[i, rng.permutation(n)[:n_h]] = True
    visible = human_centric_visible(human, r, rng)
    assert visible.shape == (4, 80)  # L = max N_H over the batch
    for i in range(4):
        n_h = int(human[i].sum())
        assert len(set(visible[i])) == 80
        assert human[i, visible[i]].sum() == n_h - math.floor(r * n_h)  # visible human patches
    masked = masked_from_visible(visible, n)
    assert (masked.sum(1) == n - 80).all()
    assert not (masked & np.isin(np.arange(n), visible[0])[None]).any(axis=1)[0]


def test_human_centric_fallbacks():
    rng = np.random.default_rng(1)
    n = 196
    none = np.zeros((3, n), bool)
    assert human_centric_visible(none, 0.75, rng).shape == (3, n - math.floor(0.75 * n))  # uniform, like CroCo
    mixed = np.zeros((2, n), bool)
    mixed[0, :30] = True  # image 1 has no person: L random patches, L = max(30, 49)
    v = human_centric_visible(mixed, 0.75, rng)
    assert v.shape == (2, 49) and mixed[0, v[0]].sum() == 30 - math.floor(0.75 * 30)
    full = np.ones((2, n), bool)  # person everywhere: no background to add, L capped
    full[1, 100:] = False
    v = human_centric_visible(full, 0.75, rng)
    assert v.shape[1] == n - math.floor(0.75 * n) and full[0, v[0]].all()


def test_uniform_masking_counts():
    v = uniform_visible(5, 196, 0.9, np.random.default_rng(0))
    assert v.shape == (5, 196 - 176) and all(len(set(row)) == v.shape[1] for row in v)


def test_crop_keeps_silhouette_aligned():
    rng = np.random.default_rng(0)
    img = np.zeros((256, 256, 3), np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    img[40:120, 150:200] = (200, 10, 10)
    mask[40:120, 150:200] = 255
    for _ in range(20):
        ci, cm, (y0, x0, _) = random_crop(img, mask, 224, rng)
        assert ci.shape == (224, 224, 3) and cm.shape == (224, 224)
        np.testing.assert_array_equal(cm == 255, ci[..., 0] == 200)
        np.testing.assert_array_equal(ci, img[y0:y0 + 224, x0:x0 + 224])


def _first_sample(shard_dir):
    from webdataset.tariterators import tarfile_samples

    return next(iter(tarfile_samples([{"url": resolve_shards(str(shard_dir)).urls[0]}])))


def test_decoded_pair_silhouette_matches_person_and_patches(tmp_path):
    build_shards(tmp_path, n_shards=1, per_shard=2)
    pair = decode_pair(_first_sample(tmp_path), 224, 16, 0.4, np.random.default_rng(3), reference_mask=True)
    # the person is the only striped region: its pixels differ from the smooth background ramp
    tgt, tmask = pair["target"].astype(int), pair["target_mask"]
    rowdiff = np.abs(np.diff(tgt, axis=0)).sum(-1)  # stripes change along y, the ramp barely
    inside, outside = tmask[1:] & tmask[:-1], ~tmask[1:] & ~tmask[:-1]
    assert rowdiff[inside == 255].mean() > 4 * rowdiff[outside == 255].mean()
    human = pair["human"].reshape(14, 14)
    np.testing.assert_allclose(human, tmask.reshape(14, 16, 14, 16).mean(axis=(1, 3)) / 255, atol=1e-6)
    kp = pair["kp"]
    assert kp.shape == (13, 3) and (kp[:, 2] > 0).any()
    inb = kp[kp[:, 2] > 0].astype(int)
    assert (pair["reference_mask"][inb[:, 1], inb[:, 0]] == 255).mean() > 0.8  # keypoints land on the person


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_stream_skips_and_counts_corrupt_samples(tmp_path):
    build_shards(tmp_path, n_shards=1, per_shard=12, corrupt_every=4)
    cfg = StreamConfig(batch_size=3, train=False)
    batches = list(PairStream(resolve_shards(str(tmp_path)), cfg, verbose=False))
    assert sum(len(b["key"]) for b in batches) == 9  # the last batch only reports the trailing corrupt pair
    assert sum(b["corrupt"] for b in batches) == 3


def test_stream_is_deterministic_and_resumable(tmp_path):
    shards = resolve_shards(str(build_shards(tmp_path, n_shards=2, per_shard=8)))
    cfg = StreamConfig(batch_size=4, shuffle_buffer=5)
    a = _take(PairStream(shards, cfg, verbose=False), 5)
    b = _take(PairStream(shards, cfg, verbose=False), 5)
    state = {0: {"raw": a[2]["raw"], "batches": a[2]["batches"]}}
    c = _take(PairStream(shards, cfg, state=state, verbose=False), 2)
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and torch.equal(x["target"], y["target"]) and torch.equal(x["visible"], y["visible"])
    for x, y in zip(a[3:], c):
        assert x["key"] == y["key"] and torch.equal(x["jitter"], y["jitter"]) and torch.equal(x["visible"], y["visible"])
    other = _take(PairStream(shards, cfg, rank=1, world=2, verbose=False), 1)[0]
    assert other["key"] != a[0]["key"]


def test_mix_weights_set_source_and_kind_shares(tmp_path):
    build_shards(tmp_path, source="aaa", n_shards=1, per_shard=8)
    build_shards(tmp_path, source="bbb", n_shards=3, per_shard=8, seed=1)
    shards = resolve_shards(str(tmp_path))
    plan = mix_plan(shards, "aaa=1,bbb=1,cross_view=1,cross_pose=3")
    cfg = StreamConfig(batch_size=16, shuffle_buffer=1, img_size=64, patch_size=16, color_jitter=0)
    counts = Counter()
    for b in _take(PairStream(shards, cfg, mix=plan, verbose=False), 25):
        counts.update(zip(b["source"], b["kind"]))
    total = sum(counts.values())
    share_a = (counts["aaa", "cross_view"] + counts["aaa", "cross_pose"]) / total
    share_pose = (counts["aaa", "cross_pose"] + counts["bbb", "cross_pose"]) / total
    assert abs(share_a - 0.5) < 0.08 and abs(share_pose - 0.75) < 0.08
    only_b = mix_plan(shards, "bbb=1")
    assert only_b.shard_weights[0] == 0 and min(only_b.shard_weights[1:]) > 0
    with pytest.raises(TrainerError, match="absent"):
        mix_plan(shards, "ccc=1")


def test_resolve_shards_forms(tmp_path):
    build_shards(tmp_path, n_shards=3, per_shard=2)
    (tmp_path / "stats" / "synthetic-000002.json").unlink()  # unfinished shard: not used
    assert len(resolve_shards(str(tmp_path)).urls) == 2
    brace = resolve_shards(str(tmp_path / "synthetic-{000000..000002}.tar"))
    assert len(brace.urls) == 3 and brace.num_pairs == 6
    piped = resolve_shards(f"pipe:cat {tmp_path}/synthetic-000000.tar")
    assert piped.manifest is None
    b = _take(PairStream(piped, StreamConfig(batch_size=2, train=False), verbose=False), 1)[0]
    assert len(b["key"]) == 2
    with pytest.raises(TrainerError, match="no finished shards"):
        resolve_shards(str(tmp_path / "stats"))


def test_to_model_input_normalises_and_jitters():
    u8 = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    x = to_model_input(u8, torch.ones(2, 3))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x, ((u8.float() / 255 - mean) / std).permute(0, 3, 1, 2))
    darker = to_model_input(u8, torch.tensor([[0.5, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    assert darker[0].mean() < x[0].mean() and torch.allclose(darker[1], x[1])


def test_keypoint_targets_prefer_the_raw_penn_joints():
    """Penn Action samples carry their 13 joints; others fall back to COCO-17 -> Penn order."""
    import numpy as np

    from trainer.data import _keypoints

    coco = [[float(i), float(i), 1.0] for i in range(17)]
    raw13 = [[100.0 + i, 50.0, 1.0] for i in range(13)]
    k = _keypoints({"keypoints_reference": coco, "pennaction13_reference": raw13}, 0, 0, 1.0, 224)
    assert np.allclose(k[:, 0], 100 + np.arange(13))
    k = _keypoints({"keypoints_reference": coco}, 10, 0, 1.0, 224)
    assert k[1, 0] == 5 and k[1, 1] == 5 - 10 and k[1, 2] == 0  # left shoulder, shifted out of the crop
