"""The build driver: validate, plan, skip finished shards, distribute, record failures.

    source.plan() -> [ShardTask] -> distributor -> (worker: source.build -> encode -> write_shard)
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
from pairgen.config import BuildConfig
from pairgen.encode import PairEncoder
from pairgen.sources import make_source
from pairgen.sources.base import ShardTask, SourceWorker
from pairgen.writer import OutputError, clean_partials, output_error, remove_strays, resume_state, write_shard


class BuildError(Exception):
    """Bad input or a refused output directory (reported as one line, exit code 2)."""


def prepare_output(config: BuildConfig, log=None) -> Path:
    """Check OUT is ours (or empty) and writable, and that a resumed build has the same settings.

    A directory is ours when it holds a pairgen build config, or nothing but in-progress files of
    one (a build killed while writing its config); any file that pairgen does not write, or
    shard-like files without a build config next to them, make it someone else's: refused.
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        foreign = [n for n in entries if not layout.is_ours(n)]
        for sub, suffix in ((layout.MANIFEST_DIR, ".parquet"), (layout.STATS_DIR, ".json")):
            if (out / sub).is_dir():  # pairgen never deletes a file it did not write
                foreign += [f"{sub}/{p.name}" for p in sorted((out / sub).iterdir())
                            if not (layout.is_shard_file(p.name, suffix) or layout.PARTIAL_RE.match(p.name))]
        if foreign:
            raise BuildError(f"--out {out}: not empty and not a pairgen output (found {', '.join(foreign[:3])})")
        if entries and not layout.build_configs(out) and not all(
                layout.is_partial_file(n) or n in (layout.TMP_DIR, layout.LOCK_FILE) for n in entries):
            raise BuildError(f"--out {out}: not empty and holds no pairgen build config (found "
                             f"{', '.join(entries[:3])}); refusing to overwrite it: use an empty or new --out")
        cfg_file = layout.config_path(out, config.source)
        if cfg_file.exists():
            try:
                previous = BuildConfig.from_json(json.loads(cfg_file.read_text())).output_identity()
            except (ValueError, TypeError, AttributeError) as exc:
                previous = None  # rewritten below; each finished shard's stats record its own settings
                (log or print)(f"pairgen: {cfg_file.name} is unreadable ({type(exc).__name__}); rewriting it and "
                               "checking each finished shard against the settings it was built with")
            current = config.output_identity()
            diff = [] if previous is None else sorted(k for k in current if previous.get(k) != current[k])
            if diff:
                raise BuildError(f"--out {out} holds a {config.source} build with other settings ({', '.join(diff)}); "
                                 "use the same settings to resume or a new --out")
    probe = out if out.is_dir() else next((p for p in out.absolute().parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise BuildError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise BuildError(f"--out {out}: not writable")
    return out


def _write_record(path: Path, obj) -> None:
    try:
        layout.write_json_atomic(path, obj)
    except OSError as exc:
        raise output_error(exc, exc.filename or path) from None


def build_shard(worker: SourceWorker, task: ShardTask, config: BuildConfig) -> dict:
    """Run one shard end to end inside a worker; returns its stats."""
    t0 = time.time()
    name = layout.shard_name(task.source, task.index)
    samples, rows = [], []
    encoder = PairEncoder(config.jpeg_quality)  # a crop shared by several pairs is encoded once

    def encode(record) -> None:  # each pair as the worker makes it (its arrays still in cache)
        key = sample_key(task.source, task.index, len(samples))
        members, row = encoder.encode(record, key, name)
        samples.append((key, members))
        rows.append(row)

    result = worker.build_into(task, encode)
    kinds = Counter(r["kind"] for r in rows)
    stats = {
        "source": task.source, "index": task.index, "planned": task.planned, "seed": config.seed,
        "kinds": dict(sorted(kinds.items())), "skipped": result.skipped, "skipped_units": result.skipped_units,
        "metrics": {k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()},
        "build_s": round(time.time() - t0, 4), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "identity": config.identity_digest(),  # the settings it was built with (BuildConfig.output_identity)
    }
    return write_shard(Path(config.out), name, samples, rows, stats)


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
    out = prepare_output(config, log)
    try:
        tasks = source.plan()  # real sources read annotations here: bad input is reported, not raised
    except ValueError as exc:
        raise BuildError(str(exc)) from exc
    if not tasks:
        raise BuildError(f"source {config.source}: nothing to build (no pairs could be planned)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = layout.lock_output(out)
    except layout.Busy as exc:
        raise BuildError(f"--out {out}: another pairgen build is writing into it ({exc}); "
                         "wait for it to end or stop it") from None
    except OSError as exc:
        raise output_error(exc, out) from None
    try:
        return _build(config, source, tasks, out, progress, log)
    finally:
        lock.close()


def _build(config: BuildConfig, source, tasks: list[ShardTask], out: Path, progress: bool, log) -> dict:
    _write_record(layout.config_path(out, config.source), config.to_json())
    names = [layout.shard_name(t.source, t.index) for t in tasks]
    _write_record(layout.plan_path(out, config.source),
                  {"source": config.source, "pairs": sum(t.planned for t in tasks),
                   "shards": {n: t.planned for n, t in zip(names, tasks)}})
    clean_partials(out)
    strays = remove_strays(out, config.source, names)
    if strays:
        log(f"pairgen: removed {len(strays)} shard(s) not in this build's plan: {', '.join(strays[:5])}")
    done, damaged = resume_state(out, names, deep=config.rehash, identity=config.identity_digest())
    if damaged:
        shown = "; ".join(f"{n} ({', '.join(p)})" for n, p in sorted(damaged.items())[:5])
        more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
        log(f"pairgen: rebuilding {len(damaged)} damaged finished shard(s): {shown}{more}")
    todo = [t for t, n in zip(tasks, names) if n not in done]

    from pairgen.distribute import run_tasks

    t0 = time.time()
    results, failures = run_tasks(todo, config, total_pairs=sum(t.planned for t in tasks),
                                  done_pairs=sum(t.planned for t, n in zip(tasks, names) if n in done),
                                  progress=progress)
    elapsed = time.time() - t0
    fail_file = layout.failures_path(out, config.source)
    if failures:
        _write_record(fail_file, {"failed": failures})
    else:
        fail_file.unlink(missing_ok=True)
    built = sum(r["count"] for r in results)
    skipped = Counter()
    for r in results:
        skipped.update(r.get("skipped", {}))
    return {"shards_total": len(tasks), "shards_skipped_finished": len(tasks) - len(todo),
            "shards_built": len(results), "shards_empty": sum(r["count"] == 0 for r in results),
            "shards_repaired": sorted(damaged), "shards_failed": [f["shard"] for f in failures],
            "failures": failures, "pairs_built": built, "seconds": round(elapsed, 2),
            "pairs_per_s": round(built / elapsed, 2) if elapsed > 0 else None, "skipped": dict(skipped),
            "worker_peak_rss_mb": max((r.get("_worker_peak_rss_mb", 0) for r in results), default=None)}
