"""On-disk indexes of large annotation files: parsed once, read one unit at a time.

A dataset whose annotations come as one large JSON file (InterHand2.6M's ``_data.json`` is ~4 GB in
the 30 fps release) would otherwise be parsed whole by the driver and again by every worker. Instead
the first process that needs the file stream-parses it once into an **index**: an Arrow IPC file
(``index.arrow``, zstd-compressed, one record batch per unit or per bounded slice of one) and a small
table of contents (``toc.json``: entry key -> its batches, with each batch's frame range where the
entries are keyed by frame). A process reads the table of contents, then only the batches of the unit
it loads: its memory does not grow with the annotation file.

Where: ``<index dir>/<file name>-<digest>/``; the digest covers the source file's absolute path, size
and mtime_ns, the index kind and the builder's version, so a changed file gets a new index (old ones are
never read again and may be deleted). The index dir is the reader option ``index_dir``, else the
environment variable ``CROCOMAN_INDEX_DIR``, else ``~/.cache/crocoman/annotation-index``. On a
cluster point it at a folder every node sees (``--reader-option index_dir=/shared/...``): the driver
builds each index once while planning and the workers only read it. A folder per node works too (each
node builds its own).

Built atomically: into a temporary folder beside it, renamed into place when complete; a process that
finds the index missing takes an exclusive ``fcntl`` lock (``<name>.lock``), so a second process
waits for the first one's build and then reads it instead of building it again. An index whose table
of contents or batches cannot be read (truncated, damaged) is rebuilt the same way. A source file
that does not parse gives an index that records the error (every process reports it, none re-parses).

Which batches a process read, and how many bytes it read from ``index.arrow``, are kept in
:attr:`AnnotationIndex.batches_read` / :attr:`AnnotationIndex.bytes_read` (every read goes through a
counting file object).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

FORMAT = 1
ENV = "CROCOMAN_INDEX_DIR"
DEFAULT_DIR = "~/.cache/crocoman/annotation-index"
TOC = "toc.json"
DATA = "index.arrow"
ANNOUNCE_BYTES = 64 << 20  # a build of a source at least this large says so on stderr (it takes a while)


_NUMPY_TYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
                "uint32": np.uint32, "uint64": np.uint64, "float": np.float32, "double": np.float64}


def as_numpy(arr) -> np.ndarray:
    """A numeric Arrow array (or chunked array) without nulls as a read-only numpy array, zero-copy where
    it is one chunk. (pyarrow's ``to_numpy`` imports pandas: ~50 MB more in a worker that needs none.)"""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    dtype = np.dtype(_NUMPY_TYPES[str(arr.type)])
    if len(arr) == 0:
        return np.empty(0, dtype)
    if arr.null_count:
        raise ValueError("as_numpy: the array has nulls")
    return np.frombuffer(arr.buffers()[1], dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


class SourceMalformed(Exception):
    """Raised by a build function: the source file does not parse; the message is the reason recorded
    in the index (and reported for every unit that needs the file)."""


class IndexCorrupt(Exception):
    """The index on disk cannot be read (it is rebuilt)."""


def index_root(option: str | os.PathLike | None = None) -> Path:
    """The folder holding the indexes: ``option`` (the reader option ``index_dir``), else
    ``$CROCOMAN_INDEX_DIR``, else ``~/.cache/crocoman/annotation-index``."""
    raw = option if option not in (None, "") else (os.environ.get(ENV) or DEFAULT_DIR)
    return Path(os.path.expanduser(str(raw))).absolute()


def check_index_root(root: Path) -> None:
    """Raise ValueError (one line) when indexes cannot be written under ``root``."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"annotation index folder {root}: cannot be created ({exc.strerror or exc}); "
                         f"set --reader-option index_dir=DIR or ${ENV}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ValueError(f"annotation index folder {root}: not writable; set --reader-option index_dir=DIR or ${ENV}")


# -- reading ---------------------------------------------------------------------------------------

class _CountingFile(io.RawIOBase):
    """A read-only file that counts the bytes read through it (pyarrow reads the index through this)."""

    def __init__(self, path: Path, owner: "AnnotationIndex"):
        super().__init__()
        self._f = open(path, "rb", buffering=0)
        self._owner = owner

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self._owner.bytes_read += n or 0
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class AnnotationIndex:
    """One built index: its table of contents (``toc``) and reads of its batches.

    ``entries``: key -> list of ``[batch, lo, hi]`` (lo/hi: the frame range of a batch keyed by frame,
    else None), or None for a key the source has with an unusable value. ``error``: the reason the source
    did not parse (then there are no entries). Reads go through :meth:`read`, which rebuilds a damaged
    index once and retries."""

    def __init__(self, path: Path, toc: dict, source: Path, kind: str, build, version: str, root: Path):
        self.path, self.toc = path, toc
        self._spec = (source, kind, build, version, root)
        self.bytes_read = 0
        self.batches_read: list[int] = []
        self.built_here = False  # this process built it
        self.waited_s = 0.0  # time spent waiting for another process's build

    @property
    def error(self) -> str | None:
        return self.toc.get("error")

    @property
    def entries(self) -> dict:
        return self.toc["entries"]

    @property
    def build_id(self) -> str:
        return self.toc["build"]["id"]

    def _read_batches(self, batches: list[int]) -> list[pa.RecordBatch]:
        import pyarrow as pa

        out = []
        try:
            with _CountingFile(self.path / DATA, self) as f:
                reader = pa.ipc.open_file(f)
                for b in batches:
                    out.append(reader.get_batch(b))
                    self.batches_read.append(b)
        except (OSError, pa.ArrowException, IndexError, ValueError) as exc:
            raise IndexCorrupt(f"{self.path / DATA}: {type(exc).__name__}: {exc}") from exc
        return out

    def read(self, key: str, frames: Iterable[int] | None = None) -> pa.Table | None:
        """The rows of entry ``key`` (None when the source has no such key): its batches, or with
        ``frames`` only the batches whose frame range holds one of them (rows of other frames may
        come along). A damaged index is rebuilt once and read again."""
        import pyarrow as pa

        for attempt in (0, 1):
            spans = self.entries.get(key)
            if spans is None:
                return None
            if frames is not None:
                want = np.unique(np.fromiter(frames, np.int64))
                spans = [s for s in spans if np.any((want >= s[1]) & (want <= s[2]))]
            try:
                batches = self._read_batches([s[0] for s in spans])
            except IndexCorrupt:
                if attempt:
                    raise
                fresh = open_index(*self._spec[:2], self._spec[2], version=self._spec[3], root=self._spec[4],
                                   discard=self)
                self.path, self.toc = fresh.path, fresh.toc
                continue
            if not batches:  # an entry without rows (or none of the frames asked for)
                if not self.toc.get("schema"):
                    return pa.table({})
                return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.toc["schema"]))).empty_table()
            return pa.Table.from_batches(batches)
        return None  # not reached


# -- building ----------------------------------------------------------------------------------------

class IndexWriter:
    """Handed to a build function: ``write(table_or_batch)`` appends one batch to ``index.arrow`` and
    returns its number; ``entries`` (key -> spans) and ``info`` (free-form, kept in the table of
    contents) are filled by the build function; ``tmp`` is a scratch folder (spills), removed after."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tmp = folder / "scratch"
        self.tmp.mkdir()
        self.entries: dict[str, list | None] = {}
        self.info: dict = {}
        self._writer = None
        self._sink = None
        self.batches = 0
        self.schema: pa.Schema | None = None

    def write(self, data: pa.Table | pa.RecordBatch) -> int:
        import pyarrow as pa

        batch = data
        if isinstance(data, pa.Table):
            batches = data.combine_chunks().to_batches()
            batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=data.schema)
        if self._writer is None:
            self.schema = batch.schema
            self._sink = pa.OSFile(str(self.folder / DATA), "wb")
            self._writer = pa.ipc.new_file(self._sink, batch.schema,
                                           options=pa.ipc.IpcWriteOptions(compression="zstd"))
        self._writer.write_batch(batch)
        self.batches += 1
        return self.batches - 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def reset(self) -> None:
        """Drop everything written so far (e.g. to build again another way); the scratch folder is
        emptied."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / DATA).unlink()
        self.entries, self.info, self.batches, self.schema = {}, {}, 0, None
        self.tmp.mkdir()


FLUSH_ROWS = 10_000  # rows buffered (over all parts) before they are written: ~4 MB as Python tuples


class PartitionedSpill:
    """Rows spilled to ``parts`` Arrow stream files under ``folder`` (bounded memory: at most
    ``flush_rows`` rows are buffered, over all parts). ``to_batch(rows)`` turns a list of row tuples
    into a record batch of ``schema``. After :meth:`close`, :meth:`read` gives one part as a table."""

    def __init__(self, folder: Path, name: str, schema: pa.Schema, parts: int,
                 to_batch: Callable[[list], pa.RecordBatch], flush_rows: int = FLUSH_ROWS):
        self.folder, self.name, self.schema, self.parts = folder, name, schema, parts
        self.to_batch, self.flush_rows = to_batch, flush_rows
        self._rows: list[list] = [[] for _ in range(parts)]
        self._n = 0
        self._writers: dict[int, tuple] = {}
        self.rows = 0

    def _path(self, p: int) -> Path:
        return self.folder / f"{self.name}-{p:04d}.arrows"

    def _writer(self, p: int):
        import pyarrow as pa

        if p not in self._writers:
            sink = pa.OSFile(str(self._path(p)), "wb")
            self._writers[p] = (sink, pa.ipc.new_stream(sink, self.schema,
                                                        options=pa.ipc.IpcWriteOptions(compression="lz4")))
        return self._writers[p][1]

    def add(self, part: int, row) -> None:
        self._rows[part].append(row)
        self._n += 1
        if self._n >= self.flush_rows:
            self.flush()

    def write(self, part: int, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows already in columnar form."""
        import pyarrow as pa

        if data.num_rows:
            w = self._writer(part)
            w.write_table(data) if isinstance(data, pa.Table) else w.write_batch(data)
            self.rows += data.num_rows

    def flush(self) -> None:
        for p, rows in enumerate(self._rows):
            if rows:
                self._writer(p).write_batch(self.to_batch(rows))
                self.rows += len(rows)
                self._rows[p] = []
        self._n = 0

    def close(self) -> None:
        self.flush()
        for sink, w in self._writers.values():
            w.close()
            sink.close()

    def read(self, p: int) -> pa.Table:
        import pyarrow as pa

        if p not in self._writers:
            return self.schema.empty_table()
        with pa.OSFile(str(self._path(p)), "rb") as f:
            return pa.ipc.open_stream(f).read_all()

    def remove(self, p: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(p).unlink()


def stable_part(key: str, parts: int) -> int:
    """A partition of ``key`` that is the same in every process (unlike ``hash``)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % parts


PARTITION_BYTES = 16 << 20  # source bytes per partition of a build (what one join step holds in memory).
# Measured on the full-size 704 MB InterHand _data.json (with FLUSH_ROWS): 32 MB partitions built in
# 84 s with a 358 MB peak RSS, 16 MB in 89-107 s / 298-308 MB, 8 MB in 124 s / 262 MB (more, smaller
# batches); one or two runs each on 2 shared cores


def partitions_for(size: int, target: int | None = None, most: int = 256) -> int:
    """How many partitions keep each about ``target`` (default PARTITION_BYTES) bytes of a ``size``-byte
    source (at most ``most``: the spill files open at once)."""
    return max(1, min(most, -(-size // (target or PARTITION_BYTES))))


# -- finding / building ------------------------------------------------------------------------------

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _thread_lock(name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.Lock())


@contextlib.contextmanager
def _locked(root: Path, name: str):
    """Exclusive between threads (a lock per name) and processes (``fcntl.lockf`` on ``name.lock``,
    POSIX record locks: also honoured across NFS clients)."""
    with _thread_lock(name):
        fd = os.open(root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.lockf(fd, fcntl.LOCK_UN)
            os.close(fd)


def _source_id(source: Path) -> dict:
    st = source.stat()
    return {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def index_name(source: Path, kind: str, version: str, sid: dict | None = None) -> str:
    sid = sid or _source_id(source)
    blob = json.dumps([FORMAT, kind, version, sid["path"], sid["size"], sid["mtime_ns"]])
    return f"{source.name}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _load(path: Path, sid: dict, kind: str, version: str) -> dict:
    """The table of contents of a complete, current index at ``path``; IndexCorrupt otherwise."""
    try:
        toc = json.loads((path / TOC).read_text())
        ok = (toc.get("format") == FORMAT and toc.get("kind") == kind and toc.get("version") == version
              and toc.get("source") == sid)
        if ok and toc.get("error") is None and toc.get("batches"):
            ok = (path / DATA).stat().st_size == toc["data_bytes"]
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise IndexCorrupt(f"{path}: {type(exc).__name__}: {exc}") from None
    if not ok:
        raise IndexCorrupt(f"{path}: not a complete index of {sid['path']}")
    return toc


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_dead_tmp(root: Path, name: str) -> None:
    """Leftovers of killed builds of this index on this host (we hold its lock)."""
    host = socket.gethostname()
    for p in root.glob(f".{glob.escape(name)}.tmp-*"):
        parts = p.name.rsplit(".tmp-", 1)[-1].split("~")
        if len(parts) == 3 and parts[0] == host:
            try:
                os.kill(int(parts[1]), 0)
                continue  # still running (a thread of a live process, or ours)
            except ProcessLookupError:
                pass
            except (ValueError, PermissionError):
                continue
            shutil.rmtree(p, ignore_errors=True)


def _build(source: Path, sid: dict, kind: str, version: str, build, root: Path, name: str) -> None:
    """Build into a temporary folder and rename it to ``root/name`` (caller holds the lock)."""
    tmp = root / f".{name}.tmp-{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    announce = sid["size"] >= ANNOUNCE_BYTES
    if announce:
        print(f"pairgen: indexing {source} ({sid['size'] / 1e6:.0f} MB) once, into {root / name}",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    w = IndexWriter(tmp)
    try:
        error = None
        try:
            build(source, w)
        except SourceMalformed as exc:
            error = str(exc)
            w.reset()
        w.close()
        toc = {"format": FORMAT, "kind": kind, "version": version, "source": sid, "error": error,
               "entries": w.entries if error is None else {}, "batches": w.batches,
               "schema": base64.b64encode(w.schema.serialize().to_pybytes()).decode() if w.schema else None,
               "data_bytes": (tmp / DATA).stat().st_size if w.batches else 0,
               "info": w.info,
               "build": {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                         "seconds": round(time.perf_counter() - t0, 3)}}
        if w.batches:
            with open(tmp / DATA, "rb") as f:
                os.fsync(f.fileno())
        with open(tmp / TOC, "w") as f:
            json.dump(toc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # a damaged index (the caller decided): out of the way first
            trash = root / f".{name}.trash-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if announce:
        print(f"pairgen: indexed {source.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def open_index(source: Path, kind: str, build: Callable[[Path, IndexWriter], None], *, version: str = "1",
               root: Path | None = None, discard: AnnotationIndex | None = None) -> AnnotationIndex:
    """The index of ``source`` (built now if missing, damaged or of another version of the file).

    ``build(source, writer)`` stream-parses the source into ``writer`` (see :class:`IndexWriter`) and
    raises :class:`SourceMalformed` when the source does not parse. ``discard``: an index found
    unreadable; it is rebuilt unless another process did so meanwhile. Raises OSError when the source
    cannot be read (e.g. missing)."""
    source = Path(source).absolute()
    root = index_root() if root is None else Path(root)
    for _ in range(3):
        sid = _source_id(source)
        name = index_name(source, kind, version, sid)
        path = root / name
        built, waited = False, 0.0
        toc = None
        if discard is None:
            with contextlib.suppress(IndexCorrupt):
                toc = _load(path, sid, kind, version)
        if toc is None:
            root.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            with _locked(root, name):
                waited = time.perf_counter() - t0
                try:
                    toc = _load(path, sid, kind, version)
                    if discard is not None and toc["build"]["id"] == discard.build_id:
                        toc = None  # still the damaged one
                except IndexCorrupt:
                    toc = None
                if toc is None:
                    _remove_dead_tmp(root, name)
                    _build(source, sid, kind, version, build, root, name)
                    built = True
                    toc = _load(path, sid, kind, version)
            discard = None
        if _source_id(source) != sid:  # the file changed while we looked: look again
            continue
        idx = AnnotationIndex(path, toc, source, kind, build, version, root)
        idx.built_here, idx.waited_s = built, (0.0 if built else waited)
        return idx
    raise OSError(errno.EBUSY, f"{source}: keeps changing while being indexed")
