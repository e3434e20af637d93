"""Distributor: runs shard tasks on Ray actors (or in-process), retries failures, shows progress.

One actor per worker holds the source's expensive state (built once), and builds and writes
whole shards. A task that raises is retried (``--retries``) on any actor; an actor that dies is
replaced. A shard that still fails is returned as a failure: the build finishes the rest. An
:class:`~pairgen.writer.OutputError` (full disk, read-only output) is not retried: the build
stops at once, keeping every finished shard.
"""

from __future__ import annotations

import os
import traceback
from collections import deque

from tqdm import tqdm

from pairgen.config import BuildConfig
from pairgen.sources.base import ShardTask
from pairgen.writer import OutputError


class ShardActor:
    """Lives in a worker process: builds the source worker once, then one shard per call."""

    def __init__(self, config_json: dict):
        from pairgen.synthetic.render import configure_gl
        from pairgen.writer import warm_up

        configure_gl()
        warm_up()  # one-time imports, not the first shard's
        self.config = BuildConfig.from_json(config_json)
        self.worker = None

    def run(self, task: ShardTask) -> dict:
        from pairgen.build import build_shard
        from pairgen.sources import make_source

        if self.worker is None:  # lazily, so a failing init is reported like a failing task
            self.worker = make_source(self.config).make_worker()
        return build_shard(self.worker, task, self.config)

    def peak_rss_mb(self) -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bar(total: int, initial: int, enabled: bool, n_shards: int):
    bar = tqdm(total=total, initial=initial, unit="pair", disable=not enabled, dynamic_ncols=True,
               smoothing=0.1, desc="pairs")
    bar.set_postfix_str(f"shards 0/{n_shards}")
    return bar


def run_tasks(tasks: list[ShardTask], config: BuildConfig, total_pairs: int, done_pairs: int = 0,
              progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Run every task; returns (stats of finished shards, failures [{shard, error, attempts}])."""
    if not tasks:
        return [], []
    if config.local:
        return _run_local(tasks, config, total_pairs, done_pairs, progress)
    return _run_ray(tasks, config, total_pairs, done_pairs, progress)


def _failure(task: ShardTask, error: str, attempts: int) -> dict:
    from manifests.layout import shard_name

    return {"shard": shard_name(task.source, task.index) + ".tar", "error": error.strip()[-2000:],
            "attempts": attempts}


def _run_local(tasks, config, total_pairs, done_pairs, progress):
    actor = ShardActor(config.to_json())
    results, failures = [], []
    with _bar(total_pairs, done_pairs, progress, len(tasks)) as bar:
        for task in tasks:
            for attempt in range(config.retries + 1):
                try:
                    stats = actor.run(task)
                    results.append(stats)
                    bar.update(stats["count"])
                    break
                except OutputError:
                    raise  # not the shard's fault: retrying cannot help
                except Exception:  # noqa: BLE001 - any error in a shard is retried, then recorded
                    err = traceback.format_exc()
            else:
                failures.append(_failure(task, err, config.retries + 1))
            bar.set_postfix_str(f"shards {len(results)}/{len(tasks)} failed {len(failures)}")
    return results, failures


def _init_ray(config: BuildConfig, n_workers: int):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    env = {"PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", os.environ.get("CROCOMAN_GL", "osmesa")),
           "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    if config.ray_address:
        ray.init(address=config.ray_address, runtime_env={"env_vars": env}, logging_level="WARNING",
                 ignore_reinit_error=True)
    else:
        ray.init(num_cpus=n_workers, include_dashboard=False, logging_level="WARNING",
                 object_store_memory=256 * 1024 * 1024, runtime_env={"env_vars": env},
                 ignore_reinit_error=True)
    return ray


def _run_ray(tasks, config, total_pairs, done_pairs, progress):
    n_workers = min(config.resolved_workers(), len(tasks))
    ray = _init_ray(config, n_workers)
    from pairgen import reaper

    watcher = None if config.ray_address else reaper.start()  # a kill -9 of this driver leaves no Ray process
    from ray.exceptions import RayActorError, RayTaskError

    Actor = ray.remote(num_cpus=1)(ShardActor)
    cfg = config.to_json()
    actors = [Actor.remote(cfg) for _ in range(n_workers)]
    queue = deque((t, 0) for t in tasks)
    pending: dict = {}
    results, failures = [], []
    try:
        with _bar(total_pairs, done_pairs, progress, len(tasks)) as bar:
            idle = list(range(n_workers))
            while queue or pending:
                while queue and idle:
                    slot = idle.pop()
                    task, attempt = queue.popleft()
                    pending[actors[slot].run.remote(task)] = (task, attempt, slot)
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                task, attempt, slot = pending.pop(ref)
                try:
                    stats = ray.get(ref)
                    results.append(stats)
                    bar.update(stats["count"])
                except (RayTaskError, RayActorError) as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, OutputError) or isinstance(exc, OutputError):
                        for a in actors:  # stop at once: the other shards cannot be written either
                            ray.kill(a)
                        msg = str(cause) if cause is not None else str(exc).strip().splitlines()[-1]
                        raise OutputError(msg) from None
                    if isinstance(exc, RayActorError):  # the process died: start a fresh one
                        actors[slot] = Actor.remote(cfg)
                    if attempt < config.retries:
                        queue.append((task, attempt + 1))
                    else:
                        failures.append(_failure(task, str(exc), attempt + 1))
                idle.append(slot)
                bar.set_postfix_str(f"shards {len(results)}/{len(tasks)} failed {len(failures)}")
        peaks = ray.get([a.peak_rss_mb.remote() for a in actors])
        for r in results:
            r.setdefault("_worker_peak_rss_mb", max(peaks))
    finally:
        if not config.ray_address:
            ray.shutdown()
            reaper.stop(watcher)
    return results, failures
