#!/usr/bin/env python
"""Planning and worker memory at real dataset size (issue 12): annotation layouts of real size, no real pixels.

    python tools/bench_scale.py --source aist|interhand|posetrack|mars [--fractions 0.01,0.1,0.3333,1]
                                [--units K[,K...]] [--images N[,N...]]   (interhand: by image count)
                                [--pairs-per-unit P] [--plan-processes 0] [--silhouette M] [--split S]
                                [--workdir DIR] [--keep] [--json-out F] [--mem-cap-gb 12] [--timeout-s 1800]
                                [--skip-worker] [--skip-resume] [--profile] [--trace-memory] [--code DIR]
                                [--interhand-generator own|tools] [--posetrack-format pt18|pt21]
    python tools/bench_scale.py --report A.json,B.json      (one table from earlier --json-out files)

For each size K (units: AIST++ sequences, InterHand (capture, sequence) units, PoseTrack videos,
MARS tracklets; ``--fractions`` of the full size, default 0.01,0.1) the script

1. writes the dataset's annotations in the real schema, file names and folder structure
   (``tools/scale_layouts.py``; placeholder media hard-linked under every real media name, since
   the readers list, stat, probe or read headers of media while planning), in a child process,
   and times that ("gen s");
2. **plan**: a fresh process runs ``pairgen.build.run_build`` on a fresh OUT, as ``pairgen build``
   does (``--workers`` = ``--plan-processes``, default 0: planning processes on all cores; 1 means
   ``--local``, planned in the driver alone), and stops it where building would start
   (``pairgen.distribute.run_tasks`` is replaced by a stop, so Ray never starts): wall time to that
   point ("to build s"), within it ``source.check()`` and ``source.plan()``, the driver's own peak
   RSS (VmHWM; ru_maxrss is kept too, but after fork + exec it starts from the spawning process's
   peak), the peak summed RSS of the process tree polled every 0.2 s (the driver plus its planning
   processes: "tree GB"; and the largest single process of that tree, "largest process GB": the
   driver, or a planning process, each of which holds its own reader), CPU seconds, and where the driver's planning time went (reader listing,
   ``reader.load``, ``mine_pairs``, ``write_plan``: timers in the driver process only, so with
   planning processes only ``plan`` is complete; ``--plan-processes 1`` sees every part and
   ``--profile`` adds a cProfile). The first task to build is saved;
3. **worker**: a fresh process constructs the source's worker (``make_source(cfg).make_worker()``)
   and calls ``build_into(task, sink)`` on that first task with a sink that counts and drops the
   pairs: build time, peak RSS, pairs built and skipped by reason. Pixels are placeholders (grey
   gradients), so crops are of placeholder media: keypoint silhouettes are built, bgsub
   silhouettes come out (mostly) empty and those pairs are skipped as "empty silhouette" after
   all the work (decoding, background models, crops) was done;
4. **resume**: the same stopped build is run again into the same OUT (its build config, plan
   record and ``plan-<source>.parquet`` are there) and timed to where building would start; the
   ``OUT/plan-<source>.*`` files are listed (``load_plan`` timed: the plan read back, not re-planned).

Every measurement records ``git log -1 --format=%h``, ``git status --short pairgen`` and the load
average (2 shared cores: other people's work slows what is measured). ``--code DIR`` measures another
copy of pairgen (e.g. ``git archive HEAD`` unpacked, while the working tree holds unfinished edits).
Annotation indexes (``pairgen.real.annotation_index``) go to a folder per K
(``CROCOMAN_INDEX_DIR``, unless set): built by the plan, read by the worker and the resumed build.
Children run under a memory cap (the tree's summed RSS, ``--mem-cap-gb``) and a timeout; a child
that hits either is reported as such. Generated data is deleted after each K unless ``--keep``.

Output: a table per source (each figure against K, with its growth from the smallest K), the goals
of issue 12 checked at the largest K, and with ``--json-out`` everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# BENCH_SCALE_CODE: measure another copy of the code (e.g. `git archive HEAD` unpacked: the committed
# code while the working tree holds someone's unfinished edits); set by --code for the children
CODE = Path(os.environ.get("BENCH_SCALE_CODE") or REPO)
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(CODE))

DEFAULT_PPU = {"aist": 200, "interhand": 200, "posetrack": 100, "mars": 50}
DEFAULT_SPLIT = {"aist": None, "interhand": "train", "posetrack": None, "mars": None}
GOALS = {"worker_gb": 2.0, "driver_gb": 4.0, "flat": 0.20, "plan_s": 300.0, "resume_s": 30.0}


# ---------------------------------------------------------------------------------------------------
# children (run in fresh processes)


class _Stop(Exception):
    pass


def _maxrss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def _hwm_mb() -> float | None:
    """This process's own peak RSS (VmHWM of its address space). Unlike ru_maxrss, which after
    fork + exec starts from the spawning process's peak, it counts this program only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def _cpu_s(who=resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class _PeakTracer:
    """``--trace-memory``: tracemalloc in the driver, and a thread that snapshots the allocations
    whenever the traced total passes its last snapshot by 4 MB; :meth:`stop` gives the lines that
    held most at the highest snapshot (slows the run: for finding what grows, not for timing)."""

    def __init__(self):
        import threading
        import tracemalloc

        self.tm = tracemalloc
        tracemalloc.start(8)
        self.best, self.snap, self.done = 0, None, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.25):
            cur, _ = self.tm.get_traced_memory()
            if cur > self.best + (4 << 20):
                self.best, self.snap = cur, self.tm.take_snapshot()

    def stop(self, top: int = 15) -> dict:
        self.done.set()
        self.thread.join()
        _, peak = self.tm.get_traced_memory()
        out = {"traced_peak_mb": round(peak / 2**20, 1), "snapshot_mb": round(self.best / 2**20, 1), "top": []}
        if self.snap is not None:
            for st in self.snap.statistics("traceback")[:top]:
                ours = [f for f in st.traceback if "/pairgen/" in f.filename or "/manifests/" in f.filename]
                where = ours[-1] if ours else st.traceback[-1]
                out["top"].append(f"{st.size / 2**20:.1f} MB in {st.count} blocks: {where.filename.split('/work/main/')[-1]}:"
                                  f"{where.lineno} (allocated at {st.traceback[0].filename.rsplit('/', 1)[-1]}:{st.traceback[0].lineno})")
        self.tm.stop()
        return out


def child_driver(spec: dict) -> dict:
    """run_build stopped where building starts; timers around check, plan and the reader."""
    t_import = time.perf_counter()
    import pairgen.build as build
    import pairgen.distribute as distribute
    import pairgen.real.source as real_source
    from pairgen.config import BuildConfig

    cfg = BuildConfig(**spec["config"])
    timers: dict[str, float] = {}
    counts: dict[str, int] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - t
                counts[name] = counts.get(name, 0) + 1
        return wrapper

    orig_make_source = build.make_source

    def make_source(config):
        src = orig_make_source(config)
        src.check = timed("check", src.check)
        # plan() yields tasks as it mines (write_plan streams them to the plan file): its time is
        # that of consuming it, timed inside write_plan
        orig_plan = src.plan

        def plan():
            t = time.perf_counter()
            try:
                yield from orig_plan()
            finally:
                timers["plan"] = timers.get("plan", 0.0) + time.perf_counter() - t
                counts["plan"] = counts.get("plan", 0) + 1
        src.plan = plan
        if hasattr(src, "make_reader"):
            orig_reader = src.make_reader

            def make_reader():
                r = orig_reader()
                r.unit_names = timed("reader.unit_names", r.unit_names)
                r.load = timed("reader.load", r.load)
                return r
            src.make_reader = make_reader
        return src

    build.make_source = make_source
    if hasattr(real_source, "mine_pairs"):
        real_source.mine_pairs = timed("mine_pairs", real_source.mine_pairs)
    for name in ("load_plan", "write_plan"):  # the plan saved for / read back on resume (issue 12)
        if hasattr(build, name):
            setattr(build, name, timed(name, getattr(build, name)))
    info: dict = {}

    def stop(tasks, config, total_pairs, done_pairs=0, progress=True, log=print):
        info["to_build_s"] = time.perf_counter() - t0
        info["tasks_to_build"] = len(tasks)
        info["total_pairs"] = total_pairs
        info["done_pairs"] = done_pairs
        first = next(iter(tasks), None)  # read from the plan file, as the distributor would
        if first is not None and spec.get("task_out"):
            with open(spec["task_out"], "wb") as f:
                pickle.dump(first, f)
            info["first_task_planned"] = first.planned
        raise _Stop()

    distribute.run_tasks = stop
    tracer = _PeakTracer() if spec.get("trace_memory") else None
    profiler = None
    if spec.get("profile_out"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    error = None
    try:
        build.run_build(cfg, progress=False, log=lambda m: None)
        error = "run_build returned without reaching run_tasks"
    except _Stop:
        pass
    except Exception as exc:  # noqa: BLE001 - reported
        error = f"{type(exc).__name__}: {exc}"[:2000]
    wall = time.perf_counter() - t0
    if tracer is not None:
        info["memory_at_peak"] = tracer.stop()
    if profiler is not None:
        profiler.disable()
        import io
        import pstats

        buf = io.StringIO()
        st = pstats.Stats(profiler, stream=buf)
        st.sort_stats("cumulative").print_stats(45)
        st.sort_stats("tottime").print_stats(35)
        Path(spec["profile_out"]).write_text(buf.getvalue())
    out = Path(cfg.out)
    plan_files = {p.name: p.stat().st_size for p in sorted(out.glob(f"plan-{cfg.source}*")) if p.is_file()}
    plan_files.update({f"{p.name}/": sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
                       for p in sorted(out.glob(f"plan-{cfg.source}*")) if p.is_dir()})
    return {"wall_s": round(wall, 3), "import_s": round(t0 - t_import, 3), "error": error,
            "timers_s": {k: round(v, 3) for k, v in timers.items()}, "calls": counts, **info,
            "peak_rss_mb": _hwm_mb(), "ru_maxrss_mb": round(_maxrss_mb(), 1),
            "children_peak_rss_mb": round(_maxrss_mb(resource.RUSAGE_CHILDREN), 1),
            "cpu_s": round(_cpu_s(), 2), "children_cpu_s": round(_cpu_s(resource.RUSAGE_CHILDREN), 2),
            "plan_files": plan_files}


def child_gen(spec: dict) -> dict:
    """Write the layout (in its own process, so the parent that spawns the measured children stays small)."""
    args = argparse.Namespace(**spec["args"])
    out = generate(spec["source"], Path(spec["root"]), spec["units"], spec["images"], Path(spec["media"]), args)
    out["gen_peak_rss_mb"] = _hwm_mb()
    return out


def child_worker(spec: dict) -> dict:
    """Construct the source's worker and build one task into a sink that drops the pairs."""
    from pairgen.config import BuildConfig
    from pairgen.sources import make_source

    cfg = BuildConfig(**spec["config"])
    with open(spec["task_in"], "rb") as f:
        task = pickle.load(f)
    rss0 = _hwm_mb()
    t0 = time.perf_counter()
    worker = make_source(cfg).make_worker()
    t1 = time.perf_counter()
    rss1 = _hwm_mb()
    n = 0

    def sink(record) -> None:
        nonlocal n
        n += 1

    result = worker.build_into(task, sink)
    t2 = time.perf_counter()
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, dict))}
    return {"make_worker_s": round(t1 - t0, 3), "build_s": round(t2 - t1, 3), "planned": task.planned,
            "units": len({p.get("unit") for p in task.payload.get("pairs", []) if isinstance(p, dict)}),
            "built": n, "skipped": dict(result.skipped), "metrics": metrics,
            "rss_after_imports_mb": rss0, "rss_after_make_worker_mb": rss1,
            "peak_rss_mb": _hwm_mb(), "ru_maxrss_mb": round(_maxrss_mb(), 1),
            "children_peak_rss_mb": round(_maxrss_mb(resource.RUSAGE_CHILDREN), 1), "cpu_s": round(_cpu_s(), 2)}


# ---------------------------------------------------------------------------------------------------
# the parent: generation, children under a memory watchdog, tables


def git_state() -> dict:
    if CODE != REPO:
        marker = CODE / ".bench_scale_commit"
        return {"commit": marker.read_text().strip() if marker.is_file() else "?", "status_pairgen": "",
                "loadavg": os.getloadavg(),
                "code": str(CODE), "gen_interhand_annotations": (HERE / "gen_interhand_annotations.py").is_file()}

    def run(*cmd):
        try:
            return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception as exc:  # noqa: BLE001
            return f"? ({exc})"
    return {"commit": run("git", "log", "-1", "--format=%h"), "status_pairgen": run("git", "status", "--short", "pairgen"),
            "gen_interhand_annotations": (HERE / "gen_interhand_annotations.py").is_file(),
            "loadavg": os.getloadavg()}  # 2 shared cores: others' work slows what is measured


def _tree_rss_kb(root_pid: int) -> tuple[int, int]:
    """(summed VmRSS, largest VmRSS of one process) of a process and its descendants (KiB)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2:].split()[1])
            parent[int(d)] = ppid
        except (OSError, ValueError, IndexError):
            continue
    tree = {root_pid}
    grew = True
    while grew:
        grew = False
        for pid, pp in parent.items():
            if pp in tree and pid not in tree:
                tree.add(pid)
                grew = True
    total = largest = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb = int(line.split()[1])
                        total += kb
                        largest = max(largest, kb)
                        break
        except OSError:
            pass
    return total, largest


def run_child(kind: str, spec: dict, workdir: Path, cap_gb: float, timeout_s: float) -> dict:
    """Run a child mode in a fresh process with a memory watchdog; returns its result dict."""
    spec_path = workdir / f"spec-{kind}.json"
    res_path = workdir / f"result-{kind}.json"
    res_path.unlink(missing_ok=True)
    spec = dict(spec, result_out=str(res_path))
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("PYOPENGL_PLATFORM", "osmesa")
    # on-disk annotation indexes (pairgen.real.annotation_index): one per K, built by the plan (its first
    # reader), read by the worker and the resumed build, deleted with the K's data; not ~/.cache
    env.setdefault("CROCOMAN_INDEX_DIR", str(workdir / "annotation-index"))
    log = open(workdir / f"log-{kind}.txt", "w")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_child", kind, str(spec_path)],
                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    peak_kb, peak_one_kb, killed = 0, 0, None
    while p.poll() is None:
        try:
            kb, one_kb = _tree_rss_kb(p.pid)
        except Exception:  # noqa: BLE001
            kb = one_kb = 0
        peak_kb, peak_one_kb = max(peak_kb, kb), max(peak_one_kb, one_kb)
        if kb > cap_gb * 1024 * 1024:
            killed = f"memory cap: tree RSS {kb / 1024 / 1024:.1f} GB > {cap_gb} GB"
        elif time.perf_counter() - t0 > timeout_s:
            killed = f"timeout after {timeout_s:.0f} s"
        if killed:
            os.killpg(p.pid, 9)
            p.wait()
            break
        time.sleep(0.2)
    log.close()
    wall = time.perf_counter() - t0
    out = {"process_wall_s": round(wall, 2), "tree_peak_rss_mb_polled": round(peak_kb / 1024, 1),
           "largest_process_rss_mb_polled": round(peak_one_kb / 1024, 1), "returncode": p.returncode}
    if killed:
        out["killed"] = killed
    if res_path.is_file():
        out.update(json.loads(res_path.read_text()))
    elif not killed:
        tail = (workdir / f"log-{kind}.txt").read_text()[-3000:]
        out["error"] = f"child failed (rc {p.returncode}): {tail}"
    return out


def generate(source: str, root: Path, units: int | None, images: int | None, media: Path, args) -> dict:
    import scale_layouts as L

    if source == "aist":
        return L.write_aist(root, units, media, seed=args.seed)
    if source == "interhand":
        if args.interhand_generator == "tools":
            return _generate_interhand_tools(root, units, images, args)
        return L.write_interhand(root, units=units, images=images, seed=args.seed)
    if source == "posetrack":
        return L.write_posetrack(root, units, seed=args.seed, fmt=args.posetrack_format)
    if source == "mars":
        return L.write_mars(root, units, seed=args.seed)
    raise ValueError(source)


def _generate_interhand_tools(root: Path, units, images, args) -> dict:
    """The other engineer's ``tools/gen_interhand_annotations.write_interhand_annotations(root, n_images)``,
    plus placeholder images for every file name of its _data.json when it writes none."""
    import scale_layouts as L
    from gen_interhand_annotations import write_interhand_annotations

    if images is None:
        d = L.interhand_design(args.seed)
        images = int(round(units / len(d.capture) * L.IH_IMAGES))
    t0 = time.perf_counter()
    info = write_interhand_annotations(root, images, image_files=10**9)  # every unit's (empty) image files
    if not (Path(root) / "images").is_dir():
        data = json.loads((Path(root) / "annotations/train/InterHand2.6M_train_data.json").read_text())
        paths = [Path(root) / "images" / "train" / im["file_name"] for im in data["images"]]
        del data
        for d in {p.parent for p in paths}:
            d.mkdir(parents=True, exist_ok=True)
        L.LinkPool(L.placeholder_jpeg(L.IH_W, L.IH_H), L._pool_dir(root), ".jpg").link_all(map(str, paths))
    out = {"source": "interhand", "generator": "tools/gen_interhand_annotations.py", "images": images,
           "gen_s": round(time.perf_counter() - t0, 2)}
    if isinstance(info, dict):
        out.update({k: (len(v) if isinstance(v, (list, tuple)) else str(v) if isinstance(v, Path) else v)
                    for k, v in info.items()})  # "units": their list of unit names -> a count
    out["gen_s"] = round(time.perf_counter() - t0, 2)
    return out


def _rm(path: Path) -> float:
    t = time.perf_counter()
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=False)
    return round(time.perf_counter() - t, 2)


def measure(source: str, label: str, units: int | None, images: int | None, args, workdir: Path, media: Path) -> dict:
    kdir = workdir / f"{source}-{label}"
    _rm(kdir)
    _rm(kdir.parent / f"{kdir.name}-placeholders")
    kdir.mkdir(parents=True)
    root = kdir / "data"
    row: dict = {"label": label, "git_before_gen": git_state()}
    print(f"[{source} {label}] generating ...", file=sys.stderr, flush=True)
    gen = run_child("gen", {"source": source, "root": str(root), "units": units, "images": images,
                            "media": str(media), "args": {k: v for k, v in vars(args).items()}},
                    kdir, max(args.mem_cap_gb, 8.0), args.timeout_s)
    if gen.get("error") or gen.get("killed"):
        raise RuntimeError(f"generation failed: {gen.get('killed') or gen.get('error')}")
    row["gen"] = gen
    n_units = int(gen.get("units") or units or 1)
    ppu = args.pairs_per_unit or DEFAULT_PPU[source]
    split = args.split if args.split is not None else DEFAULT_SPLIT[source]
    # the plan runs as `pairgen build` does: --local plans in this process only; otherwise planning
    # processes up to --workers (0: the driver's cores). We stop before run_tasks, so Ray never starts.
    config = {"source": source, "root": str(root), "out": str(kdir / "out"), "num_pairs": int(ppu * n_units),
              "seed": 0, "local": args.plan_processes == 1, "workers": args.plan_processes, "split": split,
              "shard_size": args.shard_size, "silhouette": args.silhouette}
    row["config"] = config
    print(f"[{source} {label}] generated {n_units} units in {gen.get('gen_s')} s; planning ...", file=sys.stderr,
          flush=True)
    task = kdir / "first-task.pkl"
    profile = str(kdir / "profile-plan.txt") if args.profile else None
    row["git_plan"] = git_state()
    row["plan"] = run_child("driver", {"config": config, "task_out": str(task), "profile_out": profile,
                                       "trace_memory": args.trace_memory}, kdir,
                            args.mem_cap_gb, args.timeout_s)
    if profile and Path(profile).is_file():
        dest = workdir / f"profile-{source}-{label}.txt"
        shutil.copy(profile, dest)
        row["plan"]["profile"] = str(dest)
    print(f"[{source} {label}] plan: {_short(row['plan'])}", file=sys.stderr, flush=True)
    if not args.skip_worker and task.is_file():
        row["git_worker"] = git_state()
        row["worker"] = run_child("worker", {"config": config, "task_in": str(task)}, kdir, args.mem_cap_gb,
                                  args.timeout_s)
        print(f"[{source} {label}] worker: {_short(row['worker'])}", file=sys.stderr, flush=True)
    idx_dir = kdir / "annotation-index"
    if idx_dir.is_dir():
        row["annotation_index_bytes"] = sum(q.stat().st_size for q in idx_dir.rglob("*") if q.is_file())
    if not args.skip_resume and row["plan"].get("to_build_s") is not None:
        row["git_resume"] = git_state()
        row["resume"] = run_child("driver", {"config": config, "task_out": None}, kdir, args.mem_cap_gb,
                                  args.timeout_s)
        print(f"[{source} {label}] resume: {_short(row['resume'])}", file=sys.stderr, flush=True)
    if not args.keep:
        row["rm_s"] = _rm(root)
        _rm(kdir.parent / f"{kdir.name}-placeholders")
        _rm(kdir / "out")
    return row


def _short(r: dict) -> str:
    keys = ("to_build_s", "build_s", "peak_rss_mb", "tree_peak_rss_mb_polled", "tasks_to_build", "built", "killed",
            "error")
    return ", ".join(f"{k}={str(r[k])[:300]}" for k in keys if r.get(k) is not None)


def _gb(mb) -> str:
    return "-" if mb is None else f"{mb / 1024:.2f}"


def _growth(v, base) -> str:
    if v is None or not base:
        return ""
    return f" (x{v / base:.2f})"


def _largest_mb(plan: dict) -> float | None:
    """The largest single process of the plan: the driver (its VmHWM) or a planning process (polled)."""
    vals = [v for v in (plan.get("peak_rss_mb"), plan.get("largest_process_rss_mb_polled")) if v]
    return max(vals) if vals else None


def table(source: str, rows: list[dict]) -> str:
    head = ("K", "units", "images", "gen s", "plan s", "check s", "to build s", "driver GB", "tree GB", "largest process GB", "pairs",
            "shards", "worker build s", "worker GB", "built/planned", "resume s", "resume GB", "plan files", "commit")
    lines = [f"## {source}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = {}
    for r in rows:
        p, w, s = r.get("plan", {}), r.get("worker", {}), r.get("resume", {})
        g = r.get("gen", {})
        t = p.get("timers_s", {})
        vals = {"driver": p.get("peak_rss_mb"), "worker": w.get("peak_rss_mb"), "plan": t.get("plan"),
                "resume": s.get("to_build_s"), "largest": _largest_mb(p)}
        for k, v in vals.items():
            base.setdefault(k, v)
        shards = p.get("tasks_to_build")
        cells = [
            r["label"], str(g.get("units", "")), f"{g.get('images', '')}", str(g.get("gen_s", "")),
            (f"{t['plan']:.1f}{_growth(t['plan'], base['plan'])}" if t.get("plan") is not None else p.get("killed") or (p.get("error") or "-")[:60]),
            f"{t.get('check', 0):.1f}", f"{p['to_build_s']:.1f}" if p.get("to_build_s") is not None else "-",
            _gb(p.get("peak_rss_mb")) + _growth(p.get("peak_rss_mb"), base["driver"]),
            _gb(p.get("tree_peak_rss_mb_polled")), _gb(_largest_mb(p)) + _growth(_largest_mb(p), base["largest"]),
            str(p.get("total_pairs", "-")), str(shards if shards is not None else "-"),
            f"{w['build_s']:.1f}" if w.get("build_s") is not None else (w.get("killed") or (w.get("error") or "-")[:60]),
            _gb(w.get("peak_rss_mb")) + _growth(w.get("peak_rss_mb"), base["worker"]),
            f"{w.get('built', '-')}/{w.get('planned', '-')}",
            f"{s['to_build_s']:.1f}" if s.get("to_build_s") is not None else (s.get("killed") or (s.get("error") or "-")[:60]),
            _gb(s.get("peak_rss_mb")),
            ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in (s.get("plan_files") or p.get("plan_files") or {}).items()),
            r.get("git_plan", {}).get("commit", "") + ("+dirty" if r.get("git_plan", {}).get("status_pairgen") else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Driver-side planning time by part (s; in the driver process only):")
    for r in rows:
        p = r.get("plan", {})
        t = p.get("timers_s", {})
        c = p.get("calls", {})
        parts = ", ".join(f"{k} {v:.1f} ({c.get(k, '')} calls)" for k, v in t.items())
        lines.append(f"- K={r['label']}: {parts}; cpu {p.get('cpu_s')} s (+children {p.get('children_cpu_s')} s)")
        q = r.get("resume", {})
        if q:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in q.get("timers_s", {}).items())
            lines.append(f"  resume: {parts or 'no timed part'}; to build {q.get('to_build_s')} s, "
                         f"cpu {q.get('cpu_s')} s (+children {q.get('children_cpu_s')} s)")
        m = p.get("memory_at_peak")
        if m:
            lines.append(f"  driver memory (tracemalloc, Python allocations only): traced peak {m['traced_peak_mb']} MB; "
                         f"at the highest snapshot ({m['snapshot_mb']} MB):")
            lines.extend(f"    - {t}" for t in m["top"])
    lines.append("")
    lines.append("Worker skips (first shard):")
    for r in rows:
        w = r.get("worker", {})
        if w:
            lines.append(f"- K={r['label']}: built {w.get('built')} of {w.get('planned')} over {w.get('units')} units; "
                         f"skipped {w.get('skipped')}; make_worker {w.get('make_worker_s')} s, rss after imports "
                         f"{w.get('rss_after_imports_mb')} MB, after make_worker {w.get('rss_after_make_worker_mb')} MB")
    return "\n".join(lines)


def goals(source: str, rows: list[dict]) -> list[str]:
    out = []
    ok = [r for r in rows if r.get("plan", {}).get("to_build_s") is not None]
    if not rows:
        return out
    last = rows[-1]
    p, w, s = last.get("plan", {}), last.get("worker", {}), last.get("resume", {})
    frac = last.get("fraction")
    where = f"K={last['label']}" + (" (full size)" if frac == 1 else "")

    def check(name, value, limit, unit):
        if value is None:
            return f"- {name} at {where}: not measured ({p.get('killed') or p.get('error') or w.get('killed') or w.get('error') or 'n/a'})"
        return f"- {name} at {where}: {value:.2f} {unit} (goal <= {limit}) -> {'MET' if value <= limit else 'NOT MET'}"

    out.append(check("worker peak RSS", (w.get("peak_rss_mb") or 0) / 1024 or None, GOALS["worker_gb"], "GB"))
    out.append(check("driver peak RSS (driver process)", (p.get("peak_rss_mb") or 0) / 1024 or None, GOALS["driver_gb"], "GB"))
    out.append(check("driver peak RSS (driver + its planning processes, polled sum)",
                     (p.get("tree_peak_rss_mb_polled") or 0) / 1024 or None, GOALS["driver_gb"], "GB"))
    if source in ("aist", "interhand"):
        out.append(check("plan time", p.get("timers_s", {}).get("plan"), GOALS["plan_s"], "s"))
    out.append(check("resume: time to start building", s.get("to_build_s"), GOALS["resume_s"], "s"))
    if len(ok) >= 2:
        for key, name, field in (("worker", "worker", "peak_rss_mb"), ("plan", "driver process", "peak_rss_mb")):
            a, b = ok[0].get(key, {}).get(field), ok[-1].get(key, {}).get(field)
            if a and b:
                out.append(f"- {name} RSS growth K={ok[0]['label']} -> K={ok[-1]['label']}: x{b / a:.2f} "
                           f"(goal: flat within {GOALS['flat']:.0%}) -> {'MET' if b / a <= 1 + GOALS['flat'] else 'NOT MET'}")
        # the tree's sum also counts the planning processes, whose number follows the cores and the
        # units (none for <= 2 batches of units): the like-for-like figure is its largest process
        steps = ", ".join(f"K={r['label']} {_gb(_largest_mb(r.get('plan', {})))}" for r in ok)
        out.append(f"- largest process of the plan (the driver, or a planning process: each holds a reader; not a "
                   f"goal of its own): {steps} GB")
        a, b = (r.get("plan", {}).get("tree_peak_rss_mb_polled") for r in (ok[0], ok[-1]))
        if a and b:
            out.append(f"- driver + planning processes (summed) K={ok[0]['label']} -> K={ok[-1]['label']}: x{b / a:.2f} "
                       "(not like for like: the number of planning processes follows the units and the cores)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=("aist", "interhand", "posetrack", "mars"))
    ap.add_argument("--report", default=None,
                    help="print the table of earlier --json-out files (comma-separated, one source) and exit")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--units", help="comma-separated unit counts K")
    g.add_argument("--images", help="interhand: comma-separated image counts (the full 5 fps train is 1361062)")
    g.add_argument("--fractions", default="0.01,0.1", help="fractions of the full size (default 0.01,0.1)")
    ap.add_argument("--pairs-per-unit", type=int, default=None,
                    help="num_pairs = P x units (default aist/interhand 200, posetrack 100, mars 50)")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--plan-processes", type=int, default=0,
                    help="the build's --workers while planning (0: all cores, as pairgen build; 1: --local, "
                         "planned in the driver process alone, where the per-part timers see everything)")
    ap.add_argument("--silhouette", default=None, help="the build's --silhouette (default: the source's)")
    ap.add_argument("--split", default=None, help="--split of the build (default: interhand train, others all)")
    ap.add_argument("--workdir", default=None, help="where data is generated (default /tmp/bench_scale)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-cap-gb", type=float, default=12.0, help="kill a child whose process tree exceeds this")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="kill a child running longer")
    ap.add_argument("--skip-worker", action="store_true")
    ap.add_argument("--skip-resume", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile the plan run (slows it; report the profile)")
    ap.add_argument("--trace-memory", action="store_true",
                    help="tracemalloc in the plan's driver: report what held most at its peak (slows it)")
    ap.add_argument("--code", default=None,
                    help="measure the pairgen in this directory instead of the working tree (e.g. `git archive "
                         "HEAD` unpacked there, with the commit in DIR/.bench_scale_commit)")
    ap.add_argument("--posetrack-format", default="pt18", choices=("pt18", "pt21"))
    ap.add_argument("--interhand-generator", default="own", choices=("own", "tools"),
                    help="own: tools/scale_layouts.py; tools: tools/gen_interhand_annotations.py")
    args = ap.parse_args(argv)

    if args.report:
        rows = []
        for f in args.report.split(","):
            d = json.loads(Path(f).read_text())
            rows += d["rows"]
        src = d["source"]
        print(table(src, rows) + "\n\nGoals (largest K measured):\n" + "\n".join(goals(src, rows)))
        return 0
    if not args.source:
        ap.error("--source is required")
    import scale_layouts as L

    global CODE
    if args.code:
        CODE = Path(args.code).resolve()
        os.environ["BENCH_SCALE_CODE"] = str(CODE)
    workdir = Path(args.workdir or "/tmp/bench_scale").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    media = workdir / "media"
    full = L.full_units(args.source, args.seed)
    sizes: list[tuple[str, int | None, int | None, float | None]] = []
    if args.units:
        for k in args.units.split(","):
            sizes.append((k.strip(), int(k), None, int(k) / full))
    elif args.images:
        if args.source != "interhand":
            ap.error("--images is for --source interhand")
        for n in args.images.split(","):
            sizes.append((f"{int(n)}img", None, int(n), int(n) / L.IH_IMAGES))
    else:
        for f in args.fractions.split(","):
            fr = float(f)
            sizes.append((f"{fr:g}", max(1, int(round(fr * full))), None, fr))
    rows = []
    started = time.time()
    result = {"source": args.source, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "full_units": full,
              "args": vars(args), "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))},
              "rows": rows}
    try:
        for label, units, images, frac in sizes:
            row = measure(args.source, label, units, images, args, workdir, media)
            row["fraction"] = frac
            rows.append(row)
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(result, indent=1, default=str))
    finally:
        if not args.keep:
            _rm(media)
    result["seconds"] = round(time.time() - started, 1)
    result["goals"] = goals(args.source, rows)
    text = table(args.source, rows) + "\n\nGoals (largest K measured):\n" + "\n".join(result["goals"])
    result["table"] = text
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1, default=str))
    return 0


def _child_main(kind: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    fn = {"driver": child_driver, "worker": child_worker, "gen": child_gen}[kind]
    out = fn(spec)
    Path(spec["result_out"]).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "_child":
        sys.exit(_child_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
