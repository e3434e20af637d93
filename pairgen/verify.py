"""`pairgen verify DIR`: every shard readable, every sample complete and decodable, manifest rows
equal to shard members (same keys, same order), stats present and consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples
from manifests.schema import SCHEMA


def verify(directory: str) -> dict:
    out = Path(directory)
    problems: list[str] = []
    report = {"dir": str(out), "shards": 0, "samples": 0, "manifest_rows": 0, "ok": False, "problems": problems}
    if not out.is_dir():
        problems.append(f"{out}: not a directory")
        return report
    tars = sorted(p for p in out.glob("*.tar") if layout.SHARD_RE.match(p.stem))
    finished = set(layout.finished_shards(out))
    if not tars and not finished:
        problems.append("no shards found")
    for p in sorted((out / layout.TMP_DIR).glob("*")) if (out / layout.TMP_DIR).is_dir() else []:
        problems.append(f"leftover in-progress file {p.name} (re-run the build to resume)")
    for name in sorted(finished - {p.stem for p in tars}):
        problems.append(f"{name}: stats present but tar missing")
    for tar in tars:
        name = tar.stem
        report["shards"] += 1
        if name not in finished:
            problems.append(f"{name}: no stats file (unfinished shard)")
            continue
        try:
            stats = json.loads(layout.stats_path(out, name).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{name}: unreadable stats ({exc})")
            continue
        keys = []
        try:
            for key, members in iter_tar_samples(str(tar)):
                keys.append(key)
                try:
                    s = decode_sample(key, members)
                except ValueError as exc:
                    problems.append(f"{name}: {exc}")
                    continue
                if s.meta.get("key") != key:
                    problems.append(f"{name}/{key}: JSON key {s.meta.get('key')!r} differs")
                if (s.target_depth is None) != (s.reference_depth is None):
                    problems.append(f"{name}/{key}: depth for one image only")
        except Exception as exc:  # noqa: BLE001 - tarfile raises many types on a damaged file
            problems.append(f"{name}: unreadable tar ({type(exc).__name__}: {exc})")
            continue
        if len(set(keys)) != len(keys):
            problems.append(f"{name}: duplicate keys (non-adjacent members?)")
        report["samples"] += len(keys)
        mpath = layout.manifest_path(out, name)
        try:
            table = pq.read_table(mpath)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several error types
            problems.append(f"{name}: unreadable manifest ({exc})")
            continue
        report["manifest_rows"] += table.num_rows
        missing_cols = [f.name for f in SCHEMA if f.name not in table.column_names]
        if missing_cols:
            problems.append(f"{name}: manifest lacks columns {missing_cols}")
        mkeys = table.column("key").to_pylist() if "key" in table.column_names else []
        if mkeys != keys:
            problems.append(f"{name}: manifest rows ({len(mkeys)}) != shard samples ({len(keys)}) or order differs")
        if stats.get("count") != len(keys):
            problems.append(f"{name}: stats count {stats.get('count')} != {len(keys)} samples")
    report["ok"] = not problems
    return report
