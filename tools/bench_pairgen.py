#!/usr/bin/env python
"""Benchmark pairgen: pairs/s per core against the physical limit measured in the same run.

    python tools/bench_pairgen.py --source synthetic [--num-pairs 600] [--workers N]
    python tools/bench_pairgen.py --source synthetic --out s3://bucket/prefix [--num-pairs 400 --shard-size 50]
    python tools/bench_pairgen.py --source interhand|aist|humbi|posetrack   (on a generated fixture)

synthetic: one process pinned to one core builds a synthetic worker once (as a Ray worker does),
then alternates 2 x ROUNDS times between the raw render loop of the same renderer on already-posed,
already-textured bodies (nothing else: no posing, texturing, compositing, encoding or writing) and
building + writing a shard of --num-pairs pairs with the same worker; the ratio is the median of
the rounds' ratios (this machine's speed drifts by up to 2x within a minute, so a ratio pairs two
adjacent measurements). Each pair needs two renders, so the pair limit is renders/s / 2. The raw
loop runs in the worker's process on purpose: a fresh process renders ~30% slower (glibc still
serves its large arrays with mmap and page faults), which would flatter the pipeline. Then a whole `pairgen build` (Ray, N workers)
gives the wall-clock rate (Ray start and model builds included), the shard-work rate with Ray's
daemons sharing the cores, and the peak RSS per worker. Per-shard times come from the build's
summary (``summary["shards"][i]["timing"]``: build_s, stage_s, publish_s); a worker's busy time on a
shard of a local OUT is their sum.

synthetic --out URL (issue 11: does uploading overlap building?): pairs/s of the same build (seed 0,
--num-pairs in shards of --shard-size) written to URL and to a fresh local directory, alternately,
--rounds times (default 6; each into a fresh prefix / directory), by one in-process worker (the
``--local`` path: a ShardActor whose Publisher uploads in a background thread while the next shard
is built, the code a Ray worker runs) pinned to one core with all its threads, so that the upload's
CPU is paid out of the worker's own core as on a fully loaded node. Reported: pairs/s of each and the median of the
per-round ratios (URL / local), per-shard build_s vs publish_s (upload throughput seen), bytes
uploaded, the worker's CPU time per build, the same bytes uploaded alone (no build running), and
where an S3 build's extra time goes (client CPU, stalls, the last shard's upload, which nothing
overlaps, and the build's set-up requests). For s3:// without an endpoint in the environment
(AWS_ENDPOINT_URL...) the bench starts moto's S3 server in a thread of the driver process on
127.0.0.1 (dummy credentials, the bucket created) and measures it twice: on the other core(s) (an
S3 service running elsewhere) and on the worker's core (its CPU competing with the build), see
--server-core. The first S3 build is checked with ``pairgen.verify.verify`` and against the local
build's tar checksums. Why not Ray here: its daemons share the cores (see below) and two workers on
two cores would leave moto no core of its own, measuring moto rather than the overlap.

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
    from manifests.storage import Store
    from pairgen.build import build_shard
    from pairgen.config import BuildConfig
    from pairgen.sources.base import ShardTask
    from pairgen.sources.synthetic import SyntheticWorker
    from pairgen.synthetic import appearance, camera as cam
    from pairgen.synthetic.motions import sample_clip
    from pairgen.writer import publish, warm_up

    out = tempfile.mkdtemp(prefix="bench_synthetic_")
    try:
        cfg = BuildConfig(source="synthetic", out=out, num_pairs=num_pairs * rounds, seed=0, image_size=image_size,
                          shard_size=num_pairs, local=True)
        warm_up()
        store = Store(out)
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
            staged, _ = build_shard(worker, task, cfg, store)
            publish(store, staged)  # a local OUT: what a worker's Publisher does at once (fsync + rename)
            pipe.append(staged.stats["count"] / (time.perf_counter() - t0))
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


def shard_busy_s(shard: dict) -> float:
    """Seconds a worker spent on one shard of a local OUT: building, staging (tar + Parquet) and
    publishing (fsync + rename), from the timings the driver gets (``summary["shards"][i]["timing"]``;
    stats files hold no timings)."""
    t = shard["timing"]
    return t["build_s"] + t.get("stage_s", 0.0) + t.get("publish_s", 0.0)


def pipeline_rate(num_pairs: int, workers: int, shard_size: int, image_size: int) -> dict:
    from pairgen.build import run_build
    from pairgen.config import BuildConfig

    out = tempfile.mkdtemp(prefix="bench_pairgen_")
    try:
        cfg = BuildConfig(source="synthetic", out=os.path.join(out, "s"), num_pairs=num_pairs, seed=0,
                          workers=workers, shard_size=shard_size, image_size=image_size)
        t0 = time.perf_counter()
        summary = run_build(cfg, progress=False)
        wall = time.perf_counter() - t0
        shards = summary["shards"]
        busy = sum(shard_busy_s(s) for s in shards)
        nbytes = sum(s["tar_bytes"] for s in shards)
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
    15-40% busy during it: measured through Ray, that shard took 12-33% longer. Returns (summary,
    its per-shard results: stats + ``timing``, the output directory, wall seconds)."""
    from pairgen.build import run_build
    from pairgen.config import BuildConfig

    out = tempfile.mkdtemp(prefix=f"bench_{source}_")
    cfg = BuildConfig(source=source, root=root, out=os.path.join(out, "s"), num_pairs=num_pairs, seed=0,
                      local=True, shard_size=10_000, **kw)
    t0 = time.perf_counter()
    summary = run_build(cfg, progress=False)
    wall = time.perf_counter() - t0
    return summary, summary["shards"], cfg.out, wall


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
        busy.append(sum(shard_busy_s(st) for st in stats))
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


# -- writing to object storage (issue 11): --out URL --------------------------------------------------

def _endpoint_configured() -> bool:
    """An S3 endpoint set in the environment (then the bench uses it instead of starting moto)."""
    return any(os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL"))


def _start_moto(bucket: str):
    """moto's S3-compatible server in a thread of this process on 127.0.0.1 and a free port; points
    this process and its children (the measured worker) at it with dummy credentials, and creates
    ``bucket``. Returns the server (``.stop()`` it)."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(k, None)  # never a real account's settings
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true")
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    srv.endpoint = endpoint
    return srv


def _storage_process(cfg_kw: dict, cpu: int, url: str, commands, replies) -> None:
    """The measured worker, pinned to one core with every thread it starts (its publish thread, the
    fsspec I/O thread, the renderer's): builds the synthetic worker once, then runs ``run_build`` (the
    ``--local`` path: one in-process ShardActor, whose Publisher uploads to object storage in a
    background thread while the next shard is built) for each command of the driver. Like the body
    model, the storage client's one-time costs (importing s3fs/aiobotocore, its session, the first
    connection) are paid before any timed build, as a Ray worker pays them once."""
    os.sched_setaffinity(0, {cpu})
    import resource

    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    import pairgen.distribute as dist
    from manifests.storage import Store
    from pairgen.build import run_build
    from pairgen.config import BuildConfig
    from pairgen.sources import make_source
    from pairgen.synthetic.render import configure_gl
    from pairgen.verify import verify
    from pairgen.writer import stats_bytes, warm_up

    configure_gl()
    warm_up()
    t0 = time.perf_counter()
    worker = make_source(BuildConfig(**cfg_kw)).make_worker()
    model_s = time.perf_counter() - t0
    Store(url).check_writable()  # s3fs imported, session and connection made: once per worker

    class WarmActor(dist.ShardActor):
        """A ShardActor whose source worker is already built, as in a Ray worker after its first
        shard: every timed build is shard work only, not the body model and renderer set-up."""

        made = 0

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.worker = worker
            WarmActor.made += 1

    dist.ShardActor = WarmActor  # what _run_local instantiates

    def cpu_s() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def io_cpu_s() -> float:
        """CPU time of fsspec's I/O thread (its event loop runs every s3fs request: the upload's
        client-side work), 0 before it exists."""
        import fsspec.asyn

        t = fsspec.asyn.iothread[0]
        return time.clock_gettime(time.pthread_getcpuclockid(t.ident)) if t is not None and t.is_alive() else 0.0

    def build(out: str, num_pairs: int | None = None) -> dict:
        cfg = BuildConfig(**{**cfg_kw, "num_pairs": num_pairs or cfg_kw["num_pairs"]}, out=out)
        c0, m0, i0, t0 = cpu_s(), time.thread_time(), io_cpu_s(), time.perf_counter()
        made = WarmActor.made
        summary = run_build(cfg, progress=False, log=lambda msg: None)
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        if WarmActor.made == made:  # the timed build would have built its own model: not shard work only
            raise RuntimeError("run_build(local=True) no longer runs pairgen.distribute.ShardActor: update the bench")
        main_cpu, io_cpu = time.thread_time() - m0, io_cpu_s() - i0
        shards = sorted(summary["shards"], key=lambda s: s["index"])
        for s in shards:  # the stats object's size (its bytes are the stats without the driver's timings)
            s["stats_bytes"] = len(stats_bytes({k: v for k, v in s.items() if k != "timing" and not k.startswith("_")}))
        return {"wall_s": wall, "tasks_s": summary["seconds"], "pairs": summary["pairs_built"], "cpu_s": cpu,
                "main_cpu_s": main_cpu, "io_cpu_s": io_cpu, "shards": shards, "out": summary["out"]}

    def upload(src: str, dst: str) -> dict:
        """The bytes of a finished local build, uploaded shard by shard with the calls publish makes
        (tar, manifest: put_file; stats: pipe_file), nothing else running in this process."""
        from manifests import layout

        s, d = Store(src), Store(dst)
        names = layout.finished_shards(src)
        c0, i0, t0, nbytes, per = cpu_s(), io_cpu_s(), time.perf_counter(), 0, []
        for n in names:
            t1 = time.perf_counter()
            for rel in (layout.tar_rel(n), layout.manifest_rel(n)):
                d.fs.put_file(s.path(rel), d.path(rel))
                nbytes += os.path.getsize(s.path(rel))
            raw = s.read_bytes(layout.stats_rel(n))
            d.fs.pipe_file(d.path(layout.stats_rel(n)), raw)
            nbytes += len(raw)
            per.append(time.perf_counter() - t1)
        return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0, "io_cpu_s": io_cpu_s() - i0, "bytes": nbytes,
                "per_shard_s": per}

    def remove(url: str) -> None:
        s = Store(url)
        if s.local:
            shutil.rmtree(os.path.dirname(s.root) if os.path.basename(s.root) == "s" else s.root,
                          ignore_errors=True)
        elif s.fs.exists(s.root):
            s.fs.rm(s.root, recursive=True)

    replies.put({"model_s": model_s})
    while True:
        cmd, *a = commands.get()
        try:
            if cmd == "quit":
                replies.put({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})
                return
            if cmd == "build":
                replies.put(build(*a))
            elif cmd == "upload":
                replies.put(upload(*a))
            elif cmd == "verify":
                r = verify(a[0])
                replies.put({"ok": r["ok"], "shards": r["shards"], "samples": r["samples"],
                             "problems": r["problems"][:5]})
            elif cmd == "rm":
                remove(a[0])
                replies.put({})
        except Exception as exc:  # noqa: BLE001 - shown by the driver
            import traceback

            replies.put({"error": f"{cmd}: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"})


_SAME_CORE = "s3, moto on the worker's core"


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def bench_storage(args) -> int:
    """Pairs/s of the same synthetic build written to object storage (``--out URL``) and to a fresh
    local directory, alternately, by one worker pinned to one core. See the module docstring."""
    import multiprocessing as mp
    import uuid

    from manifests.storage import Store, is_url

    url = args.out.rstrip("/")
    if not is_url(url) or url.startswith("file://"):
        print("bench_pairgen: --out takes an object-storage URL (s3://bucket/prefix); the local side of the "
              "comparison is a fresh temporary directory", file=sys.stderr)
        return 2
    if args.num_pairs < 2 * args.shard_size:
        print(f"bench_pairgen: --num-pairs {args.num_pairs} with --shard-size {args.shard_size} gives fewer than 2 "
              "shards: an upload overlaps the building of the next shard only (use several shards)", file=sys.stderr)
        return 2
    rounds = args.rounds or 2 * ROUNDS
    server = None
    if url.startswith("s3://") and not _endpoint_configured():
        server = _start_moto(url[len("s3://"):].split("/", 1)[0])
        where = f"moto S3 server started by this bench at {server.endpoint} (a thread of the driver process)"
    else:
        where = "endpoint from the environment" if url.startswith("s3://") else "as configured for fsspec"
    cores = sorted(os.sched_getaffinity(0))
    worker_core = cores[0]
    others = set(cores[1:]) or {worker_core}
    # (label, cores for this driver process, which holds moto's threads, during that build)
    variants = [("local", others), ("s3", others)]
    if server is not None and args.server_core in ("same", "both") and others != {worker_core}:
        variants.append((_SAME_CORE, {worker_core}))
    if args.server_core == "same" and len(variants) == 3:
        variants = [variants[0], variants[2]]
    run_id = uuid.uuid4().hex[:8]
    cfg_kw = dict(source="synthetic", num_pairs=args.num_pairs, seed=0, image_size=args.image_size,
                  shard_size=args.shard_size, local=True)
    n_shards = -(-args.num_pairs // args.shard_size)

    def cpu_self() -> float:
        t = os.times()
        return t.user + t.system

    ctx = mp.get_context("spawn")
    commands, replies = ctx.Queue(), ctx.Queue()
    pr = ctx.Process(target=_storage_process, args=(cfg_kw, worker_core, url, commands, replies))
    t_start = time.perf_counter()
    pr.start()

    def reply() -> dict:
        import queue

        while True:
            try:
                r = replies.get(timeout=5)
                break
            except queue.Empty:
                if not pr.is_alive():
                    raise RuntimeError(f"the measured worker process died (exit code {pr.exitcode})") from None
        if "error" in r:
            raise RuntimeError(r["error"])
        return r

    def ask(*cmd) -> dict:
        commands.put(cmd)
        return reply()

    try:
        model_s = reply()["model_s"]
        runs: dict[str, list[dict]] = {label: [] for label, _ in variants}
        kept_local = checked = None
        # untimed: a fresh process runs its first shards slower (see the synthetic benchmark), and the
        # first build of each kind pays its first-use costs
        for warm in (os.path.join(tempfile.mkdtemp(prefix="bench_storage_"), "s"), f"{url}/bench-{run_id}/warm-up"):
            ask("build", warm, 2 * args.shard_size)
            ask("rm", warm)
        for k in range(rounds):
            order = variants if k % 2 == 0 else variants[::-1]
            for label, driver_cores in order:
                _OneCore._set(driver_cores)
                if label == "local":
                    out = os.path.join(tempfile.mkdtemp(prefix="bench_storage_"), "s")
                else:
                    out = f"{url}/bench-{run_id}/r{k}-{'s3-moto-same-core' if label == _SAME_CORE else 's3'}"
                c0 = cpu_self()
                r = ask("build", out)
                r["server_cpu_s"] = cpu_self() - c0 if server is not None else None
                runs[label].append(r)
                if label != "local" and checked is None:
                    checked = ask("verify", out)
                    checked["url"] = out
                    checked["same_bytes"] = [s["tar_sha256"] for s in r["shards"]]
                if label == "local" and k == rounds - 1:
                    kept_local = out
                else:
                    ask("rm", out)
        # the same bytes uploaded alone (nothing else running in the worker): moto on the other core(s)
        _OneCore._set(others)
        alone = []
        for i in range(2):
            dst = f"{url}/bench-{run_id}/alone{i}"
            c0 = cpu_self()
            a = ask("upload", kept_local, dst)
            a["server_cpu_s"] = cpu_self() - c0 if server is not None else None
            alone.append(a)
            ask("rm", dst)
        ask("rm", kept_local)
        peak = ask("quit")["peak_rss_mb"]
        pr.join(timeout=60)
        _OneCore._set(set(cores))
        import resource

        driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    finally:
        if pr.is_alive():
            pr.kill()
        if server is not None:
            server.stop()
    total_s = time.perf_counter() - t_start
    local_sha = [s["tar_sha256"] for s in runs["local"][0]["shards"]]
    checked["same_bytes"] = checked["same_bytes"] == local_sha
    _report_storage(args, url, where, variants, runs, alone, checked, model_s, peak, driver_rss, n_shards,
                    rounds, worker_core, others, server is not None, total_s)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"variants": [v for v, _ in variants], "runs": runs, "alone": alone, "verify": checked,
                       "model_s": model_s, "peak_rss_mb": peak, "driver_rss_mb": driver_rss}, f, indent=1)
    return 0 if checked["ok"] and checked["same_bytes"] else 1


def _report_storage(args, url, where, variants, runs, alone, checked, model_s, peak, driver_rss, n_shards,
                    rounds, worker_core, others, own_server, total_s) -> None:
    def rate(r):
        return r["pairs"] / r["wall_s"]

    def nbytes(r):
        return sum(s["tar_bytes"] + s["manifest_bytes"] + s["stats_bytes"] for s in r["shards"])

    def per_shard(r, key):
        return [s["timing"].get(key, 0.0) for s in r["shards"]]

    loc = runs["local"]
    pairs = loc[0]["pairs"]
    print(f"writing to object storage vs local disk: {pairs} synthetic pairs per build in {n_shards} shards of "
          f"{args.shard_size}, seed 0, {args.image_size}px; {rounds} rounds, each building into a fresh local "
          "directory and a fresh prefix of the bucket, alternately")
    print(f"  worker: one in-process worker (the --local path: ShardActor + Publisher, the code a Ray worker runs) "
          f"pinned to core {worker_core} with all its threads (build, publish, fsspec I/O); model built once "
          f"({model_s:.1f} s, not timed)")
    print(f"  storage: {url} ({where}); moto's threads on core(s) {sorted(others)} unless said otherwise")
    print(f"  an upload overlaps the building of the NEXT shard: with {n_shards} shards per build, "
          f"{n_shards - 1} uploads can hide behind building, the last one (and the build's own requests: "
          "probe, listings, config and plan records) cannot")
    print(f"  {'target':34s} {'pairs/s, rounds':36s} median")
    for label, _ in variants:
        xs = [rate(r) for r in runs[label]]
        print(f"  {label:34s} {', '.join(f'{x:.1f}' for x in xs):36s} {_median(xs):.1f}")
    for label, _ in variants[1:]:
        ratios = [rate(s) / rate(lo) for s, lo in zip(runs[label], loc)]
        shard_ratios = [(lo["tasks_s"]) / (s["tasks_s"]) for s, lo in zip(runs[label], loc)]
        print(f"  ratio {label} / local: median of rounds {_median(ratios):.2f} (range {min(ratios):.2f}-"
              f"{max(ratios):.2f}; shard phase only, without the build's set-up requests: "
              f"{_median(shard_ratios):.2f}) (goal >= 0.9)")
    s3 = runs[variants[1][0]]  # the first object-storage variant
    up_bytes = [nbytes(r) for r in s3]
    print(f"  uploaded per build: {up_bytes[0] / 1e6:.1f} MB ({up_bytes[0] / 1e6 / n_shards:.1f} MB a shard: tar + "
          f"manifest + stats); total uploaded in the run: "
          f"{sum(nbytes(r) for label, _ in variants[1:] for r in runs[label]) / 1e6 + sum(a['bytes'] for a in alone) / 1e6:.0f} MB")
    for label, _ in variants:
        rs = runs[label]
        b = [x for r in rs for x in per_shard(r, "build_s")]
        st = [x for r in rs for x in per_shard(r, "stage_s")]
        pub = [x for r in rs for x in per_shard(r, "publish_s")]
        mbps = [(s["tar_bytes"] + s["manifest_bytes"]) / 1e6 / s["timing"]["publish_s"] for r in rs
                for s in r["shards"] if s["timing"].get("publish_s")]
        tail = _median([per_shard(r, "publish_s")[-1] for r in rs])
        setup = _median([r["wall_s"] - r["tasks_s"] for r in rs])
        cpu = _median([r["cpu_s"] for r in rs])
        srv = [r["server_cpu_s"] for r in rs if r.get("server_cpu_s") is not None]
        print(f"  {label}: per shard median build {_median(b):.2f} s, stage {_median(st):.3f} s, publish "
              f"{_median(pub):.3f} s" + (f" ({_median(mbps):.0f} MB/s)" if label != "local" else "")
              + f"; last shard's publish (not overlapped) {tail:.2f} s; build set-up + records {setup:.2f} s; "
              f"worker CPU {cpu:.1f} s a build" + (f", moto CPU {_median(srv):.1f} s a build" if srv else ""))
    # Where the extra time of an S3 build goes (medians over rounds, seconds a build). The direct
    # ratio pairs two ~10 s builds on a shared machine; the parts an S3 build adds are small and
    # measured directly, so their sum is a steadier estimate of the same ratio.
    lw = _median([r["wall_s"] for r in loc])
    loc_pub = _median([sum(per_shard(r, "publish_s")) for r in loc])
    loc_setup = _median([r["wall_s"] - r["tasks_s"] for r in loc])
    tail_client = _median([a["cpu_s"] / len(a["per_shard_s"]) for a in alone])
    for label, _ in variants[1:]:
        rs = runs[label]
        d_cpu = _median([s["cpu_s"] - lo["cpu_s"] for s, lo in zip(rs, loc)])
        stalls = _median([sum(max(0.0, p - (s["timing"]["build_s"] + s["timing"]["stage_s"]))
                              for p, s in zip(per_shard(r, "publish_s")[:-1], r["shards"][1:])) for r in rs])
        tail = _median([per_shard(r, "publish_s")[-1] for r in rs])
        d_setup = _median([r["wall_s"] - r["tasks_s"] for r in rs]) - loc_setup
        same = label == _SAME_CORE  # moto's CPU then comes out of the worker's core too
        srv = _median([r["server_cpu_s"] for r in rs]) if same else 0.0
        extra = d_cpu + srv + stalls + tail + d_setup - loc_pub
        print(f"  {label}, ratio from its parts: local wall {lw:.2f} s + client CPU of the uploads {d_cpu:.2f} (worker "
              f"CPU, s3 - local build)" + (f" + moto's CPU {srv:.2f}" if same else "")
              + f" + stalls {stalls:.2f} (an upload longer than the next shard's build) + last upload {tail:.2f} "
              f"+ set-up requests {d_setup:.2f} - local publishes {loc_pub:.2f} (fsync + rename) = {lw + extra:.2f} s "
              f"-> {lw / (lw + extra):.2f}")
    d_cpu = _median([s["cpu_s"] - lo["cpu_s"] for s, lo in zip(runs[variants[1][0]], loc)])
    if "main_cpu_s" in loc[0]:
        s3 = runs[variants[1][0]]
        d_main = _median([s["main_cpu_s"] - lo["main_cpu_s"] for s, lo in zip(s3, loc)])
        io = _median([s["io_cpu_s"] for s in s3])
        print(f"  {variants[1][0]}, the worker's extra CPU ({d_cpu:.2f} s a build, medians of rounds): fsspec's I/O thread (the "
              f"requests: aiohttp, botocore signing) {io:.2f} s; the build's own thread {d_main:+.2f} s (s3 - local: "
              f"the same work, slowed by sharing its core and caches with the upload); the rest (publish threads, "
              f"renderer threads) {d_cpu - io - d_main:+.2f} s")
    for i, a in enumerate(alone):
        print(f"  the same {a['bytes'] / 1e6:.1f} MB uploaded alone ({len(a['per_shard_s'])} shards, one after the other, "
              f"nothing else in the worker): {a['wall_s']:.2f} s = {a['bytes'] / 1e6 / a['wall_s']:.0f} MB/s, "
              f"{_median(a['per_shard_s']):.3f} s a shard; client CPU {a['cpu_s']:.2f} s"
              + (f" ({a['io_cpu_s']:.2f} s in fsspec's I/O thread)" if "io_cpu_s" in a else "")
              + (f", moto CPU {a['server_cpu_s']:.2f} s" if a.get("server_cpu_s") is not None else ""))
    extra_free = d_cpu + tail_client - loc_pub
    print(f"  {variants[1][0]}, without the server's share (an endpoint that answers at once: the last upload costs only its client "
          f"CPU, {tail_client:.3f} s, the set-up requests nothing): {lw / (lw + extra_free):.2f}")
    print(f"  pairgen.verify.verify({checked['url']}): {'ok' if checked['ok'] else 'FAILED'} ({checked['shards']} shards, "
          f"{checked['samples']} samples){'' if checked['ok'] else ': ' + '; '.join(checked['problems'])}; "
          f"tars byte-identical to the local build: {'yes' if checked['same_bytes'] else 'NO'}")
    print(f"  peak RSS: worker {peak:.0f} MB; driver{' with moto' if own_server else ''} {driver_rss:.0f} MB; "
          f"this run took {total_s:.0f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="synthetic")
    p.add_argument("--num-pairs", type=int, default=None,
                   help="synthetic: pairs per timed shard (default 150); with --out: pairs per build (400); "
                        "real sources: pairs to build (600)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shard-size", type=int, default=None,
                   help="pairs per shard of the Ray build (default 100); with --out: of every build (50)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--frames", type=int, default=None,
                   help="frames per unit of a generated fixture (aist: 120 per camera, as documented; others: 40)")
    p.add_argument("--out", default=None, metavar="URL",
                   help="synthetic: compare writing to this object-storage URL (s3://bucket/prefix) with writing "
                        "to local disk instead of the render-limit benchmark; without an endpoint in the "
                        "environment a local moto S3 server is started for it")
    p.add_argument("--rounds", type=int, default=None, help="with --out: alternating rounds (default 6)")
    p.add_argument("--json-out", default=None, metavar="FILE", help="with --out: also write every measurement here")
    p.add_argument("--server-core", choices=("other", "same", "both"), default="both",
                   help="with --out and the bench's own moto server: moto on the other core(s) than the worker "
                        "(other), on the worker's core (same), or both alternately (default)")
    args = p.parse_args()
    if args.num_pairs is None:
        args.num_pairs = (400 if args.out else 150) if args.source == "synthetic" else 600
    if args.shard_size is None:
        args.shard_size = 50 if args.out else 100
    if args.frames is None:
        args.frames = 120 if args.source == "aist" else 40
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    if args.source != "synthetic":
        if args.out:
            print("bench_pairgen: --out is measured with the synthetic source only", file=sys.stderr)
            return 2
        return bench_real(args)
    if args.out:
        return bench_storage(args)
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
        busy.append(sum(shard_busy_s(st) for st in stats))
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
