"""The build driver: validate, plan, skip finished shards, distribute, record failures.

    source.plan() -> OUT/plan-<source>.parquet (streamed; see pairgen.plan) -> distributor, a task
    at a time -> (worker: source.build -> encode -> stage -> publish)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from manifests import layout
from manifests.sample import sample_key
from manifests.storage import Store, StorageError, parse_options
from pairgen.config import BuildConfig
from pairgen.encode import PairEncoder
from pairgen.plan import Plan, load_plan, task_digest, write_plan
from pairgen.sources import make_source
from pairgen.sources.base import ShardTask, SourceWorker
from pairgen.writer import (TIMING_METRICS, Staged, clean_partials, output_error, remove_strays, resume_state,
                            stage_shard)


class BuildError(Exception):
    """Bad input or a refused output directory (reported as one line, exit code 2)."""


def open_output(config: BuildConfig) -> Store:
    """The build's Store for ``--out`` (a local path, made absolute, or an fsspec URL); bad
    storage input is a BuildError."""
    try:
        return Store(config.out, parse_options(config.storage_options))
    except StorageError as exc:
        raise BuildError(f"--out {exc}") from None


def prepare_output(config: BuildConfig, store: Store, log=None) -> Store:
    """Check OUT is ours (or empty) and writable, and that a resumed build has the same settings.

    A directory (or prefix) is ours when it holds a pairgen build config, or nothing but
    in-progress files of one (a build killed while writing its config); any file that pairgen
    does not write, or shard-like files without a build config next to them, make it someone
    else's: refused. Object storage is probed with a write (bucket, credentials, endpoint).
    """
    out = store.url
    if store.local and os.path.exists(store.root) and not os.path.isdir(store.root):
        raise BuildError(f"--out {out}: exists and is not a directory")
    if not store.local:
        try:
            store.check_writable()
        except StorageError as exc:
            raise BuildError(f"--out {exc}") from None
    entries = store.listdir()
    if entries:
        foreign = [n for n in entries if not layout.is_ours(n)]
        for sub, suffix in ((layout.MANIFEST_DIR, ".parquet"), (layout.STATS_DIR, ".json")):
            if sub in entries:  # pairgen never deletes a file it did not write
                foreign += [f"{sub}/{n}" for n in store.listdir(sub)
                            if not (layout.is_shard_file(n, suffix) or layout.PARTIAL_RE.match(n))]
        if foreign:
            raise BuildError(f"--out {out}: not empty and not a pairgen output (found {', '.join(foreign[:3])})")
        if not layout.build_configs(store) and not all(
                layout.is_partial_file(n) or n in (layout.TMP_DIR, layout.LOCK_FILE) or n.startswith(layout.PROBE_PREFIX)
                for n in entries):
            raise BuildError(f"--out {out}: not empty and holds no pairgen build config (found "
                             f"{', '.join(entries[:3])}); refusing to overwrite it: use an empty or new --out")
        rel = layout.config_rel(config.source)
        if rel in entries:
            try:
                previous = BuildConfig.from_json(json.loads(store.read_bytes(rel))).output_identity()
            except (ValueError, TypeError, AttributeError, OSError) as exc:
                previous = None  # rewritten below; each finished shard's stats record its own settings
                (log or print)(f"pairgen: {rel} is unreadable ({type(exc).__name__}); rewriting it and "
                               "checking each finished shard against the settings it was built with")
            current = config.output_identity()
            diff = [] if previous is None else sorted(k for k in current if previous.get(k) != current[k])
            if diff:
                raise BuildError(f"--out {out} holds a {config.source} build with other settings ({', '.join(diff)}); "
                                 "use the same settings to resume or a new --out")
    if store.local:
        probe = Path(store.root)
        probe = probe if probe.is_dir() else next((p for p in probe.parents if p.exists()), Path("/"))
        if not probe.is_dir():
            raise BuildError(f"--out {out}: {probe} is not a directory")
        if not os.access(probe, os.W_OK):
            raise BuildError(f"--out {out}: not writable")
    return store


def _write_record(store: Store, rel: str, obj) -> None:
    try:
        store.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
    except Exception as exc:  # noqa: BLE001 - object stores raise many types; all stop the build
        raise output_error(exc, store, rel) from None


def build_shard(worker: SourceWorker, task: ShardTask, config: BuildConfig, store: Store,
                on_pair=None) -> tuple[Staged, dict]:
    """Run one shard inside a worker up to its staged files (publish them with
    :func:`pairgen.writer.publish`); returns (staged, timings). ``on_pair(n)`` is told each pair."""
    t0 = time.time()
    name = layout.shard_name(task.source, task.index)
    samples, rows = [], []
    encoder = PairEncoder(config.jpeg_quality)  # a crop shared by several pairs is encoded once

    def encode(record) -> None:  # each pair as the worker makes it (its arrays still in cache)
        key = sample_key(task.source, task.index, len(samples))
        members, row = encoder.encode(record, key, name)
        samples.append((key, members))
        rows.append(row)
        if on_pair is not None:
            on_pair(len(samples))

    result = worker.build_into(task, encode)
    kinds = Counter(r["kind"] for r in rows)
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()}
    timings = {k: metrics.pop(k) for k in TIMING_METRICS if k in metrics}
    stats = {  # deterministic: the same build writes the same bytes (timings go to the driver only)
        "source": task.source, "index": task.index, "planned": task.planned, "seed": config.seed,
        "kinds": dict(sorted(kinds.items())), "skipped": result.skipped, "skipped_units": result.skipped_units,
        "metrics": metrics,
        "identity": config.identity_digest(),  # the settings it was built with (BuildConfig.output_identity)
        "task": task_digest(task),  # what it was planned to hold
    }
    timings["build_s"] = round(time.time() - t0, 4)
    t1 = time.time()
    staged = stage_shard(store, name, samples, rows, stats)
    timings["stage_s"] = round(time.time() - t1, 4)
    return staged, timings


def run_build(config: BuildConfig, progress: bool = True, log=None) -> dict:
    """Build (or resume) everything; returns a summary. Raises BuildError on bad input and
    OutputError when the output cannot be written (finished shards are kept)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        config.validate()
        source = make_source(config)
        source.check()
    except ValueError as exc:
        raise BuildError(str(exc)) from exc
    store = open_output(config)
    config.out = store.url  # resolved on the driver (absolute path or URL) before any worker starts
    prepare_output(config, store, log)
    lock, created = None, False
    if store.local:  # held from before the plan is written (it is staged in OUT/.tmp) to the end
        try:
            created = not os.path.exists(store.root)
            store.makedirs()
            lock = layout.lock_output(Path(store.root))
        except layout.Busy as exc:
            raise BuildError(f"--out {store.url}: another pairgen build is writing into it ({exc}); "
                             "wait for it to end or stop it") from None
        except OSError as exc:
            raise output_error(exc, store, "") from None
    plan = None
    try:
        plan, reused = _plan(config, source, store, log)
        return _build(config, plan, store, progress, log, reused)
    except (BuildError, KeyboardInterrupt):
        if created and plan is None:  # refused or stopped before anything was written: no empty OUT left
            _remove_empty_out(store)
        raise
    finally:
        if plan is not None:
            plan.close()
        if lock is not None:
            lock.close()


def _plan(config: BuildConfig, source, store: Store, log) -> tuple[Plan, bool]:
    """The saved plan of a build with these settings (unless --replan), else a new one written to
    ``OUT/plan-<source>.parquet`` as it is made; (plan, reused)."""
    rel = layout.plan_tasks_rel(config.source)
    if not config.replan:
        try:
            plan = load_plan(store, config)
        except Exception as exc:  # noqa: BLE001 - a damaged plan is planned again
            log(f"pairgen: {rel} is unreadable ({type(exc).__name__}); planning again")
            plan = None
        if plan is not None and len(plan):
            log(f"pairgen: reusing the plan in {rel} ({len(plan)} shards, {plan.pairs} pairs; "
                "--replan to plan again)")
            return plan, True
    try:
        plan = write_plan(store, config, source.plan())  # real sources read annotations here
    except ValueError as exc:  # bad input met while planning: reported, not raised
        raise BuildError(str(exc)) from exc
    except OSError as exc:
        raise output_error(exc, store, rel) from None
    if not len(plan):
        raise BuildError(f"source {config.source}: nothing to build (no pairs could be planned)")
    return plan, False


def _remove_empty_out(store: Store) -> None:
    """Remove an OUT this run created, if it holds nothing but our lock and scratch folder."""
    root = Path(store.root)
    try:
        scratch = root / layout.TMP_DIR
        if scratch.is_dir() and not any(scratch.iterdir()):
            scratch.rmdir()
        if {p.name for p in root.iterdir()} <= {layout.LOCK_FILE}:
            (root / layout.LOCK_FILE).unlink(missing_ok=True)
            root.rmdir()
    except OSError:
        pass


def _build(config: BuildConfig, plan: Plan, store: Store, progress: bool, log, reused: bool = False) -> dict:
    _write_record(store, layout.config_rel(config.source), config.to_record())
    names = [plan.name(r) for r in plan.refs]
    _write_record(store, layout.plan_rel(config.source),
                  {"source": config.source, "pairs": plan.pairs,
                   "shards": {n: r.planned for n, r in zip(names, plan.refs)}})
    try:
        clean_partials(store)
        strays = remove_strays(store, config.source, names)
        if strays:
            log(f"pairgen: removed {len(strays)} shard(s) not in this build's plan: {', '.join(strays[:5])}")
        done, damaged = resume_state(store, names, deep=config.rehash, identity=config.identity_digest(),
                                     tasks={n: r.digest for n, r in zip(names, plan.refs)})
    except OSError as exc:
        raise output_error(exc, store, "") from None
    if damaged:
        shown = "; ".join(f"{n} ({', '.join(p)})" for n, p in sorted(damaged.items())[:5])
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        log(f"pairgen: rebuilding {len(damaged)} damaged finished shard(s): {shown}{more}")
    todo = plan.tasks([r for r, n in zip(plan.refs, names) if n not in done])

    from pairgen.distribute import run_tasks

    t0 = time.time()
    results, failures = run_tasks(todo, config, total_pairs=plan.pairs,
                                  done_pairs=sum(r.planned for r, n in zip(plan.refs, names) if n in done),
                                  progress=progress, log=log)
    elapsed = time.time() - t0
    fail_rel = layout.failures_rel(config.source)
    if failures:
        _write_record(store, fail_rel, {"failed": failures})
    else:
        try:
            store.remove(fail_rel)
        except OSError as exc:
            raise output_error(exc, store, fail_rel) from None
    built = sum(r["count"] for r in results)
    skipped = Counter()
    for r in results:
        skipped.update(r.get("skipped", {}))
    return {"shards_total": len(plan), "shards_skipped_finished": len(plan) - len(todo),
            "shards_built": len(results), "shards_empty": sum(r["count"] == 0 for r in results),
            "shards_repaired": sorted(damaged), "shards_failed": [f["shard"] for f in failures],
            "failures": failures, "pairs_built": built, "seconds": round(elapsed, 2),
            "pairs_per_s": round(built / elapsed, 2) if elapsed > 0 else None, "skipped": dict(skipped),
            "shards": results, "out": store.url,
            "worker_peak_rss_mb": max((r.get("_worker_peak_rss_mb", 0) for r in results), default=None)}
