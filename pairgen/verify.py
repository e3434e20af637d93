"""`pairgen verify DIR`: passing means the build is complete and intact.

- complete: every source has its build config and plan, every planned shard is finished, no shard
  failed in the last run, nothing is left in progress;
- intact: each finished shard's tar and manifest have the size and SHA-256 its stats recorded,
  every tar member is a plain ``<key>.<suffix>`` of that shard, every sample is complete and
  decodes, its JSON agrees with its manifest row, the manifest rows are the shard's samples in
  order, and the stats count them;
- nothing else: files pairgen does not write are reported as stray.

A re-run of the build command repairs everything reported here except stray files (not ours).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile


from manifests import layout
from manifests.sample import (ALL_SUFFIXES, KEY_RE, decode_sample, group_samples, iter_tar_members,
                              split_member_name)
from manifests.schema import COLUMN_NAMES, SCHEMA, manifest_row
from manifests.storage import Store, StorageError
from pairgen.config import BuildConfig
from pairgen.writer import shard_problems


class _HashingReader:
    """A binary stream that hashes what is read through it."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data

    def finish(self) -> str:
        """Hash the rest (the end-of-archive padding the tar reader stops before)."""
        while self.read(1 << 20):
            pass
        return self.h.hexdigest()


def _same(a, b) -> bool:
    """Manifest value vs JSON value: nulls and NaNs alike, floats to rounding."""
    a_null = a is None or (isinstance(a, float) and math.isnan(a))
    b_null = b is None or (isinstance(b, float) and math.isnan(b))
    if a_null or b_null:
        return a_null and b_null
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def _samples(stream, name: str, problems: list[str]):
    """(key, members) of a shard read from ``stream``, checking every member name."""
    bad = 0

    def checked():
        nonlocal bad
        for member, data in iter_tar_members(stream):
            key, suffix = split_member_name(member)
            if member != f"{key}.{suffix}" or not KEY_RE.match(key) or not key.startswith(f"{name}-") \
                    or suffix not in ALL_SUFFIXES:
                bad += 1
                if bad <= 3:
                    problems.append(f"{name}: member {member!r} is not a plain <key>.<suffix> of this shard")
            yield member, data

    yield from group_samples(checked())
    if bad > 3:
        problems.append(f"{name}: {bad} members in all are not plain sample names")


def _plan_tasks(store: Store, source: str, problems: list[str]) -> dict[str, str]:
    """{shard: digest of its planned task} from ``plan-<source>.parquet`` (empty if the build has none),
    read a row group at a time."""
    import pyarrow.parquet as pq

    from pairgen.plan import task_digest
    from pairgen.sources.base import ShardTask

    rel = layout.plan_tasks_rel(source)
    if store.stat(rel) is None:
        return {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = store.path(rel) if store.local else os.path.join(tmp, "plan.parquet")
            if not store.local:
                store.fs.get_file(store.path(rel), local)
            out: dict[str, str] = {}
            with pq.ParquetFile(local) as f:
                has_digest = "digest" in f.schema_arrow.names
                for g in range(f.num_row_groups):
                    t = f.read_row_group(g, columns=["index", "planned", "digest" if has_digest else "payload"])
                    for i, n, x in zip(*(t.column(c).to_pylist() for c in t.column_names)):
                        out[layout.shard_name(source, int(i))] = x if has_digest else task_digest(
                            ShardTask(source, int(i), int(n), json.loads(x)))
            return out
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        problems.append(f"{rel}: unreadable plan ({type(exc).__name__}); re-run the build")
        return {}


def _check_shard(store: Store, name: str, planned: int | None, identity: str | None, problems: list[str],
                 report: dict, task: str | None = None) -> None:
    try:
        stats = json.loads(store.read_bytes(layout.stats_rel(name)))
        if not isinstance(stats, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        problems.append(f"{name}: unreadable stats ({type(exc).__name__}: {exc})")
        return
    keys, metas = [], []
    digest = None
    try:
        with store.open(layout.tar_rel(name), "rb", **({"buffering": 1 << 20} if store.local else {})) as f:
            stream = _HashingReader(f)
            for key, members in _samples(stream, name, problems):
                keys.append(key)
                try:
                    s = decode_sample(key, members)
                except ValueError as exc:
                    problems.append(f"{name}: {exc}")
                    metas.append(None)
                    continue
                metas.append(s.meta)
                if s.meta.get("key") != key:
                    problems.append(f"{name}/{key}: JSON key {s.meta.get('key')!r} differs")
                if (s.target_depth is None) != (s.reference_depth is None):
                    problems.append(f"{name}/{key}: depth for one image only")
            digest = stream.finish()
    except FileNotFoundError:
        pass  # reported by shard_problems: "tar missing"
    except Exception as exc:  # noqa: BLE001 - a damaged tar raises many types
        problems.append(f"{name}: unreadable tar ({type(exc).__name__}: {exc})")
    problems.extend(f"{name}: {p}" for p in shard_problems(store, name, deep=True, tar_sha256=digest,
                                                                    identity=identity, task=task))
    report["samples"] += len(keys)
    if len(set(keys)) != len(keys):
        problems.append(f"{name}: duplicate keys (non-adjacent members?)")
    if stats.get("count") != len(keys) and digest is not None:
        problems.append(f"{name}: stats count {stats.get('count')} != {len(keys)} samples")
    if planned is not None and stats.get("planned") not in (None, planned):
        problems.append(f"{name}: stats say {stats.get('planned')} pairs planned, the plan {planned}")
    skipped = stats.get("skipped") if isinstance(stats.get("skipped"), dict) else {}
    if "identity" in stats and isinstance(stats.get("count"), int) and isinstance(stats.get("planned"), int) \
            and stats["count"] + sum(skipped.values()) != stats["planned"]:  # stats of this version count every pair
        problems.append(f"{name}: {stats['count']} built + {sum(skipped.values())} skipped != "
                        f"{stats['planned']} planned (a planned pair is unaccounted for)")
    try:
        table = store.read_parquet(layout.manifest_rel(name))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several error types
        problems.append(f"{name}: unreadable manifest ({type(exc).__name__})")
        return
    report["manifest_rows"] += table.num_rows
    missing_cols = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing_cols:
        problems.append(f"{name}: manifest lacks columns {missing_cols}")
        return
    rows = table.to_pylist()
    if [r["key"] for r in rows] != keys:
        problems.append(f"{name}: manifest rows ({len(rows)}) != shard samples ({len(keys)}) or order differs")
        return
    differ = 0
    for row, meta in zip(rows, metas):
        if meta is None:
            continue
        expected = manifest_row(meta)
        cols = [c for c in COLUMN_NAMES if not _same(row[c], expected[c])]
        if cols:
            differ += 1
            if differ <= 3:
                problems.append(f"{name}/{row['key']}: JSON disagrees with its manifest row on {', '.join(cols[:5])}")
    if differ > 3:
        problems.append(f"{name}: {differ} samples in all disagree with their manifest rows")


def _read_json(store: Store, rel: str, what: str, problems: list[str]):
    try:
        return json.loads(store.read_bytes(rel))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{rel}: unreadable {what} ({type(exc).__name__})")
        return None


def verify(directory: str, storage_options: dict | None = None) -> dict:
    """``directory``: a local path or an fsspec URL (``s3://bucket/prefix``)."""
    problems: list[str] = []
    report = {"dir": str(directory), "sources": [], "planned_shards": 0, "planned_pairs": 0, "shards": 0,
              "samples": 0, "manifest_rows": 0, "ok": False, "problems": problems}
    try:
        store = Store(directory, storage_options)
        report["dir"] = store.url
        if not store.isdir():
            problems.append(f"{store.url}: not a directory (or an empty prefix)")
            return report
    except StorageError as exc:
        problems.append(str(exc))
        return report
    except Exception as exc:  # noqa: BLE001 - the storage service's own errors
        from manifests.storage import describe_error

        problems.append(f"{directory}: cannot read ({describe_error(exc)})")
        return report
    sources = layout.build_configs(store)
    report["sources"] = sources
    if not sources:
        problems.append("no build config (build-<source>.json): not a pairgen output, or its config was lost")
    planned: dict[str, int] = {}
    planned_known: set[str] = set()
    identities: dict[str, str] = {}
    task_digests: dict[str, str] = {}
    for src in sources:
        cfg = _read_json(store, layout.config_rel(src), "build config", problems)
        if cfg is None:
            continue
        try:
            identities[src] = BuildConfig.from_json(cfg).identity_digest()
        except (TypeError, AttributeError, ValueError) as exc:
            problems.append(f"build-{src}.json: not a build config ({type(exc).__name__})")
        plan = _read_json(store, layout.plan_rel(src), "plan", problems)
        if not isinstance(plan, dict) or not isinstance(plan.get("shards"), dict):
            problems.append(f"{src}: no plan (plan-{src}.json): the build stopped before it started "
                            "building; re-run it")
            continue
        planned.update(plan["shards"])
        planned_known.add(src)
        task_digests.update(_plan_tasks(store, src, problems))
        report["planned_pairs"] += int(plan.get("pairs", sum(plan["shards"].values())))
        failed = _read_json(store, layout.failures_rel(src), "failures file", problems)
        if failed is not None:
            n = len(failed.get("failed", [])) if isinstance(failed, dict) else "?"
            problems.append(f"{src}: {n} shard(s) failed in the last run (failures-{src}.json); re-run the build")
    report["planned_shards"] = len(planned)

    # every file is ours, in its place, and finished
    tars, finished = set(), set()
    for n in store.listdir():
        if layout.is_shard_file(n):
            tars.add(n[:-4])
        elif layout.is_partial_file(n) or n.startswith(layout.PROBE_PREFIX):
            problems.append(f"leftover in-progress file {n} (re-run the build to resume)")
        elif n in (layout.MANIFEST_DIR, layout.STATS_DIR, layout.TMP_DIR) and store.isdir(n):
            continue
        elif not layout.is_record_file(n) and n != layout.LOCK_FILE:
            problems.append(f"stray file {n} (pairgen does not write it)")
    for sub, suffix in ((layout.MANIFEST_DIR, ".parquet"), (layout.STATS_DIR, ".json")):
        for n in store.listdir(sub):
            if layout.is_shard_file(n, suffix):
                if sub == layout.STATS_DIR:
                    finished.add(n[: -len(suffix)])
            elif layout.PARTIAL_RE.match(n):
                problems.append(f"leftover in-progress file {sub}/{n} (re-run the build to resume)")
            else:
                problems.append(f"stray file {sub}/{n} (pairgen does not write it)")
    for n in store.listdir(layout.TMP_DIR):
        problems.append(f"leftover in-progress file {layout.TMP_DIR}/{n} (re-run the build to resume)")

    for name in sorted(set(planned) - finished):
        state = "unfinished (no stats file)" if name in tars else "missing"
        problems.append(f"{name}: planned shard {state} ({planned[name]} pairs planned); re-run the build")
    for name in sorted((tars | finished) - set(planned)):
        src = layout.SHARD_RE.match(name).group("source")
        if src in planned_known:
            problems.append(f"{name}: not in the {src} build's plan (stray shard)")
        elif src not in sources:
            problems.append(f"{name}: shard of a source with no build config (build-{src}.json)")
    if not tars and not finished and not planned:
        problems.append("no shards found")
    for name in sorted(finished):
        report["shards"] += 1
        _check_shard(store, name, planned.get(name), identities.get(layout.SHARD_RE.match(name).group("source")),
                     problems, report, task_digests.get(name))
    report["ok"] = not problems
    return report
