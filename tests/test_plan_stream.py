"""Issue 12: the driver streams the plan to ``OUT/plan-<source>.parquet`` and hands tasks out from it;
workers build each camera's background as soon as its samples are in (memory that does not grow
with the dataset)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests import layout
from manifests.storage import Store
from pairgen.config import BuildConfig
from pairgen.plan import DESCRIPTIONS, GROUP_BYTES, ROWS_PER_GROUP, load_plan, task_digest, write_plan
from pairgen.sources.base import ShardTask


def _config(tmp_path, **kw) -> BuildConfig:
    return BuildConfig(**{"source": "synthetic", "out": str(tmp_path / "out"), "num_pairs": 100, **kw})


def _tasks(n: int, first_last: bool = True):
    """Tasks 1..n-1 then 0 (as a real source yields them), with payloads of different sizes."""
    order = list(range(1, n)) + [0] if first_last else list(range(n))
    for i in order:
        yield ShardTask("synthetic", i, 3 + i % 5, {"pairs": [{"unit": f"u{i}", "k": j} for j in range(i % 7)],
                                                    "note": "é" * (i % 3)})


def test_plan_is_written_as_a_stream_and_read_back_a_row_group_at_a_time(tmp_path):
    cfg = _config(tmp_path)
    store = Store(cfg.out)
    pulled = []

    def source():
        for t in _tasks(150):
            pulled.append(t.index)
            yield t

    plan = write_plan(store, cfg, source())
    path = store.path(layout.plan_tasks_rel("synthetic"))
    f = pq.ParquetFile(path)
    assert f.num_row_groups == -(-150 // ROWS_PER_GROUP)  # one row group per ROWS_PER_GROUP tasks
    assert all(f.metadata.row_group(g).num_rows <= ROWS_PER_GROUP for g in range(f.num_row_groups))
    schema = pq.read_schema(path)
    for name, text in DESCRIPTIONS.items():  # every column says what it holds
        assert schema.field(name).metadata[b"description"].decode() == text
    assert not list((tmp_path / "out" / layout.TMP_DIR).glob("*"))  # staged file published, nothing left

    expected = {t.index: t for t in _tasks(150)}
    assert [r.index for r in plan.refs] == list(range(150)) and plan.pairs == sum(t.planned for t in expected.values())
    assert all(r.digest == task_digest(expected[r.index]) for r in plan.refs)
    got = list(plan.tasks())
    assert [(t.index, t.planned, t.payload) for t in got] == [(i, expected[i].planned, expected[i].payload)
                                                              for i in range(150)]
    # only the row group of the task asked for is read and held
    some = plan.tasks(plan.refs[70:72])
    assert len(some) == 2 and some.planned == {layout.shard_name("synthetic", i): expected[i].planned for i in (70, 71)}
    assert [t.index for t in some] == [70, 71] and plan._group[0] == plan.refs[71].group
    assert len(plan._group[1]) <= ROWS_PER_GROUP

    again = load_plan(store, cfg)  # a resumed build: the same refs, payloads still lazy
    assert again.refs == plan.refs and [t.payload for t in again.tasks()] == [t.payload for t in got]
    assert load_plan(store, _config(tmp_path, seed=9)) is None  # another build's plan is not reused



def test_row_groups_close_at_a_payload_size(tmp_path):
    """Shards of many pairs: a row group holds fewer tasks, so the JSON the driver buffers (and later
    reads back) stays about GROUP_BYTES whatever the pairs per shard; every task still reads back whole."""
    cfg = _config(tmp_path)
    store = Store(cfg.out)
    per_task = GROUP_BYTES // 5 + 1000  # ~5 tasks a row group
    tasks = [ShardTask("synthetic", i, 500, {"pairs": ["x" * (per_task - 20)], "i": i}) for i in [*range(1, 23), 0]]
    plan = write_plan(store, cfg, iter(tasks))
    f = pq.ParquetFile(store.path(layout.plan_tasks_rel("synthetic")))
    sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
    assert sizes == [5, 5, 5, 5, 3]  # a group closes with the task that takes it past GROUP_BYTES
    written = [(g, t.index) for g, n in enumerate(sizes) for t in tasks[sum(sizes[:g]):sum(sizes[:g]) + n]]
    assert sorted((r.group, r.index) for r in plan.refs) == sorted(written)  # each ref names its row group
    by_index = {t.index: t for t in tasks}
    assert [(t.index, t.payload) for t in plan.tasks()] == [(i, by_index[i].payload) for i in range(23)]
    assert len(plan._group[1]) <= 5  # one row group held at a time
    again = load_plan(store, cfg)  # the refs read back know their row groups
    assert again.refs == plan.refs and [t.payload["i"] for t in again.tasks()] == list(range(23))

def test_a_failed_plan_publishes_nothing(tmp_path):
    cfg = _config(tmp_path)
    store = Store(cfg.out)

    def bad():
        yield from _tasks(70, first_last=False)
        raise ValueError("source x: a unit was malformed")

    with pytest.raises(ValueError):
        write_plan(store, cfg, bad())
    assert store.stat(layout.plan_tasks_rel("synthetic")) is None
    assert not list((tmp_path / "out" / layout.TMP_DIR).glob("*"))
    with pytest.raises(RuntimeError, match="twice"):  # a source bug: the same shard planned twice
        write_plan(store, cfg, iter([ShardTask("synthetic", 0, 1, {}), ShardTask("synthetic", 0, 1, {})]))
    assert store.stat(layout.plan_tasks_rel("synthetic")) is None


def test_real_source_yields_shards_while_it_mines(penn_units, tmp_path):
    """The first shard task comes out before every unit is loaded (the plan is never all in memory);
    shard 0, which records the units that gave no pair, comes last; the same tasks as a full pass."""
    from pairgen.real.source import PLAN_BATCH
    from pairgen.sources import make_source

    n_units = 2 * PLAN_BATCH + 4  # units are mined a batch at a time
    base = penn_units(n_units)
    (base / "labels" / f"{n_units + 1:04d}.mat").write_bytes(b"not a mat file")  # a unit that gives no pair
    (base / "frames" / f"{n_units + 1:04d}").mkdir()
    cfg = BuildConfig(source="pennaction", root=str(base), out=str(tmp_path / "o"), num_pairs=10_000,
                      shard_size=10, seed=3, local=True)
    source = make_source(cfg)
    loads = []
    make_reader = source.make_reader

    def counting_reader():
        reader = make_reader()
        load = reader.load
        reader.load = lambda name: (loads.append(name), load(name))[1]
        return reader

    source.make_reader = counting_reader
    stream = source.plan()
    first = next(stream)
    assert first.index == 1 and len(loads) == PLAN_BATCH < n_units
    rest = list(stream)
    assert rest[-1].index == 0 and [t.index for t in rest[:-1]] == list(range(2, len(rest) + 1))
    skipped = rest[-1].payload["plan_skipped"]
    assert [s["unit"] for s in skipped] == [f"{n_units + 1:04d}"] and skipped[0]["reason"].startswith("bad unit")
    assert "plan_skipped" not in first.payload

    cfg2 = BuildConfig(**{**json.loads(json.dumps(cfg.to_json()))})
    again = sorted(make_source(cfg2).plan(), key=lambda t: t.index)
    assert [(t.index, t.planned, t.payload) for t in again] == \
        [(t.index, t.planned, t.payload) for t in sorted([first, *rest], key=lambda t: t.index)]


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), k=st.integers(1, 5), band=st.integers(1, 400),
       seed=st.integers(0, 2**31 - 1))
def test_background_median_in_bands_equals_the_whole_frame(h, w, k, band, seed):
    """The background median works on bands of rows (peak memory ~1/8 of the frames'): the same
    pixels as over the whole frame, with people (boxes crossing every edge) left out."""
    from pairgen.real import silhouette as sil

    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(k)]
    boxes = [[rng.uniform(-20, 60, 4) for _ in range(int(rng.integers(0, 3)))] for _ in range(k)]
    old = sil.BACKGROUND_BAND_PX
    try:
        sil.BACKGROUND_BAND_PX = 10**9
        whole = sil.background_model(frames, boxes)
        sil.BACKGROUND_BAND_PX = band
        banded = sil.background_model(frames, boxes)
    finally:
        sil.BACKGROUND_BAND_PX = old
    assert np.array_equal(whole[0], banded[0]) and np.array_equal(whole[1], banded[1])


def test_a_cameras_background_is_made_once_its_samples_are_in():
    """Early backgrounds: the sample frames are dropped as soon as the camera's model is made; a
    camera whose samples differ in size keeps them (the final size decides); a size other than the
    annotation's gives no model, as the late path would."""
    from pairgen.real.source import RealWorker
    from pairgen.real.types import Unit

    unit = Unit(name="u", split="train", subject="s", fps=30.0, frames=list(range(6)), cameras=["a", "b", "c"],
                observations={}, images=("none", None), frame_sizes={"c": (8, 6)})
    worker = object.__new__(RealWorker)  # the method needs no worker state
    img = {(w, h): np.full((h, w, 3), 7, np.uint8) for w, h in ((8, 6), (10, 6))}
    bg = {"a": {0: img[(8, 6)], 1: img[(8, 6)], 2: img[(8, 6)]},
          "b": {0: img[(8, 6)], 1: img[(10, 6)], 2: img[(8, 6)]},
          "c": {0: img[(10, 6)], 1: img[(10, 6)], 2: img[(10, 6)]}}
    wh = {(c, f): (a.shape[1], a.shape[0]) for c, fs in bg.items() for f, a in fs.items()}
    early: dict = {}
    for cam in "abc":
        worker._early_background(unit, cam, bg, wh, early)
    assert set(early) == {"a", "c"} and "a" not in bg and "c" not in bg and len(bg["b"]) == 3
    size_a, model_a = early["a"]
    assert size_a == (8, 6) and model_a[0].shape == (6, 8, 3) and (model_a[0] == 7).all() and model_a[1].all()
    assert early["c"] == ((10, 6), None)  # the annotation says 8x6: no sample has the camera's size
