"""Distributor: runs shard tasks on Ray actors (or in-process), retries failures, shows progress.

One actor per worker holds the source's expensive state (built once), and builds whole shards,
reporting each pair to a progress board as it goes. A shard is published (tar, manifest, stats:
see :mod:`pairgen.writer`) by its actor: at once for a local OUT (renames), in a background
thread for object storage, so that a shard's upload overlaps the building of the next one. An
actor's ``run`` therefore returns the shards whose publishing finished (this one, or the one
before); the driver counts a shard done only then, and re-queues an actor's unconfirmed shards if
the actor dies. A task that raises is retried (``--retries``) on any actor; a shard that still
fails is returned as a failure: the build finishes the rest. An
:class:`~pairgen.writer.OutputError` (full disk, read-only output, a refusing store) is not
retried: the build stops at once, keeping every finished shard.

On a cluster (``--ray-address``) every actor must run the driver's code (same version and
sources: :func:`pairgen.code_digest`), and a local ``--out`` must be seen by every node.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque

from tqdm import tqdm

from manifests import layout
from manifests.storage import Store, parse_options
from pairgen.config import BuildConfig
from pairgen.sources.base import ShardTask
from pairgen.writer import OutputError, Staged, publish

REPORT_EVERY_S = 0.5  # how often a worker tells the progress board, and the driver reads it


class Publisher:
    """Publishes a worker's staged shards in order: synchronously for a local OUT, in a background
    thread for object storage (one shard in flight: the next shard is built meanwhile)."""

    def __init__(self, store: Store):
        self.store = store
        self._thread: threading.Thread | None = None
        self._job: dict | None = None

    def submit(self, staged: Staged, timings: dict) -> list[dict]:
        """Start publishing ``staged``; returns the shards whose publishing finished meanwhile."""
        if self.store.local:
            t0 = time.time()
            publish(self.store, staged)
            return [_result(staged, timings, time.time() - t0)]
        done = self.wait()
        job = self._job = {"staged": staged, "timings": timings, "error": None}

        def upload() -> None:
            t0 = time.time()
            try:
                publish(self.store, staged)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller of wait()
                job["error"] = exc
            job["publish_s"] = time.time() - t0

        self._thread = threading.Thread(target=upload, name=f"publish-{staged.name}", daemon=True)
        self._thread.start()
        return done

    def wait(self) -> list[dict]:
        """Finish the publishing in flight; returns its shard (raises its error)."""
        if self._thread is None:
            return []
        self._thread.join()
        job, self._thread, self._job = self._job, None, None
        if job["error"] is not None:
            raise job["error"]
        return [_result(job["staged"], job["timings"], job["publish_s"])]


def _result(staged: Staged, timings: dict, publish_s: float) -> dict:
    return {**staged.stats, "timing": {**timings, "publish_s": round(publish_s, 4)}}


class ShardActor:
    """Lives in a worker process: builds the source worker once, then one shard per call."""

    def __init__(self, config_json: dict, board=None):
        from pairgen.synthetic.render import configure_gl
        from pairgen.writer import warm_up

        configure_gl()
        warm_up()  # one-time imports, not the first shard's
        self.config = BuildConfig.from_json(config_json)
        self.store = Store(self.config.out, parse_options(self.config.storage_options))
        self.publisher = Publisher(self.store)
        self.board = board  # a ProgressBoard actor handle, or a callable(shard, pairs)
        self.worker = None

    def hello(self) -> dict:
        """Who this worker is: its code digest (checked against the driver's) and node."""
        import socket

        from pairgen import code_digest

        node = None
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - not in Ray
            pass
        return {"digest": code_digest(), "host": socket.gethostname(), "node": node, "pid": os.getpid()}

    def _reporter(self, name: str):
        if self.board is None:
            return None
        last = [0.0]

        def tick(n: int) -> None:
            now = time.time()
            if now - last[0] >= REPORT_EVERY_S:
                last[0] = now
                if callable(self.board):
                    self.board(name, n)
                else:
                    self.board.set.remote(name, n)

        return tick

    def run(self, task: ShardTask) -> list[dict]:
        from pairgen.build import build_shard
        from pairgen.sources import make_source

        if self.worker is None:  # lazily, so a failing init is reported like a failing task
            self.worker = make_source(self.config).make_worker()
        name = layout.shard_name(task.source, task.index)
        staged, timings = build_shard(self.worker, task, self.config, self.store, on_pair=self._reporter(name))
        return self.publisher.submit(staged, timings)

    def flush(self) -> list[dict]:
        return self.publisher.wait()

    def peak_rss_mb(self) -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ProgressBoard:
    """A Ray actor the workers tell how many pairs of their current shard they have made."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def set(self, shard: str, pairs: int) -> None:
        self.counts[shard] = pairs

    def read(self) -> dict[str, int]:
        return dict(self.counts)


class _Progress:
    """The bar: pairs of confirmed shards (their plan) + pairs made so far in shards under way."""

    def __init__(self, total: int, initial: int, enabled: bool, n_shards: int):
        self.base, self.n_shards, self.done, self.failed = initial, n_shards, 0, 0
        self.live: dict[str, int] = {}
        self.planned: dict[str, int] = {}
        self.bar = tqdm(total=total, initial=initial, unit="pair", disable=not enabled, dynamic_ncols=True,
                        smoothing=0.1, desc="pairs")
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"shards {self.done}/{self.n_shards}" + (f" failed {self.failed}" if self.failed else ""))

    def live_counts(self, counts: dict[str, int]) -> None:
        self.live.update({k: min(v, self.planned.get(k, v)) for k, v in counts.items() if k in self.planned})
        self._show()

    def started(self, task: ShardTask) -> None:
        name = layout.shard_name(task.source, task.index)
        self.planned[name] = task.planned
        self.live[name] = 0

    def confirmed(self, name: str, planned: int) -> None:
        self.planned.pop(name, None)
        self.live.pop(name, None)
        self.base += planned
        self.done += 1
        self._show()
        self._postfix()

    def lost(self, name: str, failed: bool = False) -> None:
        self.live.pop(name, None)
        if failed:
            self.planned.pop(name, None)
            self.failed += 1
            self._postfix()
        self._show()

    def _show(self) -> None:
        n = self.base + sum(self.live.values())
        if n != self.bar.n:
            self.bar.n = n
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_tasks(tasks, config: BuildConfig, total_pairs: int, done_pairs: int = 0,
              progress: bool = True, log=print) -> tuple[list[dict], list[dict]]:
    """Run every task; returns (results of finished shards: stats + timings, failures
    [{shard, error, attempts}]). ``tasks``: a list of ShardTask or a :class:`pairgen.plan.Tasks`
    (``len``, ``planned`` and lazy iteration: a task's payload is read only when it is handed out)."""
    if not isinstance(getattr(tasks, "planned", None), dict):
        tasks = _Listed(tasks)
    if not len(tasks):
        return [], []
    if config.local:
        return _run_local(tasks, config, total_pairs, done_pairs, progress)
    return _run_ray(tasks, config, total_pairs, done_pairs, progress, log)


class _Listed:
    """A plain list of tasks with the interface of :class:`pairgen.plan.Tasks`."""

    def __init__(self, tasks: list[ShardTask]):
        self.tasks = list(tasks)
        self.planned = {layout.shard_name(t.source, t.index): t.planned for t in self.tasks}

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)


def _failure(task: ShardTask, error: str, attempts: int) -> dict:
    return {"shard": layout.tar_rel(layout.shard_name(task.source, task.index)), "error": error.strip()[-2000:],
            "attempts": attempts}


def _run_local(tasks, config, total_pairs, done_pairs, progress):
    bar = _Progress(total_pairs, done_pairs, progress, len(tasks))
    actor = ShardActor(config.to_json(), board=lambda shard, n: bar.live_counts({shard: n}))
    planned = tasks.planned
    results, failures = [], []

    def confirm(done: list[dict]) -> None:
        for r in done:
            name = r["shard"][:-4]
            results.append(r)
            bar.confirmed(name, planned[name])

    try:
        for task in tasks:
            for attempt in range(config.retries + 1):
                bar.started(task)
                try:
                    confirm(actor.run(task))
                    break
                except OutputError:
                    raise  # not the shard's fault: retrying cannot help
                except Exception:  # noqa: BLE001 - any error in a shard is retried, then recorded
                    err = traceback.format_exc()
                    bar.lost(layout.shard_name(task.source, task.index))
            else:
                failures.append(_failure(task, err, config.retries + 1))
                bar.lost(layout.shard_name(task.source, task.index), failed=True)
        confirm(actor.flush())
    finally:
        bar.close()
    return results, failures


def _init_ray(config: BuildConfig, n_workers: int):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    env = {"PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", os.environ.get("CROCOMAN_GL", "osmesa")),
           "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "FSSPEC_CONFIG_DIR"):
        if k in os.environ:  # the driver's storage settings reach the workers (a cluster's own env otherwise)
            env[k] = os.environ[k]
    for k, v in os.environ.items():
        if k.startswith("FSSPEC_"):
            env[k] = v
    if config.ray_address:
        ray.init(address=config.ray_address, runtime_env={"env_vars": env}, logging_level="WARNING",
                 ignore_reinit_error=True, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=n_workers, include_dashboard=False, logging_level="WARNING",
                 object_store_memory=256 * 1024 * 1024, runtime_env={"env_vars": env},
                 ignore_reinit_error=True)
    from pairgen import interrupt

    interrupt.reinstall()  # Ray's core worker replaced the SIGTERM handler
    return ray


def _check_workers(ray, actors, log) -> list[dict]:
    """Every worker runs the driver's code; returns their hello()s."""
    from pairgen import code_digest
    from pairgen.build import BuildError

    hellos = ray.get([a.hello.remote() for a in actors])
    mine = code_digest()
    for h in hellos:
        if h["digest"] != mine:
            raise BuildError(f"a Ray worker on {h['host']} runs crocoman {h['digest']}, this driver {mine}: "
                             "install the same version on every node (see README, On a cluster)")
    return hellos


def _check_shared_out(ray, store: Store) -> None:
    """A local --out on a multi-node cluster must be the same directory on every node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pairgen.build import BuildError

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if len(nodes) < 2:
        return
    probe = os.path.join(store.root, f"{layout.PROBE_PREFIX}{os.urandom(8).hex()}")
    with open(probe, "w") as f:
        f.write("pairgen: is this directory shared by every node?\n")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        seen = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(probe) for n in nodes])
    finally:
        os.unlink(probe)
    blind = [f"{n.get('NodeManagerAddress', '?')} (node {n['NodeID'][:8]})" for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise BuildError(f"--out {store.root} is a local directory that cluster node(s) {', '.join(blind)} do not "
                         "see: use a filesystem shared by every node at the same path, or object storage "
                         "(--out s3://bucket/prefix)")


def _run_ray(tasks, config, total_pairs, done_pairs, progress, log):
    local_n = min(config.resolved_workers(), len(tasks))
    if config.ray_address:
        log(f"pairgen: connecting to the Ray cluster at {config.ray_address}")
    else:
        log(f"pairgen: starting {local_n} Ray worker(s)")
    ray = _init_ray(config, local_n)
    from pairgen import reaper

    watcher = None if config.ray_address else reaper.start()  # a kill -9 of this driver leaves no Ray process
    from ray.exceptions import RayActorError, RayTaskError

    store = Store(config.out, parse_options(config.storage_options))
    try:
        if config.ray_address:
            cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
            n_workers = min(config.workers or cluster_cpus, len(tasks))
            if store.local:
                _check_shared_out(ray, store)
        else:
            n_workers = local_n
        Board = ray.remote(num_cpus=0)(ProgressBoard)
        board = Board.remote()
        Actor = ray.remote(num_cpus=1)(ShardActor)
        cfg = config.to_json()
        actors = [Actor.remote(cfg, board) for _ in range(n_workers)]
        hellos = _check_workers(ray, actors, log)
        log(f"pairgen: {n_workers} worker(s) ready on {len({h['node'] for h in hellos})} node(s)")
        results, failures = _drive(ray, actors, lambda: Actor.remote(cfg, board), board, tasks, config,
                                   total_pairs, done_pairs, progress, RayActorError, RayTaskError)
        try:
            peaks = ray.get([a.peak_rss_mb.remote() for a in actors])
            for r in results:
                r.setdefault("_worker_peak_rss_mb", max(peaks))
        except RayActorError:
            pass
    finally:
        if not config.ray_address:
            ray.shutdown()
            reaper.stop(watcher)
    return results, failures


def _drive(ray, actors, new_actor, board, tasks, config, total_pairs, done_pairs, progress,
           RayActorError, RayTaskError):
    fresh = iter(tasks)  # read as handed out: the driver never holds every task's payload
    queue: deque = deque()  # tasks to run again (a failed attempt, a dead actor's unpublished shards)
    more = True
    pending: dict = {}  # ref -> (kind, task, attempt, slot)
    unconfirmed: dict[int, dict[str, tuple]] = {i: {} for i in range(len(actors))}
    busy: set[int] = set()
    planned = tasks.planned
    results, failures = [], []
    bar = _Progress(total_pairs, done_pairs, progress, len(tasks))
    last_read = 0.0
    try:
        while queue or more or pending or any(unconfirmed.values()):
            for slot in range(len(actors)):
                if slot in busy:
                    continue
                if not queue and more:
                    nxt = next(fresh, None)
                    if nxt is None:
                        more = False
                    else:
                        queue.append((nxt, 0))
                if queue:
                    task, attempt = queue.popleft()
                    bar.started(task)
                    pending[actors[slot].run.remote(task)] = ("run", task, attempt, slot)
                    busy.add(slot)
                elif unconfirmed[slot]:
                    pending[actors[slot].flush.remote()] = ("flush", None, 0, slot)
                    busy.add(slot)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=REPORT_EVERY_S)
            if time.time() - last_read >= REPORT_EVERY_S:
                last_read = time.time()
                bar.live_counts(ray.get(board.read.remote()))
            if not ready:
                continue
            ref = ready[0]
            kind, task, attempt, slot = pending.pop(ref)
            busy.discard(slot)
            try:
                done = ray.get(ref)
            except (RayTaskError, RayActorError) as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, OutputError) or isinstance(exc, OutputError):
                    for a in actors:  # stop at once: the other shards cannot be written either
                        ray.kill(a)
                    msg = str(cause) if cause is not None else str(exc).strip().splitlines()[-1]
                    raise OutputError(msg) from None
                if isinstance(exc, RayActorError):  # the process died: its unpublished shards too
                    actors[slot] = new_actor()
                    for name, (t, a) in unconfirmed[slot].items():
                        queue.append((t, a))
                        bar.lost(name)
                    unconfirmed[slot] = {}
                if kind == "run":
                    name = layout.shard_name(task.source, task.index)
                    if attempt < config.retries:
                        queue.append((task, attempt + 1))
                        bar.lost(name)
                    else:
                        failures.append(_failure(task, str(exc), attempt + 1))
                        bar.lost(name, failed=True)
                continue
            if kind == "run":
                unconfirmed[slot][layout.shard_name(task.source, task.index)] = (task, attempt)
            for r in done:
                name = r["shard"][:-4]
                unconfirmed[slot].pop(name, None)
                results.append(r)
                bar.confirmed(name, planned[name])
    finally:
        bar.close()
    return results, failures
