"""The source every real dataset shares: plan (list units, mine pairs, pack shards) on the driver;
build (load the unit, decode its frames once, crop, silhouette) in the workers.

A dataset module only writes a :class:`pairgen.real.types.Reader` and::

    class AistSource(RealSource):
        reader_cls = AistReader

Shards hold whole units, so each video is decoded once per build (``--shard-size`` is a target:
a unit with more pairs than that makes one larger shard). Pairs are spread evenly over units.

What is not built is accounted for (see :class:`pairgen.record.ShardResult`): every planned pair
that is not built is counted in the shard's ``skipped`` under its reason, so built + skipped ==
planned per shard; what the reader dropped while loading and units that gave no pair are
counted as dropped parts. An unexpected exception (a bug, not a :class:`BadUnit` or
:class:`PairSkip`) while planning, loading or building one unit costs that unit only: its pairs
are counted as ``internal error: <type>`` with the traceback in the stats, and the shard goes on.
Errors that are not about the unit (:func:`unit_fault` is False: out of memory, a full or
read-only disk) propagate and fail the shard.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pairgen import interrupt
from pairgen.real import crop as cropping
from pairgen.real import silhouette as sil
from pairgen.real.frames import iter_frames
from pairgen.real.mining import PairSpec, mine_pairs
from pairgen.real.types import BadUnit, Reader, Unit
from pairgen.record import INTERNAL_ERROR, PairRecord, ShardResult, traceback_tail
from pairgen.sources.base import ShardTask, Source, SourceWorker, check_reader_options

BACKGROUND_SAMPLES = 15  # frames per camera for the bgsub median
SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}
# OSError numbers that are about where the output goes, not about a unit: they fail the shard
NOT_THE_UNIT_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EROFS", "EDQUOT") if hasattr(errno, n))


def unit_fault(exc: BaseException) -> bool:
    """Whether an unexpected exception met while planning or building one unit is that unit's to
    bear (skipped, counted as an internal error, the build goes on) rather than the build's
    (propagated): not for anything but an ``Exception`` (e.g. KeyboardInterrupt), MemoryError, or
    an OSError (anywhere in the exception's chain) that says the disk is full or read-only."""
    if not isinstance(exc, Exception) or isinstance(exc, MemoryError):
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno in NOT_THE_UNIT_ERRNOS):
            return False
        e = e.__cause__ or e.__context__
    return True


class PairSkip(Exception):
    """One pair cannot be built (frame not decoded, person too small or outside the frame)."""


@dataclass
class Side:
    """One image of a pair, cropped: crop [S, S, 3], silhouette [S, S] (None until computed),
    keypoints in crop pixels, the crop box (float and as recorded), extra keypoint sets, the method
    actually used, and what bgsub needs later (the rough person mask, the in-frame part)."""

    crop: np.ndarray
    mask: np.ndarray | None
    kps: np.ndarray | None
    cbox: np.ndarray
    box_used: list[float]
    extra: dict
    used: str
    rough: np.ndarray
    in_frame: np.ndarray
    lists: dict = field(default_factory=dict, repr=False)  # keypoints as JSON lists, made once per side

    def with_mask(self, mask: np.ndarray, used: str) -> "Side":
        self.mask, self.used = mask, used
        return self

    def kp_list(self, name: str | None = None) -> list[list[float]]:
        """The keypoints (``name`` None) or an extra set as JSON lists; every pair of the side shares them."""
        if name not in self.lists:
            self.lists[name] = _kp_list(self.kps if name is None else self.extra[name])
        return self.lists[name]


class RealSource(Source):
    reader_cls: type[Reader] = Reader

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        r = cls.reader_cls
        cls.name, cls.summary, cls.needs, cls.layout = r.name, r.summary, r.needs, r.layout
        cls.option_help = dict(r.option_help)

    def reader_options(self) -> dict:
        c = self.config
        opts = {"annotations": c.annotations, "videos": c.videos, "split": c.split, "smpl_model": c.smpl_model,
                "mano_model": c.mano_model}
        for item in c.reader_options:  # --reader-option KEY=VALUE (strings; the reader parses them)
            key, _, value = item.partition("=")
            opts[key.strip()] = value.strip()
        return opts

    def make_reader(self) -> Reader:
        return self.reader_cls(self.config.root, self.reader_options())

    def check(self) -> None:
        c = self.config
        check_reader_options(self)
        if not c.root and not (c.annotations and c.videos):
            raise ValueError(f"--source {self.name} needs --root DATA ({self.needs})")
        for flag, path in (("--root", c.root), ("--annotations", c.annotations), ("--videos", c.videos)):
            if path and not Path(path).is_dir():
                raise ValueError(f"{flag} {path}: not a directory")
        usable = getattr(self.reader_cls, "silhouettes", None)
        if c.silhouette and usable and c.silhouette not in usable:
            raise ValueError(f"--silhouette {c.silhouette} does not suit {self.name} (usable: {', '.join(usable)})")
        if self.config.silhouette == "smpl" and not (self.config.smpl_model or self.config.mano_model):
            raise ValueError("--silhouette smpl renders the dataset's body-model fits: give --smpl-model (or --mano-model)")
        self.make_reader().check()

    def plan(self) -> Iterator[ShardTask]:
        """The shard tasks, as units are mined (shard 0, which records the units that gave no pair,
        comes last): the plan is never all in memory."""
        c = self.config
        reader = self.make_reader()
        listed = reader.unit_names()
        want = SPLIT_ALIASES.get(c.split, c.split)
        names = [(n, s) for n, s in listed if want is None or s == want]
        if not names:
            splits = ", ".join(sorted({s for _, s in listed})) or "none"
            raise ValueError(f"source {self.name}: no unit in split {c.split!r} under {c.root} (splits found: {splits})"
                             if c.split else f"source {self.name}: no unit found under {c.root}")
        # a seeded order spreads a small build over the whole dataset instead of its first units
        names = [names[i] for i in np.random.default_rng([c.seed, len(names)]).permutation(len(names))]
        quota = math.ceil(c.num_pairs / len(names))
        if len(c.kinds) == 2:
            n_cv = int(round(quota * c.cross_view_fraction))
            n_cp = quota - n_cv
        else:
            n_cv, n_cp = (quota, 0) if c.kinds[0] == "cross_view" else (0, quota)
        plan_skipped: list[dict] = []

        def shards():  # whole units packed into shards of about --shard-size pairs, as each closes
            total, current = 0, []
            for name, kind, value in self._mined(reader, [n for n, _ in names], n_cv, n_cp):
                if total >= c.num_pairs:
                    break
                if kind == "skip":
                    plan_skipped.append({"unit": name, **value})
                    continue
                pairs = value[: c.num_pairs - total]
                if not pairs:
                    plan_skipped.append({"unit": name, "reason": "no pair could be mined"})
                    continue
                total += len(pairs)
                if current and len(current) + len(pairs) > c.shard_size:
                    yield current
                    current = []
                current.extend(pairs)
            if current:
                yield current

        first: ShardTask | None = None  # shard 0 carries the units that gave no pair: yielded last
        for index, pairs in enumerate(shards()):
            task = ShardTask(self.name, index, len(pairs), {"pairs": [p.to_json() for p in pairs]})
            if index == 0:
                first = task
            else:
                yield task
        if first is not None:
            first.payload["plan_skipped"] = plan_skipped
            yield first
        elif plan_skipped:
            reasons = "; ".join(f"{s['unit']}: {s['reason']}" + (f" ({s['detail'].strip().splitlines()[-1]})"
                                                                 if s.get("detail") else "")
                                for s in plan_skipped[:3])
            raise ValueError(f"source {self.name}: no usable unit under {c.root} ({reasons})")

    def planning_processes(self, n_units: int) -> int:
        """Processes that load and mine units for the plan: one (this process) for --local or a
        small dataset, else the driver's cores (a full dataset's plan is minutes of one core); with
        ``--ray-address``, Ray tasks on the whole cluster instead (:meth:`_mined_on_ray`)."""
        if self.config.local or n_units <= 2 * PLAN_BATCH:
            return 1
        return max(1, min(self.config.resolved_workers(), os.cpu_count() or 1, math.ceil(n_units / PLAN_BATCH)))

    def _mined(self, reader: Reader, names: list[str], n_cv: int, n_cp: int):
        """(unit, "pairs", [PairSpec]) or (unit, "skip", {reason, detail}) for ``names`` in order, lazily:
        batches of units are loaded and mined in parallel processes (a sliding window ahead of the
        consumer, which stops when it has enough pairs); each unit's result depends on the unit and
        the settings alone, so the plan is the same whatever the number of processes."""
        batches = [names[i:i + PLAN_BATCH] for i in range(0, len(names), PLAN_BATCH)]
        cfg = self.config.to_json()
        if self.config.ray_address and not self.config.local and len(batches) > 2:
            yield from self._mined_on_ray(batches, cfg, n_cv, n_cp)  # a cluster: Ray tasks on every node
            return
        procs = self.planning_processes(len(names))
        if procs == 1:
            for batch in batches:
                yield from mine_units(self, reader, batch, n_cv, n_cp)
            return
        import multiprocessing
        from collections import deque
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("forkserver")
        ready = ctx.Queue()  # each planning process says when it has started (see the finally below)
        with interrupt.held():  # a process is never left half-started by Ctrl-C (it would print a traceback)
            pool = ProcessPoolExecutor(max_workers=procs, mp_context=ctx, initializer=_planning_started,
                                       initargs=(ready,))
        pending: deque = deque()
        todo = iter(batches)
        finished = False
        try:
            while True:
                while len(pending) < 2 * procs and (batch := next(todo, None)) is not None:
                    with interrupt.held():  # submit may start a process
                        pending.append(pool.submit(plan_units, cfg, batch, n_cv, n_cp))
                if not pending:
                    break
                yield from pending.popleft().result()
            finished = True
        finally:
            if finished:
                pool.shutdown(wait=True)
            else:  # stopped early (enough pairs, an error, Ctrl-C): no batch is waited for
                # but a process still starting is let finish its start (~1 s at most): torn down
                # midway it prints a traceback (the semaphores it loads are gone)
                spawned, started, deadline = len(getattr(pool, "_processes", None) or {}), 0, time.time() + 5
                while started < spawned and time.time() < deadline:
                    try:
                        ready.get(timeout=0.1)
                        started += 1
                    except queue.Empty:
                        pass
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    if proc.is_alive():
                        proc.terminate()
                pool.shutdown(wait=True)  # quick once its processes are gone: the pool's thread ends cleanly

    def _mined_on_ray(self, batches: list[list[str]], cfg: dict, n_cv: int, n_cp: int):
        """:meth:`_mined` with the batches as Ray tasks on the cluster (``--ray-address``): a sliding
        window of twice the cluster's CPUs, consumed in order (so the same plan); the tasks still
        running when the consumer stops (enough pairs, an error, Ctrl-C) are cancelled."""
        from collections import deque

        from pairgen.distribute import _init_ray

        ray = _init_ray(self.config, 0)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        print(f"pairgen: planning {sum(map(len, batches))} units in {len(batches)} Ray tasks on the cluster "
              f"({cpus} CPUs)", file=sys.stderr, flush=True)
        task = ray.remote(num_cpus=1, max_retries=2)(plan_units)
        pending: deque = deque()
        todo = iter(batches)
        try:
            while True:
                while len(pending) < 2 * cpus and (batch := next(todo, None)) is not None:
                    pending.append(task.remote(cfg, batch, n_cv, n_cp))
                if not pending:
                    break
                yield from ray.get(pending.popleft())
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def make_worker(self) -> SourceWorker:
        return RealWorker(self)


def _planning_started(ready) -> None:
    """Initializer of a planning process: tell the driver it has started."""
    ready.put(os.getpid())


PLAN_BATCH = 16  # units per planning job
_PLANNING: dict[str, RealSource] = {}  # per process: the source (and its reader's caches) of a config


def plan_units(config_json: dict, names: list[str], n_cv: int, n_cp: int) -> list[tuple]:
    """Load and mine ``names`` (in a planning process, or in the driver): what :meth:`RealSource._mined`
    yields. A BadUnit or a bug met on one unit leaves that unit out, named; what is not the unit's
    fault (out of memory, a full disk) propagates."""
    import json as _json

    from pairgen.config import BuildConfig
    from pairgen.sources import make_source

    key = _json.dumps(config_json, sort_keys=True)
    if key not in _PLANNING:
        _PLANNING.clear()
        source = make_source(BuildConfig.from_json(config_json))
        _PLANNING[key] = (source, source.make_reader())
    return mine_units(*_PLANNING[key], names, n_cv, n_cp)


def mine_units(source: RealSource, reader: Reader, names: list[str], n_cv: int, n_cp: int) -> list[tuple]:
    """The work of :func:`plan_units` with a given source and reader."""
    c = source.config
    out: list[tuple] = []
    for name in names:
        try:
            unit = reader.load(name)
            pairs = mine_pairs(unit, n_cv, n_cp, c.seed, c.min_view_angle_deg, c.min_gap_s, c.max_gap_s)
            found_cv = sum(p.kind == "cross_view" for p in pairs)
            if found_cv < n_cv and "cross_pose" in c.kinds:  # e.g. one camera: cross-pose takes the quota
                pairs = mine_pairs(unit, found_cv, n_cp + n_cv - found_cv, c.seed, c.min_view_angle_deg,
                                   c.min_gap_s, c.max_gap_s)
        except BadUnit as exc:
            out.append((name, "skip", {"reason": f"bad unit: {exc}"}))
            continue
        except Exception as exc:  # noqa: BLE001 - a bug met on one unit: that unit is left out, named
            if not unit_fault(exc):
                raise
            out.append((name, "skip", {"reason": f"{INTERNAL_ERROR}{type(exc).__name__}",
                                       "detail": traceback_tail(exc)}))
            continue
        out.append((name, "pairs", pairs))
    return out


class RealWorker(SourceWorker):
    def __init__(self, source: RealSource):
        self.config = source.config
        self.source_name = source.name
        self.reader = source.make_reader()
        import av  # noqa: F401  the decoders and encoders, loaded with the worker, not in its first shard
        import cv2  # noqa: F401
        import simplejpeg  # noqa: F401

    def build(self, task: ShardTask) -> ShardResult:
        result = ShardResult(pairs=[])
        for s in task.payload.get("plan_skipped", []):  # units that gave no planned pair: not pairs
            result.drop(s["reason"], unit=s["unit"], detail=s.get("detail"))
        groups: dict[str, list[PairSpec]] = defaultdict(list)
        for p in task.payload["pairs"]:
            groups[p["unit"]].append(PairSpec(**p))
        for unit_name, specs in groups.items():
            self._build_one(unit_name, specs, result)
        return result

    def _build_one(self, unit_name: str, specs: list[PairSpec], result: ShardResult) -> None:
        """Load one unit and build its pairs into ``result``. An unexpected exception (see
        :func:`unit_fault`) drops whatever the unit had built and counts its pairs as an internal
        error, with the traceback; the parts the reader dropped stay recorded."""
        try:
            unit = self.reader.load(unit_name)
        except BadUnit as exc:
            result.skip(f"bad unit: {exc}", unit=unit_name, pairs=len(specs))
            return
        except Exception as exc:  # noqa: BLE001 - a bug met on this unit costs this unit only
            if not unit_fault(exc):
                raise
            result.error(exc, unit_name, len(specs))
            return
        for part, reason, detail in unit.skipped:
            result.drop(reason, unit=f"{unit_name}/{part}", detail=detail or None)
        part = ShardResult(pairs=[], metrics=result.metrics)  # the unit's own, merged when it finishes
        try:
            self._build_unit(unit, specs, part)
        except Exception as exc:  # noqa: BLE001 - as above
            if not unit_fault(exc):
                raise
            result.merge(part, built=False)
            result.error(exc, unit_name, len(specs))
            return
        result.merge(part)

    def _build_unit(self, unit: Unit, specs: list[PairSpec], result: ShardResult) -> None:
        """Decode the unit's needed frames once, crop each as it streams past (a sequence's frames are
        never all in memory), then assemble the pairs."""
        method = self.config.silhouette or unit.silhouette_default
        if method == "smpl" and unit.meshes is None:
            result.skip("smpl silhouette: no body-model fit for this unit", unit=unit.name, pairs=len(specs))
            return
        needed: dict[str, set[int]] = defaultdict(set)
        tracks_at: dict[tuple[str, int], set[str]] = defaultdict(set)
        for p in specs:
            for cam, frame in ((p.cam_target, p.frame_target), (p.cam_reference, p.frame_reference)):
                needed[cam].add(frame)
                tracks_at[(cam, frame)].add(p.track)
        samples: dict[str, set[int]] = {}
        if method == "bgsub":
            observed: dict[str, set[int]] = defaultdict(set)
            for (_, c, f) in unit.observations:
                observed[c].add(f)
            for cam in list(needed):
                seen = sorted(observed[cam])
                idx = np.linspace(0, len(seen) - 1, min(BACKGROUND_SAMPLES, len(seen))).round().astype(int)
                samples[cam] = {seen[i] for i in idx}
                needed[cam].update(samples[cam])
        sides: dict[tuple[str, str, int], Side | PairSkip] = {}
        bg_frames: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        early: dict[str, tuple[tuple[int, int], tuple | None]] = {}  # cam -> (frame size, its background)
        problems: list = []
        frame_wh: dict[tuple[str, int], tuple[int, int]] = {}  # (cam, frame) -> decoded (width, height)
        # closing: an exception here stops the read-ahead threads at once
        with contextlib.closing(iter_frames(unit, needed, result.metrics, problems)) as frames:
            for cam, frame, img in frames:
                frame_wh[(cam, frame)] = (img.shape[1], img.shape[0])
                if frame in samples.get(cam, ()):
                    bg_frames[cam][frame] = np.asarray(img)  # the background samples: a few full frames per camera
                    if len(bg_frames[cam]) == len(samples[cam]):
                        self._early_background(unit, cam, bg_frames, frame_wh, early)
                for track in tracks_at.get((cam, frame), ()):
                    try:
                        sides[(track, cam, frame)] = self._side(unit, track, cam, frame, img, method)
                    except PairSkip as exc:
                        sides[(track, cam, frame)] = exc
        for part, reason, detail in problems:  # frames not decoded: parts; their pairs are skipped below
            result.drop(reason, unit=part, detail=detail or None)
        sizes = self._frame_sizes(unit, sides, frame_wh)
        if method == "bgsub":
            backgrounds = {cam: model for cam, (wh, model) in early.items() if wh == sizes[cam]}
            for cam, fs in bg_frames.items():  # cameras whose samples were not all decoded, or of mixed sizes
                if cam not in early:
                    backgrounds[cam] = self._background(unit, cam, {f: a for f, a in fs.items()
                                                                    if frame_wh[(cam, f)] == sizes[cam]})
            self._bgsub(sides, {cam: m for cam, m in backgrounds.items() if m is not None})
        for p in specs:
            try:
                t = self._get(sides, p.track, p.cam_target, p.frame_target)
                r = self._get(sides, p.track, p.cam_reference, p.frame_reference)
                result.pairs.append(self._pair(unit, p, t, r))
            except PairSkip as exc:
                result.skip(str(exc), unit=f"{unit.name}/{p.track}/{p.cam_target}:{p.frame_target}-"
                                            f"{p.cam_reference}:{p.frame_reference}")

    @staticmethod
    def _get(sides, track: str, cam: str, frame: int) -> "Side":
        side = sides.get((track, cam, frame))
        if side is None:
            raise PairSkip("frame not decoded")
        if isinstance(side, PairSkip):
            raise side
        return side

    @staticmethod
    def _frame_sizes(unit: Unit, sides: dict, frame_wh: dict) -> dict[str, tuple[int, int]]:
        """The frame size of each camera: the annotation's where the reader states it
        (``unit.frame_sizes``), else the commonest among the frames decoded (ties: the larger). A
        side cut from a frame of another size is skipped for that, whatever else was found: the
        annotation's pixels are not that frame's. Returns {cam: (width, height)}."""
        sizes: dict[str, tuple[int, int]] = {}
        stated: dict[str, bool] = {}
        for cam in sorted({c for c, _ in frame_wh}):
            seen = Counter(wh for (c, _), wh in frame_wh.items() if c == cam)
            stated[cam] = unit.frame_sizes.get(cam) is not None
            sizes[cam] = tuple(unit.frame_sizes[cam]) if stated[cam] else max(seen, key=lambda wh: (seen[wh], wh))
        for (track, cam, frame) in sides:
            wh = frame_wh[(cam, frame)]
            if wh != sizes[cam]:
                W, H = sizes[cam]
                whose = "the annotation's" if stated[cam] else "the camera's other frames'"
                sides[(track, cam, frame)] = PairSkip(f"frame size {wh[0]}x{wh[1]} differs from {whose} {W}x{H}")
        return sizes

    def _early_background(self, unit: Unit, cam: str, bg_frames: dict, frame_wh: dict, early: dict) -> None:
        """A camera's background as soon as all its samples are decoded, its frames then dropped (a
        unit's 15 full frames per camera are never all held: 9 full-HD cameras were ~2 GB). Only when
        the samples share one size: the camera's size is known at the end (:meth:`_frame_sizes`), and
        if it is another, no sample had it, so the camera has no background (as when all are kept)."""
        sizes = {frame_wh[(cam, f)] for f in bg_frames[cam]}
        stated = unit.frame_sizes.get(cam)
        if len(sizes) != 1:
            return  # kept whole: the final size decides which samples vote
        (wh,) = sizes
        frames = bg_frames.pop(cam)
        model = None if stated is not None and tuple(stated) != wh else self._background(unit, cam, frames)
        early[cam] = (wh, model)

    @staticmethod
    def _background(unit: Unit, cam: str, frames: dict[int, np.ndarray]) -> tuple | None:
        """(background RGB, known mask) of one camera from its sample frames of its size; None under 3."""
        if len(frames) < 3:
            return None
        people: dict[int, list[np.ndarray]] = defaultdict(list)  # everyone in each sampled frame
        for (_, c, f), o in unit.observations.items():
            if c == cam and f in frames:
                b = cropping.person_box(o)
                if b is not None:
                    people[f].append(b)
        fs = sorted(frames)
        return sil.background_model([frames[f] for f in fs], [people[f] for f in fs])

    def _bgsub(self, sides: dict, backgrounds: dict) -> None:
        """Background subtraction of every side, against its camera's background."""
        S = self.config.image_size
        for key, side in sides.items():
            if isinstance(side, PairSkip):
                continue
            cam = key[1]
            if cam not in backgrounds:
                sides[key] = PairSkip("no background model for the camera")
                continue
            bg, known = backgrounds[cam]
            known_crop = cropping.crop_resize(known.astype(np.uint8), side.cbox, S, nearest=True) > 0
            mask = sil.bgsub_mask(side.crop, cropping.crop_resize(bg, side.cbox, S), side.rough, known_crop)
            mask = np.where(side.in_frame, mask, 0).astype(np.uint8)
            sides[key] = PairSkip("empty silhouette") if not mask.any() else side.with_mask(mask, "bgsub")

    def _side(self, unit: Unit, track: str, cam: str, frame: int, img: np.ndarray, method: str) -> "Side":
        """Crop one (track, camera, frame) and compute its silhouette (bgsub: later, see _bgsub)."""
        c = self.config
        S = c.image_size
        obs = unit.observations[(track, cam, frame)]
        h, w = img.shape[:2]
        want = unit.frame_sizes.get(cam)
        if want is not None and (w, h) != tuple(want):  # checked in _frame_sizes: not worth cropping
            raise PairSkip("frame size")
        box = cropping.person_box(obs)
        if box is None:
            raise PairSkip("no box or keypoints")
        if max(box[2] - box[0], box[3] - box[1]) < c.min_person_px:
            raise PairSkip("person too small")
        if obs.keypoints is not None and method in ("keypoints", "bgsub") and _labelled(obs.keypoints) < 2:
            raise PairSkip("fewer than 2 labelled keypoints")  # the keypoint mask would be empty
        inter = max(0.0, min(box[2], w) - max(box[0], 0)) * max(0.0, min(box[3], h) - max(box[1], 0))
        if inter < 0.5 * max((box[2] - box[0]) * (box[3] - box[1]), 1e-6):
            raise PairSkip("person mostly outside the frame")
        cbox = cropping.square_crop_box(box, c.crop_margin, unit.kind)
        crop = cropping.crop_resize(img, cbox, S)
        kps = cropping.to_crop(obs.keypoints, cbox, S) if obs.keypoints is not None else None
        head = None
        if obs.head_box is not None:
            hb = cropping.to_crop(np.asarray(obs.head_box, np.float64).reshape(2, 2), cbox, S)
            head = np.array([hb[0, 0], hb[0, 1], hb[1, 0], hb[1, 1]])
        b = cropping.to_crop(np.array([[box[0], box[1]], [box[2], box[3]]]), cbox, S)
        box_mask = np.zeros((S, S), np.uint8)
        box_mask[max(0, int(b[0, 1])):int(b[1, 1]) + 1, max(0, int(b[0, 0])):int(b[1, 0]) + 1] = 255
        in_frame = cropping.in_frame(cbox, S, h, w)  # which crop pixels come from the frame
        if kps is not None:
            rough = (sil.hand_keypoint_mask(kps, S) if unit.kind == "hand"
                     else sil.body_keypoint_mask(kps, S, head_box=head))
        else:
            rough = box_mask
        extra = {name: cropping.to_crop(k, cbox, S) for name, k in (obs.extra_keypoints or {}).items()}
        side = Side(crop, None, kps, cbox, cropping.crop_box_used(cbox), extra, method, rough, in_frame)
        if method == "bgsub":
            return side  # needs the camera's background model: finished in _bgsub
        if method == "keypoints":
            mask, used = rough, ("keypoints" if kps is not None else "box")
        elif method == "box":
            mask, used = box_mask, "box"
        elif method == "grabcut":  # at source resolution, then cropped like the image
            mask, used = cropping.crop_resize(sil.grabcut_mask(img, box), cbox, S, nearest=True), "grabcut"
        elif method == "smpl":
            cal = unit.calibration.get(cam)
            if cal is None:
                raise PairSkip("smpl silhouette: camera not calibrated")
            try:
                verts, faces = unit.meshes(track, frame)
            except BadUnit as exc:
                raise PairSkip(f"smpl mesh: {exc}") from exc
            uv, z = cal.project(verts)
            mask, used = sil.mesh_mask(cropping.to_crop(uv, cbox, S), z, np.asarray(faces), S), "smpl"
        else:
            raise PairSkip(f"unknown silhouette method {method}")
        if used == "keypoints" and not mask.any():  # e.g. a wrist and an ankle: no limb joins them
            raise PairSkip("labelled keypoints share no limb (no keypoint silhouette)")
        mask = np.where(in_frame, mask, 0).astype(np.uint8)  # nothing is known in the padding
        if not mask.any():
            raise PairSkip("empty silhouette")
        return side.with_mask(mask, used)

    def _pair(self, unit: Unit, p: PairSpec, t: "Side", r: "Side") -> PairRecord:
        t_kps, t_box, t_extra, t_used = t.kps, t.box_used, t.extra, t.used
        r_kps, r_box, r_extra, r_used = r.kps, r.box_used, r.extra, r.used
        meta = {
            "source": self.source_name, "kind": p.kind, "split": self._split(unit),
            "subject": unit.track_subjects.get(p.track, unit.subject),
            "sequence": unit.name, "track": p.track, "camera_target": p.cam_target,
            "camera_reference": p.cam_reference, "frame_target": p.frame_target,
            "frame_reference": p.frame_reference, "time_gap_s": p.time_gap_s,
            "view_angle_deg": (round(p.view_angle_deg, 4) if p.kind == "cross_view" and p.view_angle_deg is not None
                               else None),  # cross-pose: one camera, no angle (null, not 0)
            "motion": p.motion, "silhouette_method": t_used if t_used == r_used else f"{t_used}+{r_used}",
            "seed": self.config.seed, "fps": unit.fps,
            "crop_target_x0": t_box[0], "crop_target_y0": t_box[1], "crop_target_x1": t_box[2], "crop_target_y1": t_box[3],
            "crop_reference_x0": r_box[0], "crop_reference_y0": r_box[1], "crop_reference_x1": r_box[2],
            "crop_reference_y1": r_box[3],
        }
        if unit.kind == "body":
            if t_kps is not None and r_kps is not None and len(t_kps) == 17:
                meta["keypoints_target"] = t.kp_list()
                meta["keypoints_reference"] = r.kp_list()
                meta["keypoint_format"] = "coco17"
        elif t_kps is not None and r_kps is not None:
            meta["hand_keypoints_target"] = t.kp_list()
            meta["hand_keypoints_reference"] = r.kp_list()
            meta["keypoint_format"] = "interhand21"
        for name in sorted(set(t_extra) & set(r_extra)):
            meta[f"{name}_target"] = t.kp_list(name)
            meta[f"{name}_reference"] = r.kp_list(name)
        return PairRecord(t.crop, r.crop, t.mask, r.mask, meta)

    def _split(self, unit: Unit) -> str:
        return unit.split


def _labelled(kps: np.ndarray, min_conf: float = 0.05) -> int:
    """Joints a keypoint silhouette can use: finite, confidence above ``min_conf`` (as silhouette.py)."""
    k = np.asarray(kps, np.float64)
    return int((np.isfinite(k[:, :3]).all(1) & (k[:, 2] > min_conf)).sum())


def _kp_list(k: np.ndarray) -> list[list[float]]:
    """[J, 3] keypoints as JSON lists (non-finite joints become [0, 0, 0]: not labelled)."""
    k = np.asarray(k, np.float64)[:, :3]
    k = np.where(np.isfinite(k).all(1, keepdims=True), k, 0.0)
    return np.column_stack([np.round(k[:, :2], 3), np.round(k[:, 2:], 4)]).tolist()
