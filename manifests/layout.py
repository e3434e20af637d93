"""The output directory layout of a build (what pairgen writes and the trainer reads).

    OUT/<source>-<shard:06d>.tar                 the WebDataset shard
    OUT/manifest/<source>-<shard:06d>.parquet    its manifest rows (one per sample, same order)
    OUT/stats/<source>-<shard:06d>.json          its stats; written LAST: the shard's completion marker
    OUT/build-<source>.json                      the resolved build configuration (written first)
    OUT/plan-<source>.json                       the planned shards and their pair counts
    OUT/plan-<source>.parquet                    every shard's task (reused by a resumed build)
    OUT/failures-<source>.json                   shards that failed in the last run (absent if none)
    OUT/.tmp/                                    in-progress files (never under a final name)
    OUT/.<name>.<pid>.partial                    an in-progress config/plan/failures file
    OUT/.lock                                    locked while a build writes into OUT

A shard counts as finished only when its stats file exists; the stats also record the size and
SHA-256 of the tar and of the manifest, so a resumed build (sizes, cheaply) and ``pairgen verify``
(checksums) can tell a finished shard from a damaged one. A directory is a pairgen output only
if it holds a build config (or nothing but in-progress files of one).
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
LOCK_FILE = ".lock"  # held (flock) by the build writing into OUT
PROBE_PREFIX = ".probe-"  # a short-lived file: does every cluster node see OUT?
RECORD_RE = re.compile(r"^(?P<what>build|plan|failures)-(?P<source>[a-z0-9_]+)\.json$")
PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.\d+\.partial$")


def shard_name(source: str, index: int) -> str:
    """``shard_name("aist", 3) == "aist-000003"`` (no extension)."""
    return f"{source}-{index:06d}"


# Paths relative to OUT ('/'-separated): what every storage backend is given (see manifests.storage).
def tar_rel(name: str) -> str:
    return f"{name}.tar"


def manifest_rel(name: str) -> str:
    return f"{MANIFEST_DIR}/{name}.parquet"


def stats_rel(name: str) -> str:
    return f"{STATS_DIR}/{name}.json"


def config_rel(source: str) -> str:
    return f"build-{source}.json"


def plan_rel(source: str) -> str:
    return f"plan-{source}.json"


def failures_rel(source: str) -> str:
    return f"failures-{source}.json"


# The same as local paths (OUT a local directory).
def tar_path(out: Path, name: str) -> Path:
    return Path(out) / tar_rel(name)


def manifest_path(out: Path, name: str) -> Path:
    return Path(out) / manifest_rel(name)


def stats_path(out: Path, name: str) -> Path:
    return Path(out) / stats_rel(name)


def config_path(out: Path, source: str) -> Path:
    return Path(out) / config_rel(source)


def failures_path(out: Path, source: str) -> Path:
    return Path(out) / failures_rel(source)


def plan_path(out: Path, source: str) -> Path:
    return Path(out) / plan_rel(source)


def is_shard_file(name: str, suffix: str = ".tar") -> bool:
    """``name`` is a shard's file name with ``suffix`` (``aist-000003.tar``)."""
    return name.endswith(suffix) and SHARD_RE.match(name[: -len(suffix)]) is not None


def plan_tasks_rel(source: str) -> str:
    """The whole plan (every shard's task), reused by a resumed build."""
    return f"plan-{source}.parquet"


PLAN_TASKS_RE = re.compile(r"^plan-(?P<source>[a-z0-9_]+)\.parquet$")


def is_record_file(name: str) -> bool:
    """A build config, plan or failures file (``build-aist.json``, ``plan-aist.parquet``)."""
    return RECORD_RE.match(name) is not None or PLAN_TASKS_RE.match(name) is not None


def is_partial_file(name: str) -> bool:
    """An in-progress file of :func:`write_atomic` for one of our top-level files."""
    m = PARTIAL_RE.match(name)
    return m is not None and (is_record_file(m.group("name")) or is_shard_file(m.group("name")))


def is_ours(name: str) -> bool:
    """A top-level entry of OUT that pairgen writes (a user's file under another name is not)."""
    return (name in (MANIFEST_DIR, STATS_DIR, TMP_DIR, LOCK_FILE) or is_shard_file(name) or is_record_file(name)
            or is_partial_file(name) or name.startswith(PROBE_PREFIX))


def as_store(out, options: dict | None = None):
    """OUT as a :class:`manifests.storage.Store` (a local path, any fsspec URL, or a Store)."""
    from manifests.storage import Store

    return out if isinstance(out, Store) else Store(out, options)


def build_configs(out, options: dict | None = None) -> list[str]:
    """Sources whose build config is in OUT, sorted."""
    return sorted(m.group("source") for n in as_store(out, options).listdir()
                  if (m := RECORD_RE.match(n)) and m.group("what") == "build")


def finished_shards(out, options: dict | None = None) -> list[str]:
    """Names of shards whose stats file (the completion marker) exists, sorted. ``out``: a local
    path, an fsspec URL (``s3://bucket/prefix``) or a Store."""
    return sorted(n[:-5] for n in as_store(out, options).listdir(STATS_DIR) if is_shard_file(n, ".json"))


def shard_urls(out, options: dict | None = None) -> list[str]:
    """The finished shards' tars (local paths or URLs), for ``webdataset.WebDataset``."""
    store = as_store(out, options)
    return [store.url_of(tar_rel(n)) for n in finished_shards(store)]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill: leave no half-written file behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class Busy(Exception):
    """Another process holds OUT's lock."""


def lock_output(out: Path):
    """Hold OUT's lock until the returned file is closed (or the process ends, however it ends).
    Raises :class:`Busy` naming the holder when another build is writing into OUT."""
    import fcntl
    import socket

    f = open(Path(out) / LOCK_FILE, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise Busy(holder) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f
