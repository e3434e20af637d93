#!/usr/bin/env python
"""Benchmark pairgen: pairs/s per core against the physical limit measured in the same run.

    python tools/bench_pairgen.py --source synthetic [--num-pairs 600] [--workers N]
    python tools/bench_pairgen.py --source interhand|aist|humbi   (on a generated fixture)

synthetic: one process pinned to one core builds a synthetic worker once (as a Ray worker does),
then alternates 2 x ROUNDS times between the raw render loop of the same renderer on already-posed,
already-textured bodies (nothing else: no posing, texturing, compositing, encoding or writing) and
building + writing a shard of --num-pairs pairs with the same worker; the ratio is the median of
the rounds' ratios (this machine's speed drifts by up to 2x within a minute, so a ratio pairs two
adjacent measurements). Each pair needs two renders, so the pair limit is renders/s / 2. The raw
loop runs in the worker's process on purpose: a fresh process renders ~30% slower (glibc still
serves its large arrays with mmap and page faults), which would flatter the pipeline. Then a whole `pairgen build` (Ray, N workers)
gives the wall-clock rate (Ray start and model builds included), the shard-work rate with Ray's
daemons sharing the cores, and the peak RSS per worker.

Real sources (generated fixtures in the real layouts): one in-process worker builds the fixture's
shard (``--local``: the code a Ray worker runs, without Ray's start-up daemons sharing the cores
during a one-second shard), alternating ``ROUNDS`` times with the raw limit; best of each is
reported. aist: frames decoded per second of shard work vs raw PyAV decoding to RGB of the same
videos (one at a time, thread_type AUTO), and vs the same decoding with the pipeline's decoder
settings (two videos at once, slice threads). JPEG sources: pairs/s vs raw JPEG decoding of both
source frames of every pair + a 256x256 JPEG encode each, both with the process pinned to one
core (the worker's decoding thread shares it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _synthetic_process(num_pairs: int, rounds: int, seconds: float, image_size: int, results) -> None:
    """Pinned to one core: build a synthetic worker once (as a Ray worker does), then alternate
    ``rounds`` times between the raw render loop and a shard of ``num_pairs`` built and written by
    the same worker (the code a Ray worker runs per shard)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from pairgen.build import build_shard
    from pairgen.config import BuildConfig
    from pairgen.sources.base import ShardTask
    from pairgen.sources.synthetic import SyntheticWorker
    from pairgen.synthetic import appearance, camera as cam
    from pairgen.synthetic.motions import sample_clip
    from pairgen.writer import warm_up

    out = tempfile.mkdtemp(prefix="bench_synthetic_")
    try:
        cfg = BuildConfig(source="synthetic", out=out, num_pairs=num_pairs * rounds, seed=0, image_size=image_size,
                          shard_size=num_pairs, local=True)
        warm_up()
        worker = SyntheticWorker(cfg)
        gen, body = worker.generator, worker.generator.body
        # raw render inputs: posed, textured, framed bodies, prepared outside the timed loop
        rng = np.random.default_rng(0)
        n = 16
        clips = [sample_clip(rng) for _ in range(n)]
        posed = body.forward(rng.random((n, 6)), np.concatenate([c.angles([1.0]) for c in clips]),
                             rng.uniform(0, 6.28, n))
        views, textures = [], []
        for i in range(n):
            V = posed.vertices[i]
            R, t = cam.look_at(cam.camera_center(V.mean(0), rng.uniform(0, 6.28), 0.2, 4.0), V.mean(0))
            views.append((*body.surface(V), cam.fit_camera(R, t, V, image_size, 0.8)))
            textures.append(appearance.random_outfit_texture(rng, gen.regions)[0])
        ambient, lights = appearance.random_lighting(rng)
        render = gen.renderer.render
        for i in range(n):
            render([views[i]], textures[i], ambient, lights)
        raw, pipe = [], []
        for k in range(rounds):
            count, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                i = count % n
                render([views[i]], textures[i], ambient, lights)  # one upload + one draw + readback
                count += 1
            raw.append(count / (time.perf_counter() - t0))
            task = ShardTask("synthetic", k, num_pairs, {"start": k * num_pairs, "stop": (k + 1) * num_pairs})
            t0 = time.perf_counter()
            stats = build_shard(worker, task, cfg)
            pipe.append(stats["count"] / (time.perf_counter() - t0))
        results.put({"renders_per_s": raw, "pairs_per_s": pipe})
    finally:
        shutil.rmtree(out, ignore_errors=True)


def synthetic_one_core(num_pairs: int, rounds: int, image_size: int, seconds: float = 5.0) -> dict:
    """Run :func:`_synthetic_process` in a fresh process; best round of each figure."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    pr = ctx.Process(target=_synthetic_process, args=(num_pairs, rounds, seconds, image_size, results))
    pr.start()
    r = results.get(timeout=1800)
    pr.join()
    return r


def pipeline_rate(num_pairs: int, workers: int, shard_size: int, image_size: int) -> dict:
    from manifests import layout
    from pairgen.build import run_build
    from pairgen.config import BuildConfig

    out = tempfile.mkdtemp(prefix="bench_pairgen_")
    try:
        cfg = BuildConfig(source="synthetic", out=os.path.join(out, "s"), num_pairs=num_pairs, seed=0,
                          workers=workers, shard_size=shard_size, image_size=image_size)
        t0 = time.perf_counter()
        summary = run_build(cfg, progress=False)
        wall = time.perf_counter() - t0
        stats = [json.loads(layout.stats_path(cfg.out, n).read_text()) for n in layout.finished_shards(cfg.out)]
        busy = sum(s["build_s"] + s.get("write_s", 0) for s in stats)
        nbytes = sum(s["tar_bytes"] for s in stats)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"pairs": summary["pairs_built"], "wall_s": wall, "worker_busy_s": busy,
            "steady_pairs_per_s_per_core": summary["pairs_built"] / busy,
            "wall_pairs_per_s_per_core": summary["pairs_built"] / wall / workers,
            "peak_rss_mb_per_worker": summary.get("worker_peak_rss_mb"), "mb_per_1k_pairs": nbytes / summary["pairs_built"] * 1000 / 1e6}


ROUNDS = 3  # pipeline and raw limit measured alternately, best of each


def _real_build(source: str, root: str, num_pairs: int, **kw) -> tuple[dict, list[dict], str, float]:
    """One build of the fixture by one in-process worker (``--local``: the ShardActor code a Ray
    worker runs, without Ray). A real-source fixture is one shard of about a second, and Ray's
    start-up daemons (dashboard agent, log monitor, autoscaler, worker spawns) still keep a core
    15-40% busy during it: measured through Ray, that shard took 12-33% longer."""
    from manifests import layout
    from pairgen.build import run_build
    from pairgen.config import BuildConfig

    out = tempfile.mkdtemp(prefix=f"bench_{source}_")
    cfg = BuildConfig(source=source, root=root, out=os.path.join(out, "s"), num_pairs=num_pairs, seed=0,
                      local=True, shard_size=10_000, **kw)
    t0 = time.perf_counter()
    summary = run_build(cfg, progress=False)
    wall = time.perf_counter() - t0
    stats = [json.loads(layout.stats_path(cfg.out, n).read_text()) for n in layout.finished_shards(cfg.out)]
    return summary, stats, cfg.out, wall


class _OneCore:
    """Pins every thread of this process to one CPU (and threads started meanwhile inherit it), so
    that a worker with a decoding thread is measured per core, like the single-threaded limit."""

    def __enter__(self):
        self.saved = os.sched_getaffinity(0)
        self._set({min(self.saved)})
        return self

    def __exit__(self, *exc):
        self._set(self.saved)

    @staticmethod
    def _set(cpus) -> None:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:  # a thread that has just ended
                pass


def bench_jpeg_source(source: str, root: str, num_pairs: int, image_path) -> dict:
    """Pipeline vs raw JPEG decode (the pairs' source frames) + JPEG encode (their crops), both on
    one core; best of ``ROUNDS`` alternating measurements of each."""
    with _OneCore():
        return _bench_jpeg_source(source, root, num_pairs, image_path)


def _bench_jpeg_source(source: str, root: str, num_pairs: int, image_path) -> dict:
    import pandas as pd
    import simplejpeg
    from manifests.sample import encode_jpeg

    busy, raw, blobs = [], [], None
    crop = np.zeros((256, 256, 3), np.uint8)
    for _ in range(ROUNDS):
        summary, stats, out, wall = _real_build(source, root, num_pairs)
        busy.append(sum(st["build_s"] + st.get("write_s", 0) for st in stats))
        if blobs is None:
            df = pd.read_parquet(os.path.join(out, "manifest"))
            files = [image_path(r.sequence, r.camera_target, r.frame_target) for r in df.itertuples()] + \
                    [image_path(r.sequence, r.camera_reference, r.frame_reference) for r in df.itertuples()]
            blobs = [open(f, "rb").read() for f in files]
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        t0 = time.perf_counter()
        for b in blobs:
            simplejpeg.decode_jpeg(b, colorspace="RGB")
            encode_jpeg(crop, 95)  # the pipeline's encoder settings
        raw.append(time.perf_counter() - t0)
    pairs = summary["pairs_built"]
    return {"pairs": pairs, "wall_s": wall, "steady_pairs_per_s_per_core": pairs / min(busy),
            "steady_range": (pairs / max(busy), pairs / min(busy)),
            "limit_pairs_per_s": pairs / min(raw), "ratio": min(raw) / min(busy)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="synthetic")
    p.add_argument("--num-pairs", type=int, default=None,
                   help="synthetic: pairs per timed shard (default 150); real sources: pairs to build (600)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--frames", type=int, default=None,
                   help="frames per unit of a generated fixture (aist: 120 per camera, as documented; others: 40)")
    args = p.parse_args()
    if args.num_pairs is None:
        args.num_pairs = 150 if args.source == "synthetic" else 600
    if args.frames is None:
        args.frames = 120 if args.source == "aist" else 40
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    if args.source != "synthetic":
        return bench_real(args)
    rounds = 2 * ROUNDS
    one = synthetic_one_core(args.num_pairs, rounds, args.image_size, seconds=2.0)
    renders, pairs = max(one["renders_per_s"]), max(one["pairs_per_s"])
    limit = renders / 2
    ratios = sorted(2 * p / r for p, r in zip(one["pairs_per_s"], one["renders_per_s"]))
    median = (ratios[(rounds - 1) // 2] + ratios[rounds // 2]) / 2
    print(f"one core, {rounds} alternating rounds (this machine's speed drifts: each round's ratio pairs "
          f"two adjacent measurements):")
    print(f"  raw render rate:                 best {renders:.1f} renders/s -> limit {limit:.1f} pairs/s "
          f"(rounds: {', '.join(f'{x:.0f}' for x in one['renders_per_s'])})")
    print(f"  pipeline (worker: build + write {args.num_pairs}-pair shards): best {pairs:.1f} pairs/s "
          f"(rounds: {', '.join(f'{x:.1f}' for x in one['pairs_per_s'])})")
    print(f"  ratio to the raw render limit:   median of rounds {median:.2f} "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; best to best {pairs / limit:.2f})")
    pipe = pipeline_rate(args.num_pairs * args.workers * 2, args.workers, args.shard_size, args.image_size)
    print(f"pairgen build, Ray, {args.workers} workers, {pipe['pairs']} pairs: wall {pipe['wall_s']:.1f} s")
    print(f"  shard work (sum over workers):   {pipe['steady_pairs_per_s_per_core']:.1f} pairs/s per core "
          f"(ratio {pipe['steady_pairs_per_s_per_core'] / limit:.2f}; Ray's daemons share the cores)")
    print(f"  wall clock (Ray start included): {pipe['wall_pairs_per_s_per_core']:.1f} pairs/s per core "
          f"(ratio {pipe['wall_pairs_per_s_per_core'] / limit:.2f})")
    print(f"  peak RSS per worker:             {pipe['peak_rss_mb_per_worker'] or float('nan'):.0f} MB")
    print(f"  output size:                     {pipe['mb_per_1k_pairs']:.1f} MB per 1000 pairs")
    return 0


def _raw_pyav_rate(videos: list[str], frames_each: int, decoders: int = 1, thread_type: str = "AUTO") -> float:
    """Frames/s of plain PyAV decoding (to RGB arrays) of the first ``frames_each`` frames of each
    video: one video at a time with PyAV's ``thread_type`` (default "AUTO"), or ``decoders`` videos
    at once (threads; PyAV releases the GIL)."""
    import threading

    import av

    todo, lock, counts = iter(videos), threading.Lock(), []

    def decode() -> None:
        n = 0
        while True:
            with lock:
                v = next(todo, None)
            if v is None:
                counts.append(n)
                return
            with av.open(v) as c:
                s = c.streams.video[0]
                s.thread_type = thread_type
                for i, frame in enumerate(c.decode(s)):
                    frame.to_ndarray(format="rgb24")
                    n += 1
                    if i + 1 >= frames_each:
                        break

    t0 = time.perf_counter()
    threads = [threading.Thread(target=decode) for _ in range(decoders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def _bench_aist(root: str, args) -> int:
    import glob

    videos = sorted(glob.glob(os.path.join(root, "**", "*.mp4"), recursive=True))
    busy, raw, strict = [], [], []
    for _ in range(ROUNDS):  # alternating, best of each
        summary, stats, out, wall = _real_build("aist", root, args.num_pairs, silhouette="keypoints")
        busy.append(sum(st["build_s"] + st.get("write_s", 0) for st in stats))
        decoded = sum(st["metrics"].get("decoded_frames", 0) for st in stats)
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        raw.append(_raw_pyav_rate(videos, args.frames))
        strict.append(_raw_pyav_rate(videos, args.frames, decoders=2, thread_type="SLICE"))
    pairs = summary["pairs_built"]
    end_to_end = [decoded / b for b in busy]
    print(f"aist fixture (9 cameras x {args.frames} frames, 1920x1080 H.264 at 60 fps), 1 in-process worker, "
          f"{pairs} pairs, {decoded} frames decoded once each, best of {ROUNDS} alternating rounds")
    print(f"  pipeline steady state:           {pairs / min(busy):.1f} pairs/s, one worker with the machine's "
          f"cores for its decoders (rounds {pairs / max(busy):.1f}-{pairs / min(busy):.1f})")
    print(f"  frames per second of shard work: {max(end_to_end):.1f} frames/s (decode + crop + silhouette + encode + "
          f"write; rounds {min(end_to_end):.1f}-{max(end_to_end):.1f})")
    print(f"  raw PyAV decoding, same videos:  {max(raw):.1f} frames/s (1 process, one video at a time, "
          f"thread_type AUTO; rounds {min(raw):.1f}-{max(raw):.1f})")
    print(f"  raw, the pipeline's decoders:    {max(strict):.1f} frames/s (two videos at once, slice threads; "
          f"rounds {min(strict):.1f}-{max(strict):.1f})")
    print(f"  ratio, end to end:               {max(end_to_end) / max(raw):.2f} (goal >= 0.8)")
    print(f"  ratio to the faster raw decoding: {max(end_to_end) / max(strict):.2f} (strict)")
    return 0


def _jpeg_fixture(source: str, root: str, body, frames: int) -> tuple[str, type, str, str]:
    """Write a JPEG-folder fixture; returns (dataset root, reader class, description, goal)."""
    if source == "interhand":
        from fixtures_interhand import make_interhand_fixture
        from pairgen.sources.interhand import InterHandReader

        make_interhand_fixture(root, body, frames=frames, val_frames=4)
        return root, InterHandReader, f"{frames} frames per unit, 512x334 JPEGs", " (goal >= 0.7)"
    if source == "humbi":
        from fixtures_humbi import make_humbi_fixture
        from pairgen.sources.humbi import HumbiReader

        make_humbi_fixture(root, body, subjects=(1,), frames=frames, width=1920, height=1080, keep_masks=False)
        return root, HumbiReader, f"1 subject, 8 cameras, {frames} frames, 1920x1080 JPEGs", ""
    from fixtures_posetrack import make_posetrack_fixture
    from pairgen.sources.posetrack import PoseTrackReader

    truth = make_posetrack_fixture(root, body, formats=("pt18",), frames=frames, width=1920, height=1080,
                                   keep_masks=False)
    return (str(truth["roots"]["pt18"]), PoseTrackReader,
            f"PoseTrack18 layout, 2 videos x {frames} frames, 2-3 people, 1920x1080 JPEGs", " (goal >= 0.7)")


def bench_real(args) -> int:
    """Real sources run on a fixture generated by the tests' fixture writers (real layout)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from functools import lru_cache

    from pairgen.synthetic.body import AnnyBody

    if args.source not in ("aist", "interhand", "humbi", "posetrack"):
        print(f"bench_pairgen: source {args.source!r} has no benchmark yet", file=sys.stderr)
        return 2
    body = AnnyBody()
    root = tempfile.mkdtemp(prefix=f"bench_{args.source}_data_")
    try:
        if args.source == "aist":
            from pathlib import Path

            from fixtures_aist import make_aist_fixture
            from smpl_fixture import make_smpl_file

            smpl = make_smpl_file(Path(root) / "SMPL_TEST.pkl", body)
            make_aist_fixture(Path(root), body, smpl, seqs=(("gBR_sBM_cAll_d04_mBR1_ch02", "train"),),
                              n_frames=args.frames, width=1920, height=1080, keep_masks=False)
            return _bench_aist(root, args)
        tree, reader_cls, what, goal = _jpeg_fixture(args.source, root, body, args.frames)
        load = lru_cache(maxsize=None)(reader_cls(tree, {}).load)  # the reader knows the layout; load once

        def image_path(seq, cam, frame):
            return str(load(seq).image_path(cam, frame))

        r = bench_jpeg_source(args.source, tree, args.num_pairs, image_path)
        lo, hi = r["steady_range"]
        print(f"{args.source} fixture ({what}), 1 in-process worker pinned to one core, {r['pairs']} pairs, "
              f"best of {ROUNDS} alternating rounds")
        print(f"  pipeline steady state:           {r['steady_pairs_per_s_per_core']:.1f} pairs/s per core "
              f"(rounds {lo:.1f}-{hi:.1f})")
        print(f"  raw JPEG decode + encode limit:  {r['limit_pairs_per_s']:.1f} pairs/s (1 core)")
        print(f"  ratio:                           {r['ratio']:.2f}{goal}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
