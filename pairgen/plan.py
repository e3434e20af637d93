"""A build's plan on disk: ``OUT/plan-<source>.parquet``, written as it is made, read lazily.

The driver never holds the whole plan. :func:`write_plan` streams the tasks a source yields into a
Parquet file (row groups of :data:`ROWS_PER_GROUP` tasks, fewer when their payloads pass
:data:`GROUP_BYTES`), staged locally and published atomically;
what stays in memory is one :class:`TaskRef` per shard (index, pairs planned, task digest: ~100
bytes, however many pairs the shard holds). :class:`Plan` hands the tasks out one at a time,
reading a row group's payloads only when its first task is wanted, so the driver's memory does
not grow with the number of planned pairs (a payload is ~1 KB a pair as Python objects: 5M pairs
would be ~7 GB). A resumed build reads the same file instead of planning again.

Columns: ``index`` (int64), ``planned`` (int64), ``digest`` (what the shard is planned to hold,
recorded in its stats: a shard of another plan is rebuilt), ``payload`` (the task's JSON). Schema
metadata: ``identity`` (the build settings' digest: a plan of other settings is not reused) and
``source``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Iterable, Iterator

from manifests import layout
from manifests.storage import Store
from pairgen.config import BuildConfig
from pairgen.sources.base import ShardTask

ROWS_PER_GROUP = 64  # tasks per Parquet row group at most: what the driver reads (and holds) at a time
GROUP_BYTES = 1 << 20  # ...and payload JSON per row group (a group is closed once it holds more): what
# the driver buffers and reads back stays ~1 MB whatever the pairs per shard (64 shards of 500 pairs
# are 8-30 MB of JSON; measured: with 4 MB groups the driver's peak grew 24 MB over 744 shards, with
# 1 MB groups not at all)
COLUMNS = ("index", "planned", "digest", "payload")
DESCRIPTIONS = {
    "index": "shard number: the shard is <source>-<index:06d>.tar",
    "planned": "pairs planned for the shard (built + skipped == planned once it is built)",
    "digest": "sha256 prefix of the task (planned + payload), recorded in the shard's stats",
    "payload": "the task as JSON: what the worker builds (source-specific)",
}


def task_digest(task: ShardTask) -> str:
    """What a shard is planned to hold (recorded in its stats: a shard of another plan is rebuilt)."""
    blob = json.dumps({"planned": task.planned, "payload": task.payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TaskRef:
    """One shard of the plan, without its payload."""

    index: int
    planned: int
    digest: str
    group: int  # its row group in the plan file


def _schema(config: BuildConfig):
    import pyarrow as pa

    fields = [pa.field("index", pa.int64(), nullable=False), pa.field("planned", pa.int64(), nullable=False),
              pa.field("digest", pa.string(), nullable=False), pa.field("payload", pa.string(), nullable=False)]
    fields = [f.with_metadata({"description": DESCRIPTIONS[f.name]}) for f in fields]
    return pa.schema(fields, metadata={"identity": config.identity_digest(), "source": config.source})


def write_plan(store: Store, config: BuildConfig, tasks: Iterable[ShardTask]) -> "Plan":
    """Stream ``tasks`` (any order, each index once) into ``OUT/plan-<source>.parquet`` and return the
    :class:`Plan` reading it. The file is staged in OUT's scratch folder and published whole; a
    ValueError from the source (bad input met while planning) propagates with nothing published.
    An empty plan is published as nothing: ``Plan.refs`` is empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(config)
    staged = os.path.join(store.scratch(layout.TMP_DIR), f"plan-{config.source}.{os.getpid()}.partial")
    refs: list[TaskRef] = []
    rows: list[tuple[int, int, str, str]] = []  # (index, planned, digest, payload JSON): ~0.3 KB a pair, not ~1 KB as objects
    groups = 0
    buffered = 0  # payload characters in rows
    try:
        with pq.ParquetWriter(staged, schema, compression="zstd") as writer:
            def flush() -> None:
                nonlocal groups, buffered
                cols = list(zip(*rows))
                writer.write_table(pa.table(dict(zip(COLUMNS, cols)), schema=schema), row_group_size=len(rows))
                refs.extend(TaskRef(i, n, d, groups) for i, n, d, _ in rows)
                rows.clear()
                groups += 1
                buffered = 0

            for task in tasks:
                payload = json.dumps(task.payload, separators=(",", ":"))
                rows.append((task.index, task.planned, task_digest(task), payload))
                buffered += len(payload)
                if len(rows) == ROWS_PER_GROUP or buffered >= GROUP_BYTES:
                    flush()
            if rows:
                flush()
        indexes = [r.index for r in refs]
        if len(set(indexes)) != len(indexes):
            raise RuntimeError(f"source {config.source} planned a shard index twice")  # a bug, not bad input
        if not refs:
            os.unlink(staged)
            return Plan(store, config.source, None, [])
        keep = None if store.local else staged + ".read"
        if keep:  # object storage: the driver reads payloads from a local copy
            os.link(staged, keep)
        store.put_file(layout.plan_tasks_rel(config.source), staged)
    except BaseException:
        for p in (staged, staged + ".read"):
            try:
                os.unlink(p)
            except OSError:
                pass
        raise
    local = keep or store.path(layout.plan_tasks_rel(config.source))
    return Plan(store, config.source, local, refs, owned=keep is not None)


def load_plan(store: Store, config: BuildConfig) -> "Plan | None":
    """The saved plan of a build with these settings, or None (no plan, or another build's). Raises
    whatever pyarrow or the store raise for a damaged file (the caller plans again)."""
    import pyarrow.parquet as pq

    rel = layout.plan_tasks_rel(config.source)
    if store.stat(rel) is None:
        return None
    owned = not store.local
    if owned:
        fd, local = tempfile.mkstemp(prefix=f"pairgen-plan-{config.source}-", suffix=".parquet")
        os.close(fd)
        try:
            with store.open(rel, "rb") as src, open(local, "wb") as dst:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
        except BaseException:
            os.unlink(local)
            raise
    else:
        local = store.path(rel)
    try:
        with pq.ParquetFile(local) as f:
            refs = _read_refs(f, config)
    except LookupError:
        if owned:
            os.unlink(local)
        return None
    except BaseException:
        if owned:
            os.unlink(local)
        raise
    return Plan(store, config.source, local, refs, owned=owned)


def _read_refs(f, config: BuildConfig) -> list[TaskRef]:
    """The refs of an open plan file (LookupError: another build's plan)."""
    meta = {k.decode(): v.decode() for k, v in (f.schema_arrow.metadata or {}).items()}
    if meta.get("identity") != config.identity_digest():
        raise LookupError
    names = f.schema_arrow.names
    refs: list[TaskRef] = []
    for g in range(f.num_row_groups):
        if "digest" in names:
            t = f.read_row_group(g, columns=["index", "planned", "digest"])
            digests = t.column("digest").to_pylist()
        else:  # a plan written before the digest column: computed from the payloads, a group at a time
            t = f.read_row_group(g, columns=["index", "planned", "payload"])
            digests = [task_digest(ShardTask(config.source, int(i), int(n), json.loads(p))) for i, n, p in
                       zip(*(t.column(c).to_pylist() for c in ("index", "planned", "payload")))]
        refs.extend(TaskRef(int(i), int(n), d, g) for i, n, d in
                    zip(t.column("index").to_pylist(), t.column("planned").to_pylist(), digests))
    return refs


class Plan:
    """Every shard of a build's plan (:class:`TaskRef`, in index order) and its tasks on demand."""

    def __init__(self, store: Store, source: str, local: str | None, refs: list[TaskRef], owned: bool = False):
        self.source = source
        self.local = local  # the plan file on this machine (a copy for object storage)
        self.refs = sorted(refs, key=lambda r: r.index)
        self._owned = owned
        self._group: tuple[int, dict[int, str]] | None = None  # the row group read last: {index: payload}

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def pairs(self) -> int:
        return sum(r.planned for r in self.refs)

    def name(self, ref: TaskRef) -> str:
        return layout.shard_name(self.source, ref.index)

    def task(self, ref: TaskRef) -> ShardTask:
        """The whole task of ``ref`` (its row group read once while consecutive tasks are asked for)."""
        if self._group is None or self._group[0] != ref.group:
            import pyarrow.parquet as pq

            with pq.ParquetFile(self.local) as f:
                t = f.read_row_group(ref.group, columns=["index", "payload"])
            self._group = (ref.group, dict(zip(t.column("index").to_pylist(), t.column("payload").to_pylist())))
        return ShardTask(self.source, ref.index, ref.planned, json.loads(self._group[1][ref.index]))

    def tasks(self, refs: list[TaskRef] | None = None) -> "Tasks":
        return Tasks(self, self.refs if refs is None else refs)

    def close(self) -> None:
        self._group = None
        if self._owned and self.local:
            try:
                os.unlink(self.local)
            except OSError:
                pass
            self._owned = False


class Tasks:
    """Some of a plan's tasks, read as they are iterated: ``len()``, ``planned`` ({shard: pairs}) and
    iteration in index order; what the distributor is given."""

    def __init__(self, plan: Plan, refs: list[TaskRef]):
        self.plan = plan
        self.refs = list(refs)
        self.planned = {plan.name(r): r.planned for r in self.refs}

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[ShardTask]:
        for ref in self.refs:
            yield self.plan.task(ref)
