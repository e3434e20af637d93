"""The output directory layout of a build (what pairgen writes and the trainer reads).

    OUT/<source>-<shard:06d>.tar                 the WebDataset shard
    OUT/manifest/<source>-<shard:06d>.parquet    its manifest rows (one per sample, same order)
    OUT/stats/<source>-<shard:06d>.json          its stats; written LAST: the shard's completion marker
    OUT/build-<source>.json                      the resolved build configuration
    OUT/failures-<source>.json                   shards that failed in the last run (absent if none)
    OUT/.tmp/                                    in-progress files (never under a final name)

A shard counts as finished only when its stats file exists; resuming skips finished shards.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

SHARD_RE = re.compile(r"^(?P<source>[a-z0-9_]+)-(?P<index>\d{6})$")
MANIFEST_DIR = "manifest"
STATS_DIR = "stats"
TMP_DIR = ".tmp"


def shard_name(source: str, index: int) -> str:
    """``shard_name("aist", 3) == "aist-000003"`` (no extension)."""
    return f"{source}-{index:06d}"


def tar_path(out: Path, name: str) -> Path:
    return Path(out) / f"{name}.tar"


def manifest_path(out: Path, name: str) -> Path:
    return Path(out) / MANIFEST_DIR / f"{name}.parquet"


def stats_path(out: Path, name: str) -> Path:
    return Path(out) / STATS_DIR / f"{name}.json"


def config_path(out: Path, source: str) -> Path:
    return Path(out) / f"build-{source}.json"


def failures_path(out: Path, source: str) -> Path:
    return Path(out) / f"failures-{source}.json"


def finished_shards(out: Path) -> list[str]:
    """Names of shards whose stats file (the completion marker) exists, sorted."""
    d = Path(out) / STATS_DIR
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if SHARD_RE.match(p.stem))


def shard_urls(out: Path) -> list[str]:
    """Paths of the finished shards' tars, for ``webdataset.WebDataset``."""
    return [str(tar_path(out, n)) for n in finished_shards(out)]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
