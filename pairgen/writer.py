"""Shard writer: one finished shard = tar + Parquet manifest + stats JSON, each renamed into place.

Order of the renames is tar, manifest, stats: the stats file is the completion marker, so a
shard killed at any point is either absent or rebuilt on resume. The stats record the size,
mtime and SHA-256 of the tar and the manifest: :func:`shard_problems` tells a finished shard from
a damaged one (a resumed build rebuilds it). Tar members carry fixed metadata (mtime 0, uid 0,
mode 0644) and a fixed order, so equal samples give equal tar bytes. A failed write (full disk,
read-only or vanished output) raises :class:`OutputError`, which the distributor does not retry.
The writer knows no dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from manifests import layout
from manifests.sample import ALL_SUFFIXES
from manifests.schema import rows_to_table


class OutputError(Exception):
    """The output cannot be written (disk full, read-only, no permission, vanished): retrying the
    shard elsewhere cannot help, so the build stops; finished shards are kept and a re-run resumes."""


def output_error(exc: OSError, path) -> OutputError:
    """One line: what could not be written, why, and how much space is left there."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 1e6:.1f} MB free on {probe}"
    except OSError:
        free = f"{probe} not accessible"
    return OutputError(f"cannot write {path}: {exc.strerror or exc} ({free})")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tmp_name(out: Path, final: Path) -> Path:
    d = Path(out) / layout.TMP_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{final.name}.{os.getpid()}.partial"


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)


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


def write_shard(out: Path, name: str, samples: list[tuple[str, dict[str, bytes]]], rows: list[dict],
                stats: dict) -> dict:
    """Write shard ``name`` atomically; returns the stats as written (with sizes, checksums, timings).
    Raises :class:`OutputError` if the output cannot be written (nothing half-written is left)."""
    out = Path(out)
    t0 = time.time()
    final_tar = layout.tar_path(out, name)
    final_manifest = layout.manifest_path(out, name)
    order = {s: i for i, s in enumerate(ALL_SUFFIXES)}
    tmp, target = None, final_tar
    try:
        tmp = _tmp_name(out, final_tar)
        tar_sha = write_tar(tmp, ((f"{key}.{suffix}", members[suffix]) for key, members in samples
                                  for suffix in sorted(members, key=lambda s: (order.get(s, len(order)), s))))
        _fsync_replace(tmp, final_tar)
        tmp, target = _tmp_name(out, final_manifest), final_manifest
        pq.write_table(rows_to_table(rows), tmp, compression="zstd")
        manifest_sha = sha256_file(tmp)
        _fsync_replace(tmp, final_manifest)
        tmp, target = None, layout.stats_path(out, name)
        tar_st, man_st = final_tar.stat(), final_manifest.stat()
        stats = dict(stats)
        stats.update(shard=final_tar.name, count=len(samples), tar_bytes=tar_st.st_size, tar_sha256=tar_sha,
                     tar_mtime_ns=tar_st.st_mtime_ns, manifest_bytes=man_st.st_size,
                     manifest_sha256=manifest_sha, manifest_mtime_ns=man_st.st_mtime_ns,
                     write_s=round(time.time() - t0, 4))
        layout.write_json_atomic(layout.stats_path(out, name), stats)  # completion marker: last
    except OSError as exc:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        raise output_error(exc, target) from None
    return stats


def shard_problems(out: Path, name: str, deep: bool = False, tar_sha256: str | None = None,
                   identity: str | None = None) -> list[str]:
    """What is wrong with finished shard ``name`` (empty: intact), judged against its stats.

    Cheap by default (a resumed build checks every finished shard): stats readable and complete,
    tar and manifest present with the recorded sizes, and their SHA-256 recomputed only where the
    mtime differs from the recorded one (a file rewritten in place, or copied). ``deep`` hashes
    both always; ``tar_sha256`` gives the tar's hash when the caller already computed it.
    """
    out = Path(out)
    try:
        stats = json.loads(layout.stats_path(out, name).read_text())
    except (OSError, ValueError) as exc:
        return [f"unreadable stats ({type(exc).__name__})"]
    if not isinstance(stats, dict) or not isinstance(stats.get("count"), int):
        return ["incomplete stats (no sample count)"]
    problems = []
    if identity is not None and stats.get("identity", identity) != identity:
        problems.append("built with other settings")
    for what, path in (("tar", layout.tar_path(out, name)), ("manifest", layout.manifest_path(out, name))):
        try:
            st = path.stat()
        except OSError:
            problems.append(f"{what} missing")
            continue
        size = stats.get(f"{what}_bytes")
        if size is not None and st.st_size != size:
            problems.append(f"{what} is {st.st_size} bytes, its stats say {size}")
            continue
        digest = stats.get(f"{what}_sha256")
        if not digest:
            continue  # written before checksums were recorded: sizes only
        if what == "tar" and tar_sha256 is not None:
            actual = tar_sha256
        elif deep or st.st_mtime_ns != stats.get(f"{what}_mtime_ns"):
            try:
                actual = sha256_file(path)
            except OSError as exc:
                problems.append(f"{what} unreadable ({exc.strerror or exc})")
                continue
        else:
            continue
        if actual != digest:
            problems.append(f"{what} SHA-256 differs from its stats (damaged or changed)")
    return problems


def clean_partials(out: Path) -> int:
    """Remove in-progress files left by a killed run; returns how many were removed."""
    removed = 0
    for d in (Path(out) / layout.TMP_DIR, Path(out) / layout.MANIFEST_DIR, Path(out) / layout.STATS_DIR, Path(out)):
        if d.is_dir():
            for p in d.glob("*.partial"):
                p.unlink(missing_ok=True)
                removed += 1
            for p in d.glob(".*.partial"):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def resume_state(out: Path, names: list[str], deep: bool = False,
                 identity: str | None = None) -> tuple[set[str], dict[str, list[str]]]:
    """Which of ``names`` are finished and intact (and, given ``identity``, built with those
    settings); the files of every other one are removed (they are rebuilt). Returns (finished,
    {damaged shard: its problems}). A damaged shard loses its stats first, so a kill during this
    repair leaves it unfinished, never falsely finished."""
    out = Path(out)
    finished: set[str] = set()
    damaged: dict[str, list[str]] = {}
    for n in names:
        if layout.stats_path(out, n).exists():
            problems = shard_problems(out, n, deep=deep, identity=identity)
            if not problems:
                finished.add(n)
                continue
            damaged[n] = problems
            layout.stats_path(out, n).unlink(missing_ok=True)
        layout.tar_path(out, n).unlink(missing_ok=True)
        layout.manifest_path(out, n).unlink(missing_ok=True)
    return finished, damaged


def remove_strays(out: Path, source: str, names: list[str]) -> list[str]:
    """Remove shards of ``source`` that are not in its plan (``names``): tar, manifest and stats.
    Returns the names removed. Other sources' shards and files pairgen does not write are kept."""
    out = Path(out)
    keep, found = set(names), set()
    for d, suffix in ((out, ".tar"), (out / layout.MANIFEST_DIR, ".parquet"), (out / layout.STATS_DIR, ".json")):
        for p in d.glob(f"{source}-*{suffix}") if d.is_dir() else []:
            m = layout.SHARD_RE.match(p.name[: -len(suffix)])
            if m and m.group("source") == source and p.name[: -len(suffix)] not in keep:
                found.add(p.name[: -len(suffix)])
    for n in sorted(found):
        layout.stats_path(out, n).unlink(missing_ok=True)  # the completion marker first
        layout.tar_path(out, n).unlink(missing_ok=True)
        layout.manifest_path(out, n).unlink(missing_ok=True)
    return sorted(found)
