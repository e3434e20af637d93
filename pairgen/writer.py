"""Shard writer: one finished shard = tar + Parquet manifest + stats JSON, each put in place atomically.

A shard is staged as local files (tar and manifest under ``OUT/.tmp/`` for a local OUT, in a
private scratch folder for object storage), then published through the build's
:class:`~manifests.storage.Store`: tar, manifest, then stats. The stats object is the completion
marker, so a shard killed at any point is either absent or rebuilt on resume. Stats are
deterministic (counts, what was skipped, sizes and SHA-256 of tar and manifest, the settings'
digest): the same build gives the same objects byte for byte; timings travel back to the driver
only. :func:`shard_problems` tells a finished shard from a damaged one (a resumed build rebuilds
it). Tar members carry fixed metadata (mtime 0, uid 0, mode 0644) and a fixed order, so equal
samples give equal tar bytes. A failed write (full disk, read-only or vanished output, a storage
service that refuses) raises :class:`OutputError`, which the distributor does not retry.
The writer knows no dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from manifests import layout
from manifests.sample import ALL_SUFFIXES
from manifests.schema import rows_to_table
from manifests.storage import Store, describe_error


class OutputError(Exception):
    """The output cannot be written (disk full, read-only, no permission, vanished): retrying the
    shard elsewhere cannot help, so the build stops; finished shards are kept and a re-run resumes."""


def output_error(exc: BaseException, store: Store, rel: str) -> OutputError:
    """One line: what could not be written, why, and how much space is left there."""
    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) and store.local else describe_error(exc)
    return OutputError(f"cannot write {store.url_of(rel)}: {reason} ({store.free_space()})")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_stream(f, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


_HEADER = bytearray(_member_info("", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
_HEADER[148:156] = b" " * 8  # the checksum is summed with its own field as spaces


def member_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header ``tarfile`` writes for a member with our fixed metadata (mtime 0,
    uid/gid 0, mode 0644, no user names), made from a template: only the name, size and checksum
    fields differ between members."""
    raw = name.encode("ascii", "surrogateescape") if name.isascii() else None
    if raw is None or len(raw) > 100 or size >= 8 ** 11:  # long names, huge members: tarfile's own code
        return _member_info(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(_HEADER)
    h[0:len(raw)] = raw
    h[124:136] = b"%011o\0" % size
    h[148:155] = b"%06o\0" % sum(h)
    return bytes(h)


def write_tar(path: Path, members) -> str:
    """A ustar archive of ``(name, bytes)`` members, byte for byte what ``tarfile`` (USTAR format,
    ``addfile`` with :func:`member_header`'s metadata) writes, without its per-member overhead.
    Returns the archive's SHA-256 (hex), computed as it is written."""
    n = 0
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for name, data in members:
            header = member_header(name, len(data))
            f.write(header)
            f.write(data)
            h.update(header)
            h.update(data)
            pad = -len(data) % tarfile.BLOCKSIZE
            if pad:
                f.write(bytes(pad))
                h.update(bytes(pad))
            n += tarfile.BLOCKSIZE + len(data) + pad
        n += 2 * tarfile.BLOCKSIZE  # end of archive: two zero blocks, then zeros to a whole record
        tail = bytes(2 * tarfile.BLOCKSIZE + (-n % tarfile.RECORDSIZE))
        f.write(tail)
        h.update(tail)
    return h.hexdigest()


def warm_up() -> None:
    """Load what the first shard of a process would otherwise pay for: pyarrow imports pandas
    (~0.2-0.3 s) the first time it builds an array from Python values. Called once per worker."""
    import pyarrow as pa

    pa.array([0])


TIMING_METRICS = ("decode_s",)  # per-shard metrics that are timings: reported, not written


@dataclass
class Staged:
    """A shard encoded to local files, ready to publish: its stats are final."""

    name: str
    tar: str
    manifest: str
    stats: dict


def stage_shard(store: Store, name: str, samples: list[tuple[str, dict[str, bytes]]], rows: list[dict],
                stats: dict) -> Staged:
    """Write the tar and manifest of ``name`` to local scratch files and complete its stats
    (count, sizes, SHA-256s). Raises :class:`OutputError` (nothing left behind) if that fails."""
    scratch = None
    order = {s: i for i, s in enumerate(ALL_SUFFIXES)}
    tar_tmp = man_tmp = None
    try:
        scratch = store.scratch(layout.TMP_DIR)
        tar_tmp = os.path.join(scratch, f"{name}.tar.{os.getpid()}.partial")
        tar_sha = write_tar(tar_tmp, ((f"{key}.{suffix}", members[suffix]) for key, members in samples
                                      for suffix in sorted(members, key=lambda s: (order.get(s, len(order)), s))))
        man_tmp = os.path.join(scratch, f"{name}.parquet.{os.getpid()}.partial")
        pq.write_table(rows_to_table(rows), man_tmp, compression="zstd")
        stats = dict(stats)
        stats.update(shard=layout.tar_rel(name), count=len(samples), tar_bytes=os.path.getsize(tar_tmp),
                     tar_sha256=tar_sha, manifest_bytes=os.path.getsize(man_tmp),
                     manifest_sha256=sha256_file(man_tmp))
    except OSError as exc:
        for f in (tar_tmp, man_tmp):
            _unlink_quietly(f)
        where = Store(scratch) if scratch else store  # object storage: the local scratch folder filled up
        final = layout.tar_rel(name) if man_tmp is None else layout.manifest_rel(name)
        raise output_error(exc, where, final if store.local else os.path.basename(tar_tmp or final)) from None
    return Staged(name, tar_tmp, man_tmp, stats)


def publish(store: Store, staged: Staged) -> None:
    """Put a staged shard in place: tar, manifest, then its stats (the completion marker).
    Raises :class:`OutputError` if the store refuses; the local files are removed either way."""
    rel = layout.tar_rel(staged.name)
    try:
        store.put_file(rel, staged.tar)
        rel = layout.manifest_rel(staged.name)
        store.put_file(rel, staged.manifest)
        rel = layout.stats_rel(staged.name)
        store.write_bytes(rel, stats_bytes(staged.stats))
    except Exception as exc:  # noqa: BLE001 - object stores raise many types; all stop the build
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise output_error(exc, store, rel) from None
    finally:
        _unlink_quietly(staged.tar)
        _unlink_quietly(staged.manifest)


def stats_bytes(stats: dict) -> bytes:
    return (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode()


def write_shard(store: Store, name: str, samples: list[tuple[str, dict[str, bytes]]], rows: list[dict],
                stats: dict) -> dict:
    """Stage and publish shard ``name``; returns its stats as written."""
    staged = stage_shard(store, name, samples, rows, stats)
    publish(store, staged)
    return staged.stats


def _unlink_quietly(path) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _read_stats(raw: bytes | None) -> dict | str:
    """Parsed stats, or the problem with them."""
    if raw is None:
        return "unreadable stats (missing)"
    try:
        stats = json.loads(raw)
    except ValueError as exc:
        return f"unreadable stats ({type(exc).__name__})"
    if not isinstance(stats, dict) or not isinstance(stats.get("count"), int):
        return "incomplete stats (no sample count)"
    return stats


def shard_problems(store: Store, name: str, deep: bool = False, tar_sha256: str | None = None,
                   identity: str | None = None, stats_raw: bytes | None | bool = False,
                   listings: dict | None = None, task: str | None = None) -> list[str]:
    """What is wrong with finished shard ``name`` (empty: intact), judged against its stats.

    Cheap by default (a resumed build checks every finished shard): stats readable and complete,
    built with these settings (``identity``), tar and manifest present with the recorded sizes, and
    their SHA-256 recomputed only where the file is newer than its stats (rewritten after the shard
    was finished). ``deep`` hashes both always; ``tar_sha256`` gives the tar's hash when the caller
    already computed it; ``stats_raw`` and ``listings`` ({folder: Store.listing(folder)}) let a
    caller that checks many shards read them in bulk.
    """
    if stats_raw is False:
        try:
            stats_raw = store.read_bytes(layout.stats_rel(name))
        except OSError:
            stats_raw = None
    stats = _read_stats(stats_raw)
    if isinstance(stats, str):
        return [stats]
    problems = []
    if identity is not None and stats.get("identity", identity) != identity:
        problems.append("built with other settings")
    if task is not None and stats.get("task", task) != task:
        problems.append("built from another plan")

    def stat(rel: str):
        folder, _, base = rel.rpartition("/")
        if listings is not None and folder in listings:
            return listings[folder].get(base)
        return store.stat(rel)

    marker = stat(layout.stats_rel(name)) or {}
    for what, rel in (("tar", layout.tar_rel(name)), ("manifest", layout.manifest_rel(name))):
        st = stat(rel)
        if st is None:
            problems.append(f"{what} missing")
            continue
        size = stats.get(f"{what}_bytes")
        if size is not None and st["size"] != size:
            problems.append(f"{what} is {st['size']} bytes, its stats say {size}")
            continue
        digest = stats.get(f"{what}_sha256")
        if not digest:
            continue  # written before checksums were recorded: sizes only
        newer = st.get("mtime") is None or marker.get("mtime") is None or st["mtime"] > marker["mtime"]
        if what == "tar" and tar_sha256 is not None:
            actual = tar_sha256
        elif deep or newer:
            try:
                with store.open(rel, "rb") as f:
                    actual = sha256_stream(f)
            except OSError as exc:
                problems.append(f"{what} unreadable ({type(exc).__name__})")
                continue
        else:
            continue
        if actual != digest:
            problems.append(f"{what} SHA-256 differs from its stats (damaged or changed)")
    return problems


def clean_partials(store: Store) -> int:
    """Remove in-progress files left by a killed run (a local OUT; object stores have none: objects
    appear whole); returns how many were removed."""
    if not store.local:  # only probe objects of a killed check_writable
        probes = [n for n in store.listdir() if n.startswith(layout.PROBE_PREFIX)]
        for n in probes:
            store.remove(n)
        return len(probes)
    removed = 0
    out = Path(store.root)
    for d in (out / layout.TMP_DIR, out / layout.MANIFEST_DIR, out / layout.STATS_DIR, out):
        if d.is_dir():
            for p in list(d.glob("*.partial")) + list(d.glob(".*.partial")) + list(d.glob(layout.PROBE_PREFIX + "*")):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def resume_state(store: Store, names: list[str], deep: bool = False, identity: str | None = None,
                 tasks: dict[str, str] | None = None) -> tuple[set[str], dict[str, list[str]]]:
    """Which of ``names`` are finished and intact (and, given ``identity``, built with those
    settings); the files of every other one are removed (they are rebuilt). Returns (finished,
    {damaged shard: its problems}). A damaged shard loses its stats first, so a kill during this
    repair leaves it unfinished, never falsely finished. Three listings and one bulk read of the
    stats, whatever the number of shards."""
    listings = {"": store.listing(), layout.MANIFEST_DIR: store.listing(layout.MANIFEST_DIR),
                layout.STATS_DIR: store.listing(layout.STATS_DIR)}
    claimed = [n for n in names if f"{n}.json" in listings[layout.STATS_DIR]]
    raw = store.read_many([layout.stats_rel(n) for n in claimed])
    finished: set[str] = set()
    damaged: dict[str, list[str]] = {}
    for n in names:
        if layout.stats_rel(n) in raw:
            problems = shard_problems(store, n, deep=deep, identity=identity, stats_raw=raw[layout.stats_rel(n)],
                                      listings=listings, task=(tasks or {}).get(n))
            if not problems:
                finished.add(n)
                continue
            damaged[n] = problems
            store.remove(layout.stats_rel(n))
        if f"{n}.tar" in listings[""]:
            store.remove(layout.tar_rel(n))
        if f"{n}.parquet" in listings[layout.MANIFEST_DIR]:
            store.remove(layout.manifest_rel(n))
    return finished, damaged


def remove_strays(store: Store, source: str, names: list[str]) -> list[str]:
    """Remove shards of ``source`` that are not in its plan (``names``): stats, tar and manifest.
    Returns the names removed. Other sources' shards and files pairgen does not write are kept."""
    keep, found = set(names), set()
    for folder, suffix in (("", ".tar"), (layout.MANIFEST_DIR, ".parquet"), (layout.STATS_DIR, ".json")):
        for entry in store.listdir(folder):
            m = layout.SHARD_RE.match(entry[: -len(suffix)]) if entry.endswith(suffix) else None
            if m and m.group("source") == source and entry[: -len(suffix)] not in keep:
                found.add(entry[: -len(suffix)])
    for n in sorted(found):
        store.remove(layout.stats_rel(n))  # the completion marker first
        store.remove(layout.tar_rel(n))
        store.remove(layout.manifest_rel(n))
    return sorted(found)
