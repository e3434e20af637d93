"""Helpers shared by the dataset-source tests: build + verify through the CLI, read what was built."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples


def build_and_verify(source: str, root, out, *extra: str) -> None:
    """`pairgen build --source SOURCE --root ROOT --out OUT --local --quiet EXTRA...` then `pairgen verify`."""
    from pairgen.cli import main

    assert main(["build", "--source", source, "--root", str(root), "--out", str(out), "--local", "--quiet",
                 *extra]) == 0
    assert main(["verify", str(out)]) == 0
    check_accounting(out)


def read_samples(out) -> list:
    """Every decoded sample of a build, in shard order."""
    return [decode_sample(k, m) for tar in layout.shard_urls(Path(out)) for k, m in iter_tar_samples(str(tar))]


def read_stats(out) -> list[dict]:
    """The stats JSON of every finished shard."""
    return [json.loads(layout.stats_path(Path(out), n).read_text()) for n in layout.finished_shards(Path(out))]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def console_build_and_verify(source: str, root, out, *extra: str):
    """The installed `pairgen` console script in a subprocess: `build --source SOURCE --root ROOT
    --out OUT --local --quiet EXTRA...`, then `verify OUT`; returns the build's manifest."""
    import os
    import shutil
    import subprocess
    import sys

    import pandas as pd

    exe = Path(sys.executable).with_name("pairgen")
    exe = str(exe) if exe.exists() else shutil.which("pairgen")
    env = {**os.environ, "PYOPENGL_PLATFORM": "osmesa"}
    run = subprocess.run([exe, "build", "--source", source, "--root", str(root), "--out", str(out), "--local",
                          "--quiet", *extra], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run([exe, "verify", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "verify OK" in run.stdout, run.stdout + run.stderr
    check_accounting(out)
    return pd.read_parquet(Path(out) / "manifest")


def read_manifest(out):
    """The Parquet manifests of every finished shard, concatenated."""
    import pandas as pd

    out = Path(out)
    return pd.concat([pd.read_parquet(layout.manifest_path(out, n)) for n in layout.finished_shards(out)])


def skipped_totals(out) -> dict:
    """{"skipped": reason -> count summed over shards, "skipped_units": every shard's list}."""
    skipped, units = {}, []
    for s in read_stats(out):
        for k, v in s.get("skipped", {}).items():
            skipped[k] = skipped.get(k, 0) + v
        units += s.get("skipped_units", [])
    return {"skipped": skipped, "skipped_units": units}


def check_accounting(out) -> dict:
    """Every planned pair of every finished shard is built or counted under its reason:
    ``count + sum(skipped.values()) == planned`` per shard (``skipped`` counts pairs only; what is
    not a planned pair, e.g. a camera or frame the reader dropped, a unit that gave no pair, a
    frame that did not decode, is counted in ``metrics["dropped"]``). Each named entry of
    ``skipped_units`` carries the pairs it accounts for (0 for a dropped part), and its reason is
    counted where it belongs. Returns the totals {"planned", "built", "skipped", "dropped"}."""
    totals: dict = {"planned": 0, "built": 0, "skipped": {}, "dropped": {}}
    for s in read_stats(out):
        skipped, dropped = s["skipped"], s.get("metrics", {}).get("dropped", {})
        assert all(isinstance(n, int) and n > 0 for n in (*skipped.values(), *dropped.values())), s["shard"]
        assert s["count"] + sum(skipped.values()) == s["planned"], (s["shard"], s["count"], s["planned"], skipped)
        for u in s.get("skipped_units", []):
            assert u["reason"] in (skipped if u["pairs"] else dropped), (s["shard"], u)
        totals["planned"] += s["planned"]
        totals["built"] += s["count"]
        for key, part in (("skipped", skipped), ("dropped", dropped)):
            for k, v in part.items():
                totals[key][k] = totals[key].get(k, 0) + v
    return totals


def dropped_totals(out) -> dict:
    """{reason: parts dropped} summed over the shards (``metrics["dropped"]``: not pairs)."""
    return check_accounting(out)["dropped"]


# -- hard fixtures (people across frame edges, tiny people, missing/corrupt/resized files) -------

# how a skipped pair is named in the stats: "<unit>/<track>/<cam target>:<frame>-<cam reference>:<frame>"
PAIR_UNIT_RE = re.compile(r"^(?P<unit>.+)/(?P<track>[^/]+)/(?P<cam_t>[^/:]+):(?P<frame_t>-?\d+)-"
                          r"(?P<cam_r>[^/:]+):(?P<frame_r>-?\d+)$")
EDGES = ("left", "right", "top", "bottom", "corner")


def pair_skips(out) -> list[dict]:
    """Every planned pair that was not built, with its reason: {"reason", "unit", "track", "target":
    (cam, frame), "reference": (cam, frame)} for a pair named in ``skipped_units``, or {"reason",
    "unit", "pairs"} for an entry that accounts for a unit's pairs at once (a bad unit, an internal
    error). Asserts that the named entries account for every skipped pair (no shard hit the cap on
    named entries), after :func:`check_accounting`."""
    check_accounting(out)
    found = []
    for s in read_stats(out):
        named = 0
        for u in s.get("skipped_units", []):
            n = u.get("pairs", 1)
            if not n:
                continue  # a dropped part (a camera, a frame file), not a planned pair
            named += n
            m = PAIR_UNIT_RE.match(u["unit"])
            if m and n == 1:
                found.append({"reason": u["reason"], "unit": m["unit"], "track": m["track"],
                              "target": (m["cam_t"], int(m["frame_t"])),
                              "reference": (m["cam_r"], int(m["frame_r"])), "detail": u.get("detail")})
            else:
                found.append({"reason": u["reason"], "unit": u["unit"], "pairs": n, "detail": u.get("detail")})
        assert named == sum(s["skipped"].values()), (s["shard"], named, s["skipped"])
    return found


def planned_sides(samples, skips: list[dict]) -> set[tuple[str, str, str, int]]:
    """(unit, track, camera, frame) of every side of every planned pair named: built or skipped."""
    out = {(s.meta["sequence"], s.meta["track"], s.meta[f"camera_{k}"], s.meta[f"frame_{k}"])
           for s in samples for k in ("target", "reference")}
    return out | {(p["unit"], p["track"], *p[k]) for p in skips if "track" in p for k in ("target", "reference")}


def crop_edges(box, h: int, w: int) -> set[str]:
    """The frame edges a crop box [x0, y0, x1, y1] crosses ("corner": two adjacent ones at once)."""
    x0, y0, x1, y1 = box
    edges = {e for e, out in (("left", x0 < 0), ("right", x1 > w), ("top", y0 < 0), ("bottom", y1 > h)) if out}
    if ({"left", "right"} & edges) and ({"top", "bottom"} & edges):
        edges.add("corner")
    return edges


def check_padded_crops(samples, frame_hw, jpeg_tolerance: int = 12, border: int = 8) -> dict[str, int]:
    """Every crop whose box leaves its frame: silhouette exactly 0 in the padding, image 0 there
    (JPEG: up to ``jpeg_tolerance`` more than ``border`` pixels from the frame's part). ``frame_hw(meta,
    side)`` gives the frame's (height, width). Returns how many crops cross each edge."""
    import cv2

    from pairgen.real import crop as cropping

    crossed = {e: 0 for e in EDGES}
    for s in samples:
        for side, img, mask in (("target", s.target, s.target_mask), ("reference", s.reference, s.reference_mask)):
            box = [s.meta[f"crop_{side}_{k}"] for k in ("x0", "y0", "x1", "y1")]
            h, w = frame_hw(s.meta, side)
            edges = crop_edges(box, h, w)
            if not edges:
                continue
            for e in edges:
                crossed[e] += 1
            size = img.shape[0]
            inside = cropping.in_frame(np.array(box, np.float64), size, h, w)
            assert not inside.all(), (s.key, side, box)
            assert not mask[~inside].any(), f"{s.key} {side}: silhouette in the padding"
            far = cv2.erode((~inside).astype(np.uint8), np.ones((2 * border + 1, 2 * border + 1), np.uint8)) > 0
            if far.any():
                assert int(img[far].max()) <= jpeg_tolerance, f"{s.key} {side}: padding not black ({img[far].max()})"
    return crossed


def reason_in(reason: str, allowed) -> bool:
    """``reason`` is one of ``allowed`` (an entry ending in ``*`` is a prefix: "frame size *")."""
    return any(reason == a or (a.endswith("*") and reason.startswith(a[:-1])) for a in allowed)


def check_outcomes(samples, skips: list[dict], case_of, unit_reasons=()) -> dict[str, int]:
    """Built and skipped pairs against what the fixture made of each side: ``case_of(unit, track,
    cam, frame)`` is None for a plain side, else (must_skip, reasons): the true reasons the side
    may be skipped for, and whether it cannot be built at all (a tiny person, a frame of another
    size). A skipped pair needs a reason one of its sides explains, a built pair no side that must
    be skipped; whole units' pairs may be skipped only for ``unit_reasons`` (never an internal
    error). Returns {reason: skipped pairs}."""
    counts: dict[str, int] = {}
    for p in skips:
        if "pairs" in p:
            assert reason_in(p["reason"], unit_reasons), f"{p['unit']}: {p['pairs']} pairs skipped: {p}"
            counts[p["reason"]] = counts.get(p["reason"], 0) + p["pairs"]
            continue
        cases = [case_of(p["unit"], p["track"], *p[k]) for k in ("target", "reference")]
        allowed = set().union(*[c[1] for c in cases if c])
        assert reason_in(p["reason"], allowed), f"pair {p} skipped for {p['reason']!r}, expected {sorted(allowed)}"
        counts[p["reason"]] = counts.get(p["reason"], 0) + 1
    for s in samples:
        m = s.meta
        for side in ("target", "reference"):
            c = case_of(m["sequence"], m["track"], m[f"camera_{side}"], m[f"frame_{side}"])
            assert not (c and c[0]), f"{s.key}: built from {side} {m[f'camera_{side}']}:{m[f'frame_{side}']} ({c})"
    return counts


def hard_build(source: str, root, out, *extra: str, code: int = 0) -> int:
    """`pairgen build` (in-process, --local) of a hard fixture; asserts the exit code, then `pairgen verify`."""
    from pairgen.cli import main

    rc = main(["build", "--source", source, "--root", str(root), "--out", str(out), "--local", "--quiet", *extra])
    assert rc == code, rc
    assert main(["verify", str(out)]) == 0
    return rc


# -- what the hard fixtures share: a side (unit, track, camera, frame) is named in each fixture's record
#    ("corrupt": one place, "half_size": one place or a set of them) by ``at(unit, track, cam, frame)``

OUTSIDE = "person mostly outside the frame"
SIZE_SKIPPED = (True, {"frame size *"})  # a side on a frame of another size: skipped, for its size
# ... or, where another test checks that reason: never built, skipped for its size or its wrong pixels
SIZE_ANY = (False, {"frame size *", OUTSIDE, "person too small"})


def half_size_of(hard: dict, at):
    """A predicate of a side (unit, track, cam, frame): the fixture wrote its frame at half size."""
    half = hard["half_size"]
    halves = half if isinstance(half, (set, frozenset)) else {half}
    return lambda *side: at(*side) in halves


def hard_case(hard: dict, at, edge_of, resized=SIZE_SKIPPED, edge_reasons=(OUTSIDE,), rest=None):
    """A ``case_of`` for :func:`check_outcomes`, first match wins: ``edge_of(*side)`` "tiny" (the
    person too small: must be skipped), the corrupt frame (not decoded: must be skipped), a frame of
    another size (``resized``), another ``edge_of`` than None (the person across that frame edge: may
    be skipped for ``edge_reasons``), else ``rest(*side)`` (None: a plain side)."""
    is_half = half_size_of(hard, at)

    def case_of(*side):
        edge = edge_of(*side)
        if edge == "tiny":
            return True, {"person too small"}
        if at(*side) == hard["corrupt"]:
            return True, {"frame not decoded"}
        if is_half(*side):
            return resized
        if edge is not None:
            return False, set(edge_reasons)
        return rest(*side) if rest else None
    return case_of


def at_frame(unit, track, cam, frame):
    """``at`` of a fixture that names a frame by its index alone (one video or sequence)."""
    return frame


def panned_case(hard: dict, **options):
    """:func:`hard_case` of a fixture whose camera pans so that the person crosses a frame edge, or
    is tiny, in some frames (``hard["pans"]``: frame index -> the edge, or "tiny")."""
    return hard_case(hard, at_frame, lambda unit, track, cam, frame: hard["pans"].get(frame), **options)


def hard_frame_hw(hard: dict, at, size):
    """``frame_hw(meta, side)`` for :func:`check_padded_crops`: ``size`` (height, width), or a function
    of the camera giving it, halved for a frame the fixture wrote at half size."""
    is_half = half_size_of(hard, at)

    def frame_hw(meta, side):
        cam = meta[f"camera_{side}"]
        h, w = size(cam) if callable(size) else size
        return (h // 2, w // 2) if is_half(meta["sequence"], meta["track"], cam, meta[f"frame_{side}"]) else (h, w)
    return frame_hw


class HardBuild(NamedTuple):
    samples: list
    skips: list[dict]
    reasons: dict[str, int]  # skipped pairs per reason
    crossed: dict[str, int]  # crops across each frame edge
    planned: set  # (unit, track, camera, frame) of every planned side


def check_hard_build(label: str, out, case_of, hard: dict, at, size,
                     needed=("person too small", "frame not decoded")) -> HardBuild:
    """What every hard fixture's build at ``out`` must show: pairs were built, every planned pair is
    built or skipped for its true reason (:func:`check_outcomes` with ``case_of``), some for each
    reason in ``needed``, and crops across every frame edge and a corner are padded
    (:func:`check_padded_crops` with :func:`hard_frame_hw` of ``hard``, ``at``, ``size``)."""
    samples, skips = read_samples(out), pair_skips(out)
    assert samples
    reasons = check_outcomes(samples, skips, case_of)
    print(f"hard {label}: built", len(samples), "skipped", reasons)
    assert all(reasons.get(r, 0) > 0 for r in needed), reasons
    crossed = check_padded_crops(samples, hard_frame_hw(hard, at, size))
    assert all(crossed[e] > 0 for e in EDGES), crossed
    return HardBuild(samples, skips, reasons, crossed, planned_sides(samples, skips))


def check_half_size_skipped(out, case_of, hard: dict, at) -> None:
    """The frames the fixture wrote at half size were planned, pairs were skipped for a frame's
    size, and every pair is built or skipped for its true reason (``case_of``: such a side must be
    skipped, for its size)."""
    samples, skips = read_samples(out), pair_skips(out)
    is_half = half_size_of(hard, at)
    assert any(is_half(*side) for side in planned_sides(samples, skips))  # such pairs were planned
    assert any(p["reason"].startswith("frame size") for p in skips)  # skipped for its size
    check_outcomes(samples, skips, case_of)


def named_skips(out) -> dict[str, str]:
    """unit -> reason of every entry of ``skipped_units``, over the finished shards."""
    return {u["unit"]: u["reason"] for s in read_stats(out) for u in s.get("skipped_units", [])}
