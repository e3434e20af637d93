"""Where a build's files live: a local directory or any fsspec URL (``s3://bucket/prefix``,
``gs://...``, ``file://...``). Every stage that reads or writes an output goes through
:class:`Store`; nothing else knows local disk from object storage.

Writes are atomic on both:

- local: written under a temporary name next to the target, fsynced, renamed (as before);
- object stores have no rename: each object is written under its final name in one upload (a
  single PUT, or a multipart upload, which stays invisible until completed), so a reader sees the
  whole object or none. A shard's stats object is still uploaded last: it is the completion marker.

Credentials and endpoints come from where the filesystem's library looks (for S3: the AWS
environment variables and config files, ``AWS_ENDPOINT_URL``; fsspec's own config such as
``FSSPEC_S3_ENDPOINT_URL``) and from ``storage_options`` (``--storage-option KEY=VALUE``).
"""

from __future__ import annotations

import os
import shutil
import stat as stat_module
import tempfile
from pathlib import Path
from typing import BinaryIO


class StorageError(Exception):
    """The output location cannot be used (unknown protocol, no bucket, no credentials, ...): one line."""


def is_url(spec: str) -> bool:
    return "://" in str(spec)


def parse_options(items) -> dict:
    """``["KEY=VALUE", ...]`` -> storage options; values that read as JSON (numbers, true, {...}) are parsed,
    dotted keys nest (``client_kwargs.region_name=eu-west-1``)."""
    import json

    opts: dict = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise StorageError(f"--storage-option takes KEY=VALUE (got {item!r})")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        node = opts
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise StorageError(f"--storage-option {item!r}: {p!r} is already set to a value, not a group")
        node[parts[-1]] = parsed
    return opts


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class Store:
    """A build's root. Paths given to its methods are relative to the root, '/'-separated."""

    def __init__(self, root: str | os.PathLike, options: dict | None = None):
        import copy

        root = str(root)
        self.options = copy.deepcopy(dict(options or {}))  # botocore edits nested options in place
        if is_url(root) and not root.startswith("file://"):
            import fsspec

            kw = dict(self.options)
            if root.split("://", 1)[0] in ("s3", "s3a", "gs", "gcs"):
                kw.setdefault("use_listings_cache", False)  # other processes write here too: always list afresh
            try:
                self.fs, path = fsspec.core.url_to_fs(root, **kw)
            except (ValueError, ImportError) as exc:
                raise StorageError(f"{root}: {_one_line(exc)}") from None
            self.root = path.rstrip("/")
            self.local = False
            self.url = self.fs.unstrip_protocol(self.root)
        else:
            if root.startswith("file://"):
                root = root[len("file://"):]
            self.fs = None
            self.root = os.path.abspath(root)
            self.local = True
            self.url = self.root

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- names
    def path(self, rel: str = "") -> str:
        """The full path of ``rel`` on the filesystem (local: an OS path)."""
        if not rel:
            return self.root
        return os.path.join(self.root, rel) if self.local else f"{self.root}/{rel}"

    def url_of(self, rel: str = "") -> str:
        """``rel`` as a URL (local: a plain path) for readers outside the project (pandas, webdataset)."""
        return self.path(rel) if self.local else self.fs.unstrip_protocol(self.path(rel))

    # -- reading
    def exists(self, rel: str = "") -> bool:
        return os.path.exists(self.path(rel)) if self.local else self.fs.exists(self.path(rel))

    def isdir(self, rel: str = "") -> bool:
        return os.path.isdir(self.path(rel)) if self.local else self.fs.isdir(self.path(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under ``rel`` (files and folders); empty if it does not exist."""
        if self.local:
            try:
                return sorted(os.listdir(self.path(rel)))
            except (FileNotFoundError, NotADirectoryError):
                return []
        try:
            entries = self.fs.ls(self.path(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        base = self.path(rel).rstrip("/") + "/"
        return sorted(e[len(base):] if e.startswith(base) else e.rsplit("/", 1)[-1] for e in entries
                      if e.rstrip("/") != base.rstrip("/"))

    def stat(self, rel: str) -> dict | None:
        """``{"size": bytes, "mtime": seconds since the epoch}`` of a file, or None if missing."""
        if self.local:
            try:
                st = os.stat(self.path(rel))
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not stat_module.S_ISREG(st.st_mode):
                return None  # as on object stores: folders are not files
            return {"size": st.st_size, "mtime": st.st_mtime_ns / 1e9}
        try:
            info = self.fs.info(self.path(rel))
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return None
        return {"size": int(info.get("size") or 0), "mtime": _mtime(info)}

    def listing(self, rel: str = "") -> dict[str, dict]:
        """The files directly under ``rel``: {name: {"size", "mtime"}} in one listing (object stores:
        one paged LIST request, not a request per object)."""
        found: dict[str, dict] = {}
        if self.local:
            try:
                it = os.scandir(self.path(rel))
            except (FileNotFoundError, NotADirectoryError):
                return found
            with it:
                for e in it:
                    if e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        found[e.name] = {"size": st.st_size, "mtime": st.st_mtime_ns / 1e9}
            return found
        try:
            entries = self.fs.ls(self.path(rel), detail=True, refresh=True)
        except FileNotFoundError:
            return found
        for info in entries:
            if info.get("type") == "directory":
                continue
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            found[name] = {"size": int(info.get("size") or 0), "mtime": _mtime(info)}
        return found

    def read_many(self, rels: list[str]) -> dict[str, bytes | None]:
        """{rel: its bytes, or None if missing/unreadable}; object stores fetch them concurrently."""
        if self.local:
            out: dict[str, bytes | None] = {}
            for rel in rels:
                try:
                    out[rel] = self.read_bytes(rel)
                except OSError:
                    out[rel] = None
            return out
        if not rels:
            return {}
        paths = {self.path(rel): rel for rel in rels}
        got = self.fs.cat(list(paths), on_error="return")
        return {rel: (got.get(path) if isinstance(got.get(path), bytes) else None) for path, rel in paths.items()}

    def open(self, rel: str, mode: str = "rb", **kw) -> BinaryIO:
        if self.local:
            return open(self.path(rel), mode, **kw)
        return self.fs.open(self.path(rel), mode, **kw)

    def read_bytes(self, rel: str) -> bytes:
        if self.local:
            return Path(self.path(rel)).read_bytes()
        return self.fs.cat_file(self.path(rel))

    def read_parquet(self, rel: str, **kw):
        """A Parquet file as a pyarrow Table (see :func:`parquet_from_bytes` for why not from a stream)."""
        import pyarrow.parquet as pq

        if self.local:
            return pq.read_table(self.path(rel), **kw)
        return parquet_from_bytes(self.read_bytes(rel), **kw)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    # -- writing
    def makedirs(self, rel: str = "") -> None:
        if self.local:
            os.makedirs(self.path(rel), exist_ok=True)
        # object stores have no folders: a prefix exists once an object is under it

    def remove(self, rel: str) -> None:
        """Delete ``rel`` if it exists."""
        try:
            if self.local:
                os.unlink(self.path(rel))
            else:
                self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomically: a reader sees the old object, or the whole new one."""
        if self.local:
            from manifests.layout import write_atomic

            write_atomic(Path(self.path(rel)), data)
        else:
            self.fs.pipe_file(self.path(rel), data)

    def put_file(self, rel: str, local_file: str | os.PathLike) -> None:
        """Move a finished local file to ``rel`` atomically (local: fsync + rename, so
        ``local_file`` must be on the same filesystem: use :meth:`scratch`; remote: one upload, then
        the local file is removed)."""
        local_file = str(local_file)
        if self.local:
            with open(local_file, "rb+") as f:
                os.fsync(f.fileno())
            target = self.path(rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(local_file, target)
        else:
            self.fs.put_file(local_file, self.path(rel))
            os.unlink(local_file)

    def scratch(self, tmp_dir: str) -> str:
        """A local folder for files being written before :meth:`put_file`: ``ROOT/<tmp_dir>`` for a
        local root (same filesystem, so the rename is atomic), a private temporary folder otherwise."""
        if self.local:
            d = self.path(tmp_dir)
            os.makedirs(d, exist_ok=True)
            return d
        d = os.path.join(tempfile.gettempdir(), f"pairgen-upload-{os.getpid()}")
        if not os.path.isdir(d):
            _remove_stale_scratch()
            os.makedirs(d, exist_ok=True)
        return d

    def free_space(self) -> str:
        """How much room is left, for error messages."""
        if not self.local:
            return "object storage"
        probe = Path(self.root)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            return f"{shutil.disk_usage(probe).free / 1e6:.1f} MB free on {probe}"
        except OSError:
            return f"{probe} not accessible"

    def check_writable(self) -> None:
        """Raise StorageError (one line) unless the root can be written: for object stores this
        writes and deletes a probe object, which also proves the bucket, credentials and endpoint."""
        if self.local:
            return
        probe = f".probe-{os.urandom(8).hex()}"  # manifests.layout.PROBE_PREFIX: a name pairgen owns
        try:
            self.fs.pipe_file(self.path(probe), b"")
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp raise many types
            raise StorageError(f"{self.url}: cannot write there ({describe_error(exc)})") from None
        try:
            self.fs.rm_file(self.path(probe))
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"{self.url}: can write but not delete there ({describe_error(exc)}); "
                               "a build needs both (it replaces damaged objects)") from None


def parquet_from_bytes(data: bytes, **kw):
    """A pyarrow Table from a Parquet file's bytes, read through a temporary file: pyarrow 26 can
    abort the interpreter at exit ("terminate called without an active exception", SIGABRT) after
    reading Parquet from a Python file object or a Python-owned buffer; from a path it does not."""
    import pyarrow.parquet as pq

    with tempfile.NamedTemporaryFile(suffix=".parquet") as f:
        f.write(data)
        f.flush()
        return pq.read_table(f.name, **kw)


def _remove_stale_scratch() -> None:
    """Scratch folders of processes that are gone (a killed worker leaves its staged shard)."""
    base = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith("pairgen-upload-")]
    except OSError:
        return
    for n in names:
        pid = n.rsplit("-", 1)[-1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}") and os.path.exists("/proc/self"):
            shutil.rmtree(os.path.join(base, n), ignore_errors=True)


def _mtime(info: dict) -> float | None:
    """Seconds since the epoch from an fsspec info dict (S3: LastModified; others: mtime/updated)."""
    mtime = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("last_modified")
    if hasattr(mtime, "timestamp"):
        return mtime.timestamp()
    if isinstance(mtime, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(mtime.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return float(mtime) if isinstance(mtime, (int, float)) else None


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a storage failure, naming the usual causes."""
    name = type(exc).__name__
    text = _one_line(exc)
    low = text.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low or (name == "FileNotFoundError" and "bucket" in low):
        return f"no such bucket ({text})"
    if "credentials" in low or "accessdenied" in low or "forbidden" in low or isinstance(exc, PermissionError):
        return f"access denied or no credentials ({text})"
    if "connect" in low or "endpoint" in low or "timeout" in low or "resolve" in low:
        return f"endpoint unreachable ({text})"
    return f"{name}: {text}"
