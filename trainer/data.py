"""Streaming pairs from pairgen's WebDataset shards into batches.

    resolve_shards   --shards spec -> tar URLs (+ manifests when they exist next to the tars)
    mix_plan         --mix weights -> per-shard sampling weights and per-kind acceptance
    RankSplit        --data-split rank: each epoch's shards split over (rank, worker), equal batch counts
    PairStream       IterableDataset: shards -> tar samples -> shuffle -> decode/crop -> batch + masks
    to_model_input   on the device: uint8 HWC -> colour jitter -> ImageNet-normalised [B, 3, H, W]

Training streams are infinite and resampled (each rank and worker draws shards with its own
seeded RNG), so with a fixed number of steps every DDP rank gets exactly as many batches and no
rank waits on another at the end of an epoch; with ``--data-split rank`` they are epochs instead,
split over the ranks and workers (disjoint, the same batch count everywhere). Every random choice
(shards, shuffle, crops, jitter, masks) comes from seeds derived from ``(seed, rank, worker,
counter)`` (and the epoch); a batch
carries the raw-sample and batch counters of its worker, which is the data state saved in
checkpoints: a resumed run skips the samples already consumed (without decoding them) and
replays the exact same batches.
"""

from __future__ import annotations

import hashlib
import heapq
import orjson
import os
import queue
import random
import select
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import simplejpeg
import torch
from webdataset.shardlists import expand_urls
from webdataset.gopen import gopen

from manifests import layout, sample as fmt
from manifests.storage import Store, StorageError, describe_error, parse_options

from .config import SKIP_LIMIT, TrainerError
from .loss import PENN_FROM_COCO
from .masking import human_centric_visible, loss_patches, masked_from_visible, uniform_visible

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- shards and manifests


@dataclass
class ShardSet:
    """Resolved ``--shards``: tar URLs and, when every shard has one, the manifest rows (url, source,
    kind); ``options``: the storage options remote tars are opened with (``--storage-option``)."""

    urls: list[str]
    manifest: "object | None" = None  # pandas.DataFrame with columns url, key, source, kind
    options: dict = field(default_factory=dict)

    @property
    def num_pairs(self) -> int | None:
        return None if self.manifest is None else len(self.manifest)


def _is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def _is_url(url: str) -> bool:
    """An fsspec URL read through fsspec (``s3://``, ``gs://``, ``http://``, ...; not ``file://``)."""
    return "://" in url and not url.startswith("file://") and not _is_pipe(url)


def _is_remote(url: str) -> bool:
    return _is_pipe(url) or "://" in url


def _local(url: str) -> str:
    """``file://`` URLs as plain paths (read with ``open``, as fast as any local path)."""
    return url[len("file://"):] if url.startswith("file://") else url


def storage_options(items) -> dict:
    """``--storage-option KEY=VALUE`` items as fsspec storage options (TrainerError if malformed)."""
    try:
        return parse_options(items)
    except StorageError as exc:
        raise TrainerError(str(exc)) from None


def resolve_shards(spec: str, options: dict | None = None) -> ShardSet:
    """A build directory (its finished shards), tar paths / brace patterns joined by '::', or pipe: URLs.

    Build roots and tars may be fsspec URLs (``s3://bucket/prefix``, ``http://host/x-000000.tar``):
    a remote root is listed like a local one (``stats/`` holds the completion markers) and each
    remote tar's manifest is looked up next to it (``<parent>/manifest/<name>.parquet``).
    Anything unusable (unknown protocol, no bucket, no credentials, unreachable endpoint, missing
    shard, no finished shard) is a TrainerError, raised before training starts.
    """
    options = dict(options or {})
    if not spec:
        raise TrainerError("no shards given (--shards)")
    single = _local(spec)
    if not _is_remote(single) and Path(single).is_dir():
        names = layout.finished_shards(single)
        if not names:
            raise TrainerError(f"no finished shards in {spec} (a shard is finished when stats/<name>.json exists)")
        urls = [str(layout.tar_path(Path(single), n)) for n in names]
        for url in urls:
            if not Path(url).is_file():
                raise TrainerError(f"shard not found: {url}")
        return ShardSet(urls, _read_manifests(urls), options)
    if _is_url(spec) and "::" not in spec and "{" not in spec and not spec.rstrip("/").endswith(".tar"):
        root = _resolve_remote_root(spec, options)  # a build root (or one tar object)
        if root is not None:
            return root
    urls = [_local(u) for u in expand_urls(spec)]
    for url in urls:
        if not _is_remote(url) and not Path(url).is_file():
            raise TrainerError(f"shard not found: {url}")
    remote = [u for u in urls if _is_url(u)]
    if not remote:
        return ShardSet(urls, _read_manifests(urls), options)
    found = _probe_remote(remote, options, check_tars=True)
    local = [u for u in urls if not _is_url(u)]
    manifest = _read_manifests(local) if local else None
    if any(found[u] is None for u in remote) or (local and manifest is None):
        return ShardSet(urls, None, options)  # a shard without a manifest: none for all (as before)
    import pandas as pd

    frames = [found[u] if _is_url(u) else manifest[manifest["url"] == u] for u in urls]
    return ShardSet(urls, pd.concat(frames, ignore_index=True), options)


def _read_manifests(urls: list[str]):
    """Manifest rows of local shards (``<dir>/manifest/<name>.parquet``), or None if one is missing."""
    import pandas as pd

    frames = []
    for url in urls:
        if _is_remote(url):
            return None
        p = Path(url)
        mpath = layout.manifest_path(p.parent, p.name.removesuffix(".tar"))
        if not mpath.is_file():
            return None
        df = pd.read_parquet(mpath, columns=["key", "source", "kind"])
        df["url"] = url
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else None


# --------------------------------------------------------------------------- remote shards (fsspec)

REMOTE_BLOCK = 4 << 20
"""Bytes per ranged read of a remote tar (``http(s)`` tars are one streamed GET instead)."""
REMOTE_READ_AHEAD = 2
"""Blocks a background thread reads ahead of the tar parser, so the network overlaps decoding."""
CONNECT_TIMEOUT_S = 5
"""Connect timeout of remote storage (botocore's default is 60 s with 5 attempts, minutes for an
unreachable endpoint); ``--storage-option config_kwargs.connect_timeout=N`` overrides it for S3."""

_FILESYSTEMS: dict = {}
_FS_LOCK = threading.Lock()


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _with_defaults(protocol: str, options: dict) -> dict:
    """``options`` plus short connect timeouts and few retries where the user set none."""
    import copy

    opts = copy.deepcopy(options)
    if protocol in ("s3", "s3a"):
        ck = opts.setdefault("config_kwargs", {})
        if isinstance(ck, dict):
            ck.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
            ck.setdefault("retries", {"max_attempts": 3, "mode": "standard"})
    elif protocol in ("http", "https"):
        ck = opts.setdefault("client_kwargs", {})
        if isinstance(ck, dict) and "timeout" not in ck:
            import aiohttp

            ck["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=120)
    return opts


def _filesystem(url: str, options: dict):
    """``(filesystem, path)`` for a remote URL: one filesystem per (process, protocol, options).

    Data-loader workers are separate processes (forkserver children, or forks): fsspec's async
    filesystems (s3fs, http) hold an event loop and sessions that are not fork-safe (a forked
    copy raises "not fork-safe"), so a filesystem is never shared across processes: the cache is
    keyed by pid, and each filesystem is created lazily, in the process that reads, with fsspec's
    instance cache skipped. The key also holds the AWS_* / FSSPEC_* environment (credentials,
    endpoint).
    """
    import fsspec

    protocol = _protocol(url)
    pid = os.getpid()
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "FSSPEC_"))))
    key = (pid, protocol, repr(sorted(options.items())), env)  # credentials/endpoint may come from the environment
    with _FS_LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:  # (entries a fork inherited stay unused, and referenced: no finalizer runs here)
            cls = fsspec.get_filesystem_class(protocol)  # ValueError: unknown; ImportError: not installed
            kw = {**cls._get_kwargs_from_urls(url), **_with_defaults(protocol, options)}
            fs = _FILESYSTEMS[key] = cls(skip_instance_cache=True, **kw)
    return fs, fs._strip_protocol(url)


def _check_protocol(url: str) -> None:
    import fsspec

    try:
        fsspec.get_filesystem_class(_protocol(url))
    except ValueError:
        raise TrainerError(f"unknown protocol {_protocol(url)!r} in --shards {url} (expected a local path, "
                           "a pipe: command or an fsspec URL such as s3://bucket/prefix)") from None
    except ImportError as exc:
        raise TrainerError(f"cannot read {url}: {_one_line(exc)}") from None


def _reason(exc: BaseException) -> str:
    """One line on a remote failure, starting with "not found" when the object does not exist.
    fsspec's HTTP filesystem reports every failure as a FileNotFoundError: its cause tells a 404
    from a refusal or an unreachable host."""
    if isinstance(exc, FileNotFoundError):
        cause = exc.__cause__
        if cause is not None and type(cause).__module__.split(".")[0] == "aiohttp":
            status = getattr(cause, "status", None)
            if status == 404:
                return "not found (HTTP 404)"
            if status in (401, 403):
                return f"access denied (HTTP {status} {getattr(cause, 'message', '')})".replace(" )", ")")
            if status is not None:
                return f"HTTP {status} {getattr(cause, 'message', '')}".strip()
            return describe_error(cause)
        text = describe_error(exc)
        return text if text.startswith("no such bucket") else "not found"
    return describe_error(exc)


def _probe_remote(urls: list[str], options: dict, check_tars: bool) -> dict:
    """``{tar url: manifest rows or None}`` (None: no manifest next to it), reading the manifests
    (and with ``check_tars`` the tars' sizes) concurrently; TrainerError for a tar that cannot be
    reached or is missing."""
    from concurrent.futures import ThreadPoolExecutor

    for url in {_protocol(u): u for u in urls}.values():
        _check_protocol(url)
    for url in urls:  # create each filesystem here, once (wrapping constructor errors)
        try:
            _filesystem(url, options)
        except Exception as exc:  # noqa: BLE001 - invalid storage options raise many types
            raise TrainerError(f"cannot use {url}: {_one_line(exc)} (check --storage-option)") from None

    def probe(url: str):
        fs, path = _filesystem(url, options)
        if check_tars:
            try:
                fs.info(path)
            except Exception as exc:  # noqa: BLE001 - botocore/aiohttp raise many types
                reason = _reason(exc)
                if reason.startswith("not found"):
                    return TrainerError(f"shard not found: {url}{reason[len('not found'):]}")
                return TrainerError(f"cannot read --shards {url}: {reason}")
        parent, _, base = url.rpartition("/")
        murl = f"{parent}/{layout.manifest_rel(base.removesuffix('.tar'))}"
        try:
            data = fs.cat_file(fs._strip_protocol(murl))
        except FileNotFoundError as exc:
            if _reason(exc).startswith("not found"):
                return None
            return TrainerError(f"cannot read manifest {murl}: {_reason(exc)}")
        except Exception as exc:  # noqa: BLE001
            return TrainerError(f"cannot read manifest {murl}: {_reason(exc)}")
        from manifests.storage import parquet_from_bytes

        try:  # not from a BytesIO: see parquet_from_bytes
            df = parquet_from_bytes(data, columns=["key", "source", "kind"]).to_pandas()
        except (OSError, ValueError) as exc:
            return TrainerError(f"unreadable manifest {murl}: {_one_line(exc)}")
        df["url"] = url
        return df

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(urls)))) as pool:
        found = dict(zip(urls, pool.map(probe, urls)))
    for value in found.values():
        if isinstance(value, TrainerError):
            raise value
    return found


def _resolve_remote_root(spec: str, options: dict) -> ShardSet | None:
    """The finished shards of a remote build root, or None when ``spec`` is a single tar object."""
    _check_protocol(spec)
    try:
        store = Store(spec, {**_with_defaults(_protocol(spec), options), "skip_instance_cache": True})
    except Exception as exc:  # noqa: BLE001 - StorageError, or invalid options
        raise TrainerError(f"cannot use --shards {spec}: {_one_line(exc)}") from None
    try:
        names = layout.finished_shards(store)
        present = set(store.listdir()) if names else set()
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp raise many types
        hint = " (check --storage-option)" if options and isinstance(exc, (TypeError, AttributeError)) else ""
        raise TrainerError(f"cannot list --shards {store.url}: {_reason(exc)}{hint}") from None
    if not names:
        try:
            if store.fs.isfile(store.root):
                return None  # one tar object (without a .tar suffix)
            store.fs.ls(store.root, detail=False)
            nothing = False
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise TrainerError(f"cannot list --shards {store.url}: {describe_error(exc)}") from None
            nothing = True
        except Exception as exc:  # noqa: BLE001
            raise TrainerError(f"cannot list --shards {store.url}: {_reason(exc)}") from None
        raise TrainerError(f"no finished shards in {store.url}{' (nothing there)' if nothing else ''} "
                           "(a shard is finished when stats/<name>.json exists)")
    urls = [store.url_of(layout.tar_rel(n)) for n in names]
    for name, url in zip(names, urls):
        if layout.tar_rel(name) not in present:
            raise TrainerError(f"shard not found: {url}")
    found = _probe_remote(urls, options, check_tars=False)
    if any(df is None for df in found.values()):
        return ShardSet(urls, None, options)
    import pandas as pd

    return ShardSet(urls, pd.concat([found[u] for u in urls], ignore_index=True), options)


class _ReadAhead:
    """A remote file read sequentially by a background thread, up to ``depth`` blocks ahead of the
    reader (the tar parser), so fetching overlaps parsing and decoding. ``read(n)`` returns ``n``
    bytes unless the file ends; a failed fetch is raised (as OSError) by the read that needs it.
    ``fetched`` counts the bytes received so far."""

    def __init__(self, f, block: int, depth: int):
        self._f, self._block = f, block
        self._q: "queue.Queue" = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._buf, self._pos, self._done = b"", 0, False
        self._error: BaseException | None = None
        self.fetched = 0
        self._thread = threading.Thread(target=self._run, name="trainer-readahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._f.read(self._block)
                self.fetched += len(chunk)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            self._put(exc)
        finally:
            try:
                self._f.close()
            except Exception:  # noqa: BLE001
                pass

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next(self) -> bytes:
        if self._error is not None:
            raise self._error
        item = self._q.get()
        if isinstance(item, BaseException):
            err = item if isinstance(item, OSError) else OSError(describe_error(item))
            self._error = err
            raise err
        if not item:
            self._done = True
        return item

    def read(self, n: int = -1) -> bytes:
        avail = len(self._buf) - self._pos
        if 0 <= n <= avail:
            out = self._buf[self._pos:self._pos + n]
            self._pos += n
            return out
        parts = [self._buf[self._pos:]]
        while not self._done and (n < 0 or avail < n):
            chunk = self._next()
            parts.append(chunk)
            avail += len(chunk)
        data = b"".join(parts)
        if n < 0 or len(data) <= n:
            self._buf, self._pos = b"", 0
            return data
        self._buf, self._pos = data, n
        return data[:n]

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_remote(url: str, options: dict | None = None, block_size: int = REMOTE_BLOCK,
                read_ahead: int = REMOTE_READ_AHEAD) -> _ReadAhead:
    """A remote tar as a sequential stream, fetched in ``block_size`` ranges (http(s): one
    streamed GET) as it is read: the first sample is available after its own bytes, not after
    the whole tar. Each process opens its own filesystem (see ``_filesystem``)."""
    try:
        fs, path = _filesystem(url, dict(options or {}))
        if _protocol(url) in ("http", "https"):
            f = fs.open(path, "rb", block_size=0)  # a streamed response (no range requests needed)
        else:
            f = fs.open(path, "rb", block_size=block_size, cache_type="none")
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/fsspec raise many types
        raise OSError(_reason(exc)) from exc
    return _ReadAhead(f, block_size, read_ahead)


def read_shard(url: str, handler, options: dict | None = None) -> Iterator[dict]:
    """Samples of one shard as webdataset-style dicts (``__key__``, ``__url__``, suffix -> bytes).

    Opens local paths and ``pipe:`` URLs through webdataset's ``gopen`` (plain ``open`` for
    paths), fsspec URLs as streams (:func:`open_remote`, with ``options``), then parses the tar
    with the contract's lean reader. A damaged or truncated tar ends the shard: ``handler(exc)``
    is told (it returns True to go on with the next shard).
    A ``pipe:`` command that fails (a URL that vanished, a network error) reports its exit status
    when read or closed; both go to ``handler`` too, and so do remote read failures.
    """
    try:
        stream = open_remote(url, options) if _is_url(url) else gopen(url, "rb")
    except (OSError, ValueError) as exc:
        handler(exc)
        return
    failed = False
    try:
        for key, members in fmt.iter_tar_samples(stream):
            yield {"__key__": key, "__url__": url, **members}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        failed = True
        handler(exc)
    finally:
        try:
            stream.close()
        except (OSError, ValueError) as exc:  # a pipe's exit status (webdataset raises it on close)
            if not failed:
                handler(exc)


def _one_line(text: object, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


class SkipStreak:
    """Samples skipped (and shards that gave none) in a row by one stream, with their shards and
    reasons; ``skip`` raises TrainerError once ``limit`` is reached (0 = never)."""

    def __init__(self, limit: int, where: str):
        self.limit, self.where = limit, where
        self.reset()

    def reset(self) -> None:
        self.count, self.empty, self.shards, self.reasons = 0, 0, Counter(), Counter()

    def skip(self, url: str, reason: object, shard: bool = False) -> None:
        """Count a skipped sample (``shard=True``: a shard that gave no sample) of ``url``."""
        self.count += 1
        self.empty += shard
        self.shards[url] += 1
        self.reasons[_one_line(reason)] += 1
        if self.limit and self.count >= self.limit:
            raise TrainerError(self.message(f"{self.where}: {self.counts()} in a row were unusable "
                                            f"(--skip-limit {self.limit})"))

    def counts(self) -> str:
        n = self.count - self.empty
        parts = [f"{n} sample{'s' * (n != 1)}"] if n else []
        if self.empty:
            parts.append(f"{self.empty} empty or unreadable shard{'s' * (self.empty != 1)}")
        return " and ".join(parts) or "nothing"

    def message(self, lead: str) -> str:
        """One line: ``lead``, the shards (most skips first) and the reasons with their counts."""
        shards = [u for u, _ in self.shards.most_common()]
        names = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
        reasons = "; ".join(f"{r} (x{n})" for r, n in self.reasons.most_common(3))
        if len(self.reasons) > 3:
            reasons += f"; {len(self.reasons) - 3} other reasons"
        hint = ""
        if any("lacks" in r and ".mask.png" in r for r in self.reasons):
            hint = " (the trainer needs pairgen samples with silhouettes)"
        return f"{lead}: shards {names}: {reasons}{hint}"


def find_usable_pair(shards: "ShardSet", cfg: "StreamConfig", limit: int = SKIP_LIMIT) -> None:
    """Fail fast (TrainerError, naming the shards and reasons) unless a pair decodes within the
    first ``limit`` samples / shards, read in order. Samples lacking a member or failing to decode
    are skipped here as in the stream (wherever they are); only data with no usable pair is refused."""
    streak = SkipStreak(limit, "the start-up check of --shards")
    for url in shards.urls:
        errors: list[Exception] = []
        n = 0
        for s in read_shard(url, handler=lambda exc: errors.append(exc) or True, options=shards.options):
            n += 1
            try:
                decode_pair(s, cfg.img_size, cfg.patch_size, 0.0, None, keypoints=cfg.keypoints)
                return
            except ValueError as exc:
                streak.skip(url, exc)
        if errors or not n:
            streak.skip(url, f"unreadable shard: {errors[0]}" if errors else "no samples in the shard", shard=not n)
    raise TrainerError(streak.message(f"no usable pair in --shards ({len(shards.urls)} shard"
                                      f"{'s' * (len(shards.urls) != 1)}; {streak.counts()} unusable)"))


def parse_mix(spec: str) -> dict[str, float]:
    """``'aist=1,synthetic=0.5'`` -> ``{'aist': 1.0, 'synthetic': 0.5}``."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or out[name.strip()] < 0:
            raise TrainerError(f"bad --mix entry {item!r}; expected name=weight with weight >= 0")
    return out


@dataclass
class MixPlan:
    """Shard sampling weights (aligned with the URLs) and per-(source, kind) acceptance probabilities."""

    shard_weights: list[float]
    accept: dict[str, dict[str, float]]


def mix_plan(shards: ShardSet, spec: str) -> MixPlan | None:
    """Turn ``--mix`` into sampling weights so the stream's share of source s is ∝ w_s and, within
    each source, the share of kind k is ∝ w_k. Sources (kinds) not named are dropped; naming
    none keeps them all with weight 1.

    Shards are drawn with probability ∝ w_s / (N_s * acc_s) (N_s: pairs of s, acc_s: fraction
    of its pairs accepted), pairs of kind k are accepted with probability ∝ w_k / frac_{s,k}.
    """
    if not spec:
        return None
    weights = parse_mix(spec)
    if shards.manifest is None:
        raise TrainerError("--mix needs the shards' manifests (pass a build directory or tars next to manifest/)")
    df = shards.manifest
    kind_w = {k: w for k, w in weights.items() if k in fmt.KINDS}
    source_w = {s: w for s, w in weights.items() if s not in fmt.KINDS}
    unknown = sorted(set(source_w) - set(df["source"]))
    if unknown:
        raise TrainerError(f"--mix names sources absent from the shards: {', '.join(unknown)}")
    source_w = source_w or {s: 1.0 for s in df["source"].unique()}
    kind_w = kind_w or {k: 1.0 for k in fmt.KINDS}
    accept: dict[str, dict[str, float]] = {}
    per_url: dict[str, float] = {}
    for source, ws in source_w.items():
        sub = df[df["source"] == source]
        frac = sub["kind"].value_counts(normalize=True).to_dict()
        raw = {k: kind_w.get(k, 0.0) / f for k, f in frac.items()}
        if ws <= 0 or max(raw.values()) <= 0:
            continue
        top = max(raw.values())
        accept[source] = {k: v / top for k, v in raw.items()}
        acc = sum(frac[k] * accept[source][k] for k in frac)
        for url in sub["url"].unique():
            per_url[url] = ws / (len(sub) * acc)
    if not per_url:
        raise TrainerError(f"--mix {spec!r} leaves no pairs to train on")
    return MixPlan([per_url.get(u, 0.0) for u in shards.urls], accept)


# --------------------------------------------------------------------------- --data-split rank

STATE_KEYS = ("raw", "batches", "epoch", "epoch_raw", "epoch_batches")
"""A worker's data state, as batches carry it (the epoch keys with ``--data-split rank`` only)."""


def key_hash(key: str) -> int:
    """A sample key as a 64-bit integer, the same in every process (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


@dataclass
class EpochShare:
    """One slot's share of an epoch: ``batches`` (the same for every slot) and its shards with the
    keys (``key_hash``) of the pairs it takes from each."""

    batches: int
    shards: list[tuple[str, set[int]]]


class RankSplit:
    """``--data-split rank``: every epoch, the shards are split over the (rank, data-loader worker)
    slots, so the pairs of an epoch are disjoint across ranks and workers, and every slot yields the
    same number of batches (no rank runs out before another).

    An epoch, from the seed alone (every rank computes every slot's share itself, no communication):
    each shard is in it at a rate ``weight / max weight`` (``--mix``'s shard weights; 1 without
    ``--mix``), by systematic sampling (a shard of rate 1/3 is in every third epoch, from a seeded
    phase); each of its pairs is kept with its ``--mix`` acceptance probability of (source, kind)
    (a seeded draw per epoch and pair); the epoch's shards are shuffled and handed out in that order
    to the slot with the fewest pairs so far; every slot then yields ``min over slots of its pairs //
    batch_size`` batches. Needs the manifests (their keys and counts).
    """

    MAX_EMPTY_EPOCHS = 1000  # epochs in a row without a batch before the stream gives up

    def __init__(self, shards: ShardSet, mix: "MixPlan | None", batch_size: int):
        if shards.manifest is None:
            raise TrainerError("--data-split rank needs the shards' manifests (pass a build directory or tars "
                               "next to manifest/), or use --data-split resample")
        self.urls, self.batch_size = list(shards.urls), batch_size
        rows = {url: sub for url, sub in shards.manifest.groupby("url", sort=False)}
        self.hashes: list[np.ndarray] = []  # uint64 [pairs of the shard]
        self.accept: list[np.ndarray | None] = []  # float64 [pairs] (None: every pair kept)
        for url in self.urls:
            sub = rows.get(url)
            keys = [] if sub is None else sub["key"].tolist()
            self.hashes.append(np.array([key_hash(k) for k in keys], np.uint64))
            if mix is None or sub is None:
                self.accept.append(None)
            else:
                self.accept.append(np.array([mix.accept.get(s, {}).get(k, 0.0)
                                             for s, k in zip(sub["source"], sub["kind"])], np.float64))
        weights = np.asarray(mix.shard_weights if mix is not None else [1.0] * len(self.urls), np.float64)
        self.rate = weights / weights.max() if len(weights) and weights.max() > 0 else weights

    def share(self, epoch: int, seed: int, slots: int, slot: int) -> EpochShare:
        """Slot ``slot``'s share (of ``slots``) of epoch ``epoch``."""
        phase = np.random.default_rng([seed, 1]).random(len(self.urls))
        inside = np.floor((epoch + 1) * self.rate + phase) > np.floor(epoch * self.rate + phase)
        order = np.flatnonzero(inside)
        order = order[np.random.default_rng([seed, epoch, 2]).permutation(len(order))]
        kept: dict[int, np.ndarray] = {}
        for i in order.tolist():
            n = len(self.hashes[i])
            if self.accept[i] is None:
                kept[i] = np.ones(n, bool)
            else:
                kept[i] = np.random.default_rng([seed, epoch, 3, i]).random(n) < self.accept[i]
        heap = [(0, s) for s in range(slots)]  # (pairs so far, slot): the fewest pairs first, then the lowest slot
        mine, counts = [], [0] * slots
        for i in order.tolist():
            n = int(kept[i].sum())
            if not n:
                continue
            count, s = heapq.heappop(heap)
            counts[s] = count + n
            heapq.heappush(heap, (count + n, s))
            if s == slot:
                mine.append((self.urls[i], set(self.hashes[i][kept[i]].tolist())))
        return EpochShare(min(counts) // self.batch_size, mine)

    def check(self, seed: int, slots: int) -> None:
        """TrainerError when the first epoch gives some slot less than one batch."""
        share = self.share(0, seed, slots, 0)
        if share.batches == 0:
            n = int(sum(1 for r in self.rate if r > 0))
            raise TrainerError(f"--data-split rank: the first epoch of {n} shard{'s' * (n != 1)} split over {slots} "
                               f"(ranks x data-loader workers) leaves some of them fewer than --batch-size "
                               f"{self.batch_size} pairs; use fewer --workers, a smaller --batch-size, more shards, "
                               "or --data-split resample")



# --------------------------------------------------------------------------- decoding one pair


def random_crop(img: np.ndarray, mask: np.ndarray, size: int,
                rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, tuple[int, int, float]]:
    """Crop ``img`` [S, S, 3] and its silhouette [S, S] with the same window (random, or centred
    when ``rng`` is None) -> (img [size, size, 3], mask [size, size], (y0, x0, scale)).
    Images smaller than ``size`` are first resized up (bilinear image, nearest silhouette)."""
    scale = 1.0
    if min(img.shape[:2]) < size:
        scale = size / min(img.shape[:2])
        hw = (max(size, round(img.shape[1] * scale)), max(size, round(img.shape[0] * scale)))
        img = cv2.resize(img, hw, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, hw, interpolation=cv2.INTER_NEAREST)
    h, w = mask.shape
    if rng is None:
        y0, x0 = (h - size) // 2, (w - size) // 2
    else:
        y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[y0:y0 + size, x0:x0 + size], mask[y0:y0 + size, x0:x0 + size], (y0, x0, scale)


def _decode_mask(data: bytes) -> np.ndarray:
    m = fmt.decode_gray_png(data)  # the contract's own silhouettes: a fast path
    if m is not None and m.dtype == np.uint8:
        return m
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ValueError("corrupt silhouette PNG")
    return m


def _keypoints(meta: dict, y0: int, x0: int, scale: float, size: int) -> np.ndarray:
    """``[13, 3]`` PennAction joints (x, y, weight) in crop pixels from the reference's COCO-17 list."""
    out = np.zeros((len(PENN_FROM_COCO), 3), np.float32)
    raw13 = meta.get("pennaction13_reference")  # Penn Action samples carry the 13 joints themselves
    kps = meta.get("keypoints_reference")
    if raw13:
        arr = np.asarray(raw13, np.float32).reshape(-1, 3)
        if arr.shape[0] != len(PENN_FROM_COCO):
            raise ValueError(f"pennaction13_reference has {arr.shape[0]} joints, expected 13")
        out[:] = arr
    elif kps:
        arr = np.asarray(kps, np.float32).reshape(-1, 3)
        if arr.shape[0] != len(fmt.COCO17):
            raise ValueError(f"keypoints_reference has {arr.shape[0]} joints, expected 17")
        out[:] = arr[list(PENN_FROM_COCO)]
    else:
        return out
    out[:, 0] = out[:, 0] * scale - x0
    out[:, 1] = out[:, 1] * scale - y0
    inside = (out[:, 0] >= 0) & (out[:, 0] < size) & (out[:, 1] >= 0) & (out[:, 1] < size)
    out[:, 2] = np.where(inside, np.clip(out[:, 2], 0.0, 1.0), 0.0)
    return out


def decode_pair(sample: dict, size: int, patch: int, jitter: float,
                rng: np.random.Generator | None, reference_mask: bool = False, keypoints: bool = True) -> dict:
    """One raw webdataset sample -> cropped arrays; raises ValueError on missing or corrupt members.

    Returns target/reference uint8 ``[size, size, 3]``, ``human`` ``[N]`` (person fraction of
    each target patch), ``jitter`` ``[2, 3]`` (brightness, contrast, saturation per image),
    ``kp`` ``[13, 3]`` (zeros when ``keypoints=False``), and the crops' silhouettes (``target_mask``; ``reference_mask`` only when
    ``reference_mask=True``, else None).
    """
    missing = [m for m in fmt.REQUIRED_SUFFIXES if m not in sample]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    member = fmt.META_JSON
    try:
        meta = orjson.loads(sample[member])
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        member = fmt.TARGET_JPG
        tgt = simplejpeg.decode_jpeg(sample[member], colorspace="RGB")
        member = fmt.REFERENCE_JPG
        ref = simplejpeg.decode_jpeg(sample[member], colorspace="RGB")
    except (ValueError, RuntimeError, UnicodeDecodeError) as exc:  # simplejpeg: ValueError/RuntimeError
        raise ValueError(f"corrupt {member}: {exc}") from exc
    tmask = _decode_mask(sample[fmt.TARGET_MASK])
    # the reference silhouette is only size-checked (from its PNG header) unless asked for
    rmask = _decode_mask(sample[fmt.REFERENCE_MASK]) if reference_mask else None
    rsize = rmask.shape[::-1] if rmask is not None else fmt.read_png_size(sample[fmt.REFERENCE_MASK])
    if tmask.shape != tgt.shape[:2] or tuple(rsize) != (ref.shape[1], ref.shape[0]):
        raise ValueError("silhouette size differs from its image")
    tgt, tmask, _ = random_crop(tgt, tmask, size, rng)
    ref, rmask, (ry0, rx0, rs) = random_crop(ref, rmask if rmask is not None else ref[..., 0], size, rng)
    g = size // patch
    # per-patch person fraction: an area resize by an integer factor is the exact block mean, in C
    human = cv2.resize(tmask.astype(np.float32), (g, g), interpolation=cv2.INTER_AREA).reshape(-1) / 255.0
    if rng is None or jitter <= 0:
        factors = np.ones((2, 3), np.float32)
    else:
        factors = rng.uniform(1 - jitter, 1 + jitter, size=(2, 3)).astype(np.float32)
    return {"target": tgt, "reference": ref, "human": human, "jitter": factors,
            "kp": _keypoints(meta, ry0, rx0, rs, size) if keypoints else np.zeros((len(PENN_FROM_COCO), 3), np.float32),
            "kind": meta.get("kind", ""),
            "source": meta.get("source", ""), "key": sample["__key__"],
            "target_mask": tmask, "reference_mask": rmask if reference_mask else None}


# --------------------------------------------------------------------------- labels (trainer probe)


def crop_keypoints(kps, y0: int, x0: int, scale: float, size: int, joints: int = len(fmt.COCO17)) -> np.ndarray:
    """``[[x, y, v], ...]`` in image pixels -> ``[J, 3]`` float32 in the pixels of the crop
    ``(y0, x0, scale)`` (``random_crop``'s window); v becomes 0 for joints outside the crop.
    ValueError unless there are ``joints`` joints."""
    arr = np.asarray(kps, np.float32).reshape(-1, 3) if len(kps) else np.zeros((0, 3), np.float32)
    if arr.shape[0] != joints:
        raise ValueError(f"{arr.shape[0]} keypoints, expected {joints}")
    out = arr.copy()
    out[:, 0] = arr[:, 0] * scale - x0
    out[:, 1] = arr[:, 1] * scale - y0
    inside = (out[:, 0] >= 0) & (out[:, 0] < size) & (out[:, 1] >= 0) & (out[:, 1] < size)
    out[:, 2] = np.where(inside & np.isfinite(out[:, :2]).all(axis=1), arr[:, 2], 0.0)
    return np.nan_to_num(out)


def decode_probe_sample(sample: dict, size: int, patch: int, depth: bool = False) -> dict:
    """One raw sample -> the target's centre crop (the eval crop of ``decode_pair``) with its labels.

    Returns ``target``, ``reference`` uint8 ``[size, size, 3]``, ``mask`` uint8 ``[size, size]``
    (person = 255), ``keypoints`` ``[17, 3]`` (COCO-17 x, y, visibility in crop pixels; None when
    the JSON has none), ``depth`` uint16 ``[size, size]`` mm (with ``depth=True``; None when the
    sample has no depth map) and ``key``. ValueError on missing or corrupt members, as ``decode_pair``.
    """
    pair = decode_pair(sample, size, patch, 0.0, None, keypoints=False)
    meta = orjson.loads(sample[fmt.META_JSON])
    raw_mask = _decode_mask(sample[fmt.TARGET_MASK])
    _, _, (y0, x0, scale) = random_crop(raw_mask, raw_mask, size, None)  # the window decode_pair used
    kps = meta.get("keypoints_target")
    out = {"target": pair["target"], "reference": pair["reference"], "mask": pair["target_mask"],
           "key": sample["__key__"], "depth": None,
           "keypoints": crop_keypoints(kps, y0, x0, scale, size) if kps else None}
    if depth and fmt.TARGET_DEPTH in sample:
        d = fmt.decode_gray_png(sample[fmt.TARGET_DEPTH])
        if d is None:
            d = cv2.imdecode(np.frombuffer(sample[fmt.TARGET_DEPTH], np.uint8), cv2.IMREAD_UNCHANGED)
        if d is None or d.dtype != np.uint16 or d.shape != raw_mask.shape:
            raise ValueError("corrupt target.depth.png (not 16-bit, or not the image's size)")
        out["depth"] = random_crop(d, d, size, None)[1]  # the "mask" slot: resized nearest, never blended
    return out


# --------------------------------------------------------------------------- the stream


@dataclass
class StreamConfig:
    """What PairStream needs (filled from the run config)."""

    img_size: int = 224
    patch_size: int = 16
    batch_size: int = 8
    masking: str = "human"
    mask_ratio: float = 0.75
    human_threshold: float = 0.0
    loss_patches: str = "masked"  # "human": the batch's "masked" keeps only the masked human patches
    color_jitter: float = 0.4
    shuffle_buffer: int = 1000
    seed: int = 0
    keypoints: bool = False  # reference keypoints for the keypoint loss (parsed only when it is on)
    train: bool = True  # False: one pass over the shards, centre crops, no jitter/shuffle, last partial batch kept
    skip_limit: int = SKIP_LIMIT  # training: error after this many skipped samples / empty shards in a row (0 = never)


def _shuffle(src: Iterator, bufsize: int, rng: random.Random) -> Iterator:
    """Reservoir-style shuffle with a buffer of ``bufsize`` items (deterministic for a seeded rng)."""
    buf = []
    for item in src:
        buf.append(item)
        if len(buf) >= bufsize:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class PairStream(torch.utils.data.IterableDataset):
    """Batches of pairs (dicts of tensors), for ``DataLoader(stream, batch_size=None)``.

    ``state`` maps logical worker id -> ``{"raw": samples consumed, "batches": batches emitted}``
    (with ``split``, also the epoch, and the samples and batches of it consumed: ``STATE_KEYS``);
    ``worker_offset`` (batches already consumed modulo the number of workers) rotates worker ids
    so that the DataLoader's round-robin continues where the previous run stopped. A training
    stream resamples shards, or with ``split`` (``--data-split rank``) reads each epoch's share of
    this (rank, worker) (see ``RankSplit``).
    """

    def __init__(self, shards: ShardSet, cfg: StreamConfig, rank: int = 0, world: int = 1,
                 mix: MixPlan | None = None, state: dict | None = None, worker_offset: int = 0,
                 verbose: bool = True, split: RankSplit | None = None):
        super().__init__()
        self.urls, self.cfg, self.rank, self.world, self.mix = shards.urls, cfg, rank, world, mix
        self.split = split
        self.options = shards.options  # storage options: each worker opens its own filesystem
        self.state = {int(k): v for k, v in (state or {}).items()}
        self.worker_offset, self.verbose = worker_offset, verbose
        self.owner_pid = os.getpid()  # the process that iterates the DataLoader

    # -- shard order
    def _urls(self, rng: random.Random, worker: int, num_workers: int) -> Iterator[str]:
        if self.cfg.train:  # resampled: endless, each (rank, worker) with its own RNG
            weights = self.mix.shard_weights if self.mix else None
            while True:
                yield rng.choices(self.urls, weights=weights)[0]
        else:  # one pass, split across ranks then workers
            yield from self.urls[self.rank::self.world][worker::num_workers]

    def _raw(self, urls: Iterator[str], streak: SkipStreak, keep=None) -> Iterator[dict]:
        """Raw samples (bytes) of the shards in order, those ``keep(url, sample)`` accepts (all when
        None); unreadable tars are skipped and reported (once per shard), and a shard that gives no
        sample counts in ``streak``."""
        warned: set[str] = set()
        for url in urls:
            n, errors = 0, []
            for s in read_shard(url, handler=lambda exc: errors.append(exc) or True, options=self.options):
                n += 1
                if keep is None or keep(url, s):
                    yield s
            if errors and self.verbose and url not in warned:
                warned.add(url)
                print(f"trainer: warning: skipping {'the rest of ' if n else ''}shard {url}: "
                      f"{_one_line(errors[0])}", file=sys.stderr)
            if not n:
                streak.skip(url, f"unreadable shard: {errors[0]}" if errors else "no samples in the shard", shard=True)

    def _accepted(self, s: dict, rng: random.Random) -> bool:
        try:
            meta = orjson.loads(s[fmt.META_JSON])
        except (KeyError, ValueError):
            return True  # let decode_pair count it as corrupt
        a = self.mix.accept.get(meta.get("source"), {}).get(meta.get("kind"), 0.0)
        return rng.random() < a

    def __iter__(self) -> Iterator[dict]:
        """Batches; in a data-loader worker, a TrainerError (too many skips in a row) is sent as one
        ``{"error": message}`` item, which ``check_batch`` raises in the main process (an exception
        raised in a worker would reach it wrapped in a multi-line traceback)."""
        info = torch.utils.data.get_worker_info()
        if info is None:
            yield from self._batches(None)
            return
        # Ctrl-C reaches the whole process group: the main process stops cleanly (checkpoint at the
        # end of its step) and shuts the workers down; they must not die under it first
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_with(self.owner_pid)
        try:
            yield from self._batches(info)
        except TrainerError as exc:
            yield {"error": str(exc)}

    def _batches(self, info) -> Iterator[dict]:
        num_workers, phys = (info.num_workers, info.id) if info else (1, 0)
        if info is not None:
            torch.set_num_threads(1)
            cv2.setNumThreads(1)
        worker = (phys + self.worker_offset) % num_workers
        cfg = self.cfg
        where = "the data loader" if info is None else f"data-loader worker {worker} of {num_workers}"
        if self.world > 1:
            where += f" on rank {self.rank}"
        streak = SkipStreak(cfg.skip_limit if cfg.train else 0, where)
        state = self.state.get(worker, {"raw": 0, "batches": 0})
        if cfg.train and self.split is not None:
            yield from self._split_batches(worker, num_workers, state, streak)
            return
        rng = random.Random(f"{cfg.seed}-{self.rank}-{worker}")
        keep = (lambda url, s: self._accepted(s, rng)) if self.mix is not None else None
        raw = self._raw(self._urls(rng, worker, num_workers), streak, keep)
        if cfg.train and cfg.shuffle_buffer > 1:
            raw = _shuffle(raw, cfg.shuffle_buffer, rng)
        yield from self._assemble(raw, worker, {"raw": 0, "batches": state["batches"]}, state["raw"], streak)

    def _split_batches(self, worker: int, num_workers: int, state: dict, streak: SkipStreak) -> Iterator[dict]:
        """``--data-split rank``: epoch after epoch, exactly the epoch's batch count from this slot's
        share, read in a seeded shuffled order; a share that runs short (samples that failed to
        decode) is read again, reshuffled, so every slot keeps in step. Batches carry the epoch
        counters; a resume starts at the saved epoch without reading the epochs before it."""
        cfg, split = self.cfg, self.split
        slots, slot = self.world * num_workers, self.rank * num_workers + worker
        epoch, done = state.get("epoch", 0), state.get("epoch_batches", 0)
        start = state["raw"] - state.get("epoch_raw", 0)  # samples consumed before this epoch
        pos = {"raw": start, "batches": state["batches"]}
        empty = 0
        while True:
            share = split.share(epoch, cfg.seed, slots, slot)
            empty = 0 if share.batches else empty + 1
            if empty >= split.MAX_EMPTY_EPOCHS:
                raise TrainerError(f"{streak.where}: --data-split rank: {empty} epochs in a row left some worker "
                                   f"less than --batch-size {cfg.batch_size} pairs; use --data-split resample")
            if share.batches > done:
                rng = random.Random(f"{cfg.seed}-{self.rank}-{worker}-epoch{epoch}")
                raw = self._share_samples(share, epoch, rng, streak, pos)
                for batch in self._assemble(raw, worker, pos, state["raw"], streak, share.batches - done):
                    done += 1
                    yield {**batch, "epoch": epoch, "epoch_raw": batch["raw"] - start, "epoch_batches": done}
            pos["raw"] = max(pos["raw"], state["raw"])  # (an epoch that ended before the resume)
            epoch, done, start = epoch + 1, 0, pos["raw"]

    def _share_samples(self, share: EpochShare, epoch: int, rng: random.Random, streak: SkipStreak,
                       pos: dict) -> Iterator[dict]:
        """Raw samples of this slot's share of an epoch, shuffled; endless (read again, reshuffled,
        while batches are wanted). TrainerError if a whole pass gives nothing usable."""
        urls, keys = [u for u, _ in share.shards], {}
        for url, hashes in share.shards:
            keys.setdefault(url, set()).update(hashes)
        keep = lambda url, s: key_hash(s["__key__"]) in keys[url]  # noqa: E731
        while True:
            before = pos.get("pairs", 0) + pos.get("passed", 0)
            raw = self._raw(iter(urls), streak, keep)
            yield from _shuffle(raw, self.cfg.shuffle_buffer, rng) if self.cfg.shuffle_buffer > 1 else raw
            if pos.get("pairs", 0) + pos.get("passed", 0) == before:  # a whole pass without a usable pair
                lead = (f"{streak.where}: no usable pair in its share of epoch {epoch} ({len(urls)} shard"
                        f"{'s' * (len(urls) != 1)}), so the ranks cannot keep in step (--data-split rank)")
                raise TrainerError(streak.message(lead) if streak.count else lead)

    def _assemble(self, raw: Iterator[dict], worker: int, pos: dict, skip: int, streak: SkipStreak,
                  limit: int | None = None) -> Iterator[dict]:
        """Batches from raw samples: each decoded (crops, jitter) into the batch arrays, collated with
        its masks. ``pos`` holds this worker's counters, advanced in place: ``raw`` (samples seen; those
        up to ``skip`` were consumed before a resume and are passed over without decoding: counted in
        ``passed``), ``batches`` (emitted) and ``pairs`` (decoded). Stops after ``limit`` batches, or
        when ``raw`` ends (an evaluation stream then yields its last, partial batch)."""
        cfg = self.cfg
        corrupt, pairs, emitted = 0, [], 0
        images = None  # the batch's image arrays, filled as pairs decode (while each is in cache)
        for s in raw:
            pos["raw"] += 1
            n_raw = pos["raw"]
            if n_raw <= skip:
                pos["passed"] = pos.get("passed", 0) + 1
                continue  # consumed before the resume: skipped without decoding
            sample_rng = np.random.default_rng([cfg.seed, self.rank, worker, n_raw]) if cfg.train else None
            try:
                pair = decode_pair(s, cfg.img_size, cfg.patch_size, cfg.color_jitter, sample_rng,
                                   keypoints=cfg.keypoints)
            except ValueError as exc:
                corrupt += 1
                if self.verbose and corrupt <= 3:
                    print(f"trainer: warning: skipping corrupt sample {s.get('__key__')}: {_one_line(exc)}",
                          file=sys.stderr)
                streak.skip(s["__url__"], exc)
                continue
            streak.reset()
            pos["pairs"] = pos.get("pairs", 0) + 1
            if images is None:
                images = {k: np.empty((cfg.batch_size, *pair[k].shape), np.uint8) for k in ("target", "reference")}
            for k, arr in images.items():
                arr[len(pairs)] = pair[k]
            pairs.append(pair)
            if len(pairs) == cfg.batch_size:
                batch = self._collate(pairs, images, worker, n_raw, pos["batches"], corrupt)
                pos["batches"] += 1
                corrupt, pairs, images, emitted = 0, [], None, emitted + 1
                yield batch
                if limit is not None and emitted >= limit:
                    return
        if pairs and not cfg.train:
            yield self._collate(pairs, images, worker, pos["raw"], pos["batches"], corrupt)
        elif corrupt and not cfg.train:  # nothing left to batch: still report the skipped pairs
            yield {"key": [], "kind": [], "source": [], "corrupt": corrupt}

    def _collate(self, pairs: list[dict], images: dict, worker: int, n_raw: int, n_batches: int,
                 corrupt: int) -> dict:
        cfg = self.cfg
        n = len(pairs)
        human = np.stack([p["human"] for p in pairs])
        rng = np.random.default_rng([cfg.seed, self.rank, worker, n_batches, 1])
        if cfg.masking == "human":
            visible = human_centric_visible(human > cfg.human_threshold, cfg.mask_ratio, rng)
        else:
            visible = uniform_visible(len(pairs), human.shape[1], cfg.mask_ratio, rng)
        hidden = masked_from_visible(visible, human.shape[1])
        return {
            "target": torch.from_numpy(images["target"][:n]),  # [B, H, W, 3] uint8
            "reference": torch.from_numpy(images["reference"][:n]),
            "jitter": torch.from_numpy(np.stack([p["jitter"] for p in pairs])),  # [B, 2, 3]
            "human": torch.from_numpy(human),  # [B, N]
            "visible": torch.from_numpy(visible),  # [B, L]
            "hidden": torch.from_numpy(hidden),  # [B, N] every masked patch
            # [B, N] the patches the loss counts (--loss-patches): all masked ones, or the masked human ones
            "masked": torch.from_numpy(loss_patches(hidden, human > cfg.human_threshold, cfg.loss_patches)),
            "kp": torch.from_numpy(np.stack([p["kp"] for p in pairs])),  # [B, 13, 3]
            "kind": [p["kind"] for p in pairs],
            "source": [p["source"] for p in pairs],
            "key": [p["key"] for p in pairs],
            "worker": worker, "raw": n_raw, "batches": n_batches + 1, "corrupt": corrupt,
        }


def _exit_with(pid: int) -> None:
    """In a data-loader worker: end this process as soon as process ``pid`` (the trainer) has ended.

    Workers are children of the fork server, not of the trainer, and each holds the fork server's
    "alive" pipe: when the trainer is killed outright (SIGKILL, the OOM killer) neither the fork
    server nor torch's parent watchdog in the workers notices, and all of them would stay forever.
    """
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        try:  # a zombie still answers os.kill
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return False

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])  # readable once the process has ended (zombie or reaped)
        else:
            while not gone():
                time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="trainer-watch", daemon=True).start()


def check_batch(batch: dict) -> dict:
    """``batch``, or TrainerError with the message a data-loader worker sent instead of a batch."""
    if "error" in batch:
        raise TrainerError(batch["error"])
    return batch


def make_loader(stream: PairStream, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """DataLoader over a PairStream (batches are built in the workers).

    Workers start from a fork server, not by forking this process: a plain fork copies whatever
    thread pools the parent already runs (OpenCV's, OpenMP's) with their locks possibly held, and
    a worker that then decodes with OpenCV can hang forever.
    """
    import multiprocessing as mp

    ctx = None
    if workers > 0 and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None, persistent_workers=False, multiprocessing_context=ctx)


# --------------------------------------------------------------------------- on the device


def to_model_input(u8: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> colour-jittered (brightness, contrast, saturation, in that order;
    factors ``[B, 3]``, 1 = unchanged) and ImageNet-normalised float ``[B, 3, H, W]``."""
    x = u8.permute(0, 3, 1, 2).float().div_(255.0)
    if jitter is not None and not bool((jitter == 1).all()):
        f = jitter.to(x.device, torch.float32)[:, :, None, None, None]  # [B, 3, 1, 1, 1]
        gray_w = torch.tensor([0.299, 0.587, 0.114], device=x.device)[None, :, None, None]
        y = (x * f[:, 0]).clamp(0, 1)
        mean = (y * gray_w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        y = ((y - mean) * f[:, 1] + mean).clamp_(0, 1)
        gray = (y * gray_w).sum(1, keepdim=True)
        y = ((y - gray) * f[:, 2] + gray).clamp_(0, 1)
        # images whose factors are all 1 keep their exact pixels ((x - m) * 1 + m is not bitwise x)
        same = (jitter == 1).all(dim=1).to(x.device)[:, None, None, None]
        x = torch.where(same, x, y)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[None, :, None, None]
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``[B, 3, H, W]`` -> [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[None, :, None, None]
    return (x * std + mean).clamp(0, 1)


def stream_config(cfg, model_cfg, train: bool = True, batch_size: int | None = None) -> StreamConfig:
    """StreamConfig from a PretrainConfig and ModelConfig."""
    return StreamConfig(img_size=model_cfg.img_size, patch_size=model_cfg.patch_size,
                        batch_size=batch_size or cfg.batch_size, masking=cfg.masking,
                        mask_ratio=cfg.mask_ratio, human_threshold=cfg.human_threshold,
                        loss_patches=cfg.loss_patches, color_jitter=cfg.color_jitter,
                        shuffle_buffer=cfg.shuffle_buffer,
                        seed=cfg.seed, keypoints=cfg.kp_loss_weight > 0, train=train,
                        skip_limit=cfg.skip_limit)

