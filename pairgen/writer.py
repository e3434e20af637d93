"""Shard writer: one finished shard = tar + Parquet manifest + stats JSON, each renamed into place.

Order of the renames is tar, manifest, stats: the stats file is the completion marker, so a
shard killed at any point is either absent or rebuilt on resume. Tar members carry fixed
metadata (mtime 0, uid 0, mode 0644) and a fixed order, so equal samples give equal tar bytes.
The writer knows no dataset.
"""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from manifests import layout
from manifests.sample import ALL_SUFFIXES
from manifests.schema import rows_to_table


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


def write_tar(path: Path, members) -> None:
    """A ustar archive of ``(name, bytes)`` members, byte for byte what ``tarfile`` (USTAR format,
    ``addfile`` with :func:`member_header`'s metadata) writes, without its per-member overhead."""
    n = 0
    with open(path, "wb") as f:
        for name, data in members:
            f.write(member_header(name, len(data)))
            f.write(data)
            pad = -len(data) % tarfile.BLOCKSIZE
            if pad:
                f.write(bytes(pad))
            n += tarfile.BLOCKSIZE + len(data) + pad
        n += 2 * tarfile.BLOCKSIZE  # end of archive: two zero blocks, then zeros to a whole record
        f.write(bytes(2 * tarfile.BLOCKSIZE + (-n % tarfile.RECORDSIZE)))


def warm_up() -> None:
    """Load what the first shard of a process would otherwise pay for: pyarrow imports pandas
    (~0.2-0.3 s) the first time it builds an array from Python values. Called once per worker."""
    import pyarrow as pa

    pa.array([0])


def write_shard(out: Path, name: str, samples: list[tuple[str, dict[str, bytes]]], rows: list[dict],
                stats: dict) -> dict:
    """Write shard ``name`` atomically; returns the stats as written (with sizes and timings)."""
    out = Path(out)
    t0 = time.time()
    final_tar = layout.tar_path(out, name)
    tmp = _tmp_name(out, final_tar)
    order = {s: i for i, s in enumerate(ALL_SUFFIXES)}
    write_tar(tmp, ((f"{key}.{suffix}", members[suffix]) for key, members in samples
                    for suffix in sorted(members, key=lambda s: (order.get(s, len(order)), s))))
    _fsync_replace(tmp, final_tar)

    final_manifest = layout.manifest_path(out, name)
    tmp = _tmp_name(out, final_manifest)
    pq.write_table(rows_to_table(rows), tmp, compression="zstd")
    _fsync_replace(tmp, final_manifest)

    stats = dict(stats)
    stats.update(shard=final_tar.name, count=len(samples), tar_bytes=final_tar.stat().st_size,
                 write_s=round(time.time() - t0, 4))
    layout.write_json_atomic(layout.stats_path(out, name), stats)  # completion marker: last
    return stats


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


def remove_unfinished(out: Path, names: list[str]) -> None:
    """Delete tars/manifests of shards that have no stats file (they are rebuilt)."""
    for n in names:
        if not layout.stats_path(out, n).exists():
            layout.tar_path(out, n).unlink(missing_ok=True)
            layout.manifest_path(out, n).unlink(missing_ok=True)
