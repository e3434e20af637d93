"""InterHand's annotation index (pairgen/real/annotation_index.py, built by pairgen/sources/interhand.py):
the same per-unit content as the whole-file parse it replaces, read one unit at a time, rebuilt when
damaged, built once by concurrent processes, a new one for a changed file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import gen_interhand_annotations  # noqa: E402


def write_interhand_annotations(root, n_images, **kw) -> dict:
    """tools/gen_interhand_annotations.py's generator, its paths as Path."""
    out = gen_interhand_annotations.write_interhand_annotations(root, n_images, **kw)
    return {k: Path(v) if k in ("data", "joint_3d", "camera", "mano") and v else v for k, v in out.items()}

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


# -- the whole-file parse this index replaces (pairgen/sources/interhand.py before the index) -------------

def legacy_parse_data(path: Path) -> dict:
    """_data.json -> {(capture, seq_name): [(cam, frame, file_name, w, h, subject, ann | None)]}."""
    d = json.loads(Path(path).read_bytes())
    anns: dict[int, dict] = {}
    for a in d.get("annotations", []):
        anns[int(a["image_id"])] = {"joint_valid": np.asarray(a.get("joint_valid", []), np.float32).reshape(-1),
                                    "hand_type": a.get("hand_type"),
                                    "hand_type_valid": a.get("hand_type_valid", 0),
                                    "bbox": a.get("bbox")}
    index: dict[tuple[int, str], list] = {}
    for im in d["images"]:
        key = (int(im["capture"]), str(im["seq_name"]))
        index.setdefault(key, []).append((
            str(im["camera"]), int(im["frame_idx"]), str(im["file_name"]),
            int(im.get("width") or 512), int(im.get("height") or 334),
            im.get("subject"), anns.get(int(im["id"]))))
    return index


def legacy_frame(entry: dict, fr: int):
    """What the whole-file load did with frame ``fr`` of a joint_3d capture entry: None (no joints),
    (X, v), or the reason it is malformed."""
    e = entry.get(str(fr))
    if e is None:
        return None
    try:
        X = np.asarray(e["world_coord"], np.float64)
        v = np.asarray(e.get("joint_valid", np.ones(42)), np.float64).reshape(-1)
        if X.shape != (42, 3) or v.shape != (42,):
            raise ValueError(f"world_coord {X.shape}, joint_valid {v.shape}")
    except (KeyError, TypeError, ValueError, AttributeError) as ex:
        return str(ex)[:100]
    return X, v


def assert_same_records(new: list, old: list) -> None:
    assert len(new) == len(old)
    for n, o in zip(new, old):
        assert n[:5] == o[:5]
        assert n[5] == (None if o[5] is None else str(o[5]))  # load() only ever uses str(subject)
        if o[6] is None:
            assert n[6] is None
            continue
        assert n[6] is not None
        assert n[6]["joint_valid"].dtype == o[6]["joint_valid"].dtype == np.float32
        np.testing.assert_array_equal(n[6]["joint_valid"], o[6]["joint_valid"])
        ht = o[6]["hand_type"]
        assert n[6]["hand_type"] == (ht if isinstance(ht, str) else None)  # load() tests `in ("right", "left")`
        assert bool(n[6]["hand_type_valid"]) == bool(o[6]["hand_type_valid"])  # load() tests its truth


def _odd_data(path: Path) -> None:
    """Rewrite a generated _data.json with the cases a join must get right."""
    d = json.loads(path.read_text())
    ims, anns = d["images"], d["annotations"]
    a5 = next(a for a in anns if a["image_id"] == 5)
    anns.append({**a5, "joint_valid": [0] * 42, "hand_type": "left"})  # listed twice: the last one counts
    anns[:] = [a for a in anns if a["image_id"] != 7]  # an image without annotation
    anns.append({"id": -1, "image_id": 10 ** 6, "joint_valid": [1] * 42})  # an annotation without image
    a9 = next(a for a in anns if a["image_id"] == 9)
    a9.pop("joint_valid")
    a9.update(hand_type=3, hand_type_valid="0")
    a11 = next(a for a in anns if a["image_id"] == 11)
    a11["joint_valid"] = [None, 0.5, -1] + [1] * 39
    im = next(i for i in ims if i["id"] == 12)
    im.pop("width")
    im["height"] = 0
    im["subject"] = None
    next(i for i in ims if i["id"] == 13)["subject"] = "s13"
    ims.append({**next(i for i in ims if i["id"] == 14), "camera": "999999"})  # two images, one id
    path.write_text(json.dumps(d))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """2,400 images in 30 units over 3 captures, images and annotations in shuffled orders, nested
    joint_valid, plus odd entries; joint_3d and MANO files with odd entries too."""
    root = tmp_path_factory.mktemp("ih_small")
    out = write_interhand_annotations(root, 2400, cameras=8, frames_per_seq=10, captures=3, shuffle=True,
                                      nested_joint_valid=True, mano=True)
    _odd_data(out["data"])
    j = json.loads(out["joint_3d"].read_text())
    frames = sorted(j["0"], key=int)
    j["0"][frames[0]] = None  # null: no joints
    j["0"]["0" + frames[1]] = j["0"][frames[1]]  # a key no lookup reaches
    j["0"][frames[2]]["world_coord"] = [[1.0, 2.0]] * 42  # malformed
    del j["0"][frames[3]]["world_coord"]  # malformed (KeyError)
    del j["0"][frames[4]]["joint_valid"]  # all valid
    j["1"][sorted(j["1"], key=int)[0]] = [1, 2]  # malformed (TypeError)
    j["99"] = []  # a capture that is not an object
    j["98"] = {}
    out["joint_3d"].write_text(json.dumps(j))
    return root, out


@pytest.mark.parametrize("partition_bytes", [None, 20_000])
def test_data_index_gives_the_whole_file_parse(small, tmp_path, monkeypatch, partition_bytes):
    """Every unit's rows equal the whole-file parse's (file order, the last annotation of an image id,
    missing annotations, defaults), with one partition or with ~60 (the on-disk join)."""
    from pairgen.real import annotation_index as aidx
    from pairgen.sources import interhand as ih

    root, out = small
    if partition_bytes:
        monkeypatch.setattr(aidx, "PARTITION_BYTES", partition_bytes)
    idx = ih.open_annotation_index(out["data"], "data", tmp_path)
    assert idx.error is None and idx.built_here
    assert idx.toc["info"]["parser"] == "ijson (streamed)"
    assert idx.toc["info"]["partitions"] == (1 if partition_bytes is None else
                                             aidx.partitions_for(out["data"].stat().st_size))
    old = legacy_parse_data(out["data"])
    assert set(idx.entries) == {f"{c}/{s}" for c, s in old}
    assert idx.toc["batches"] == len(old) == 30
    for (c, s), records in old.items():
        assert_same_records(ih._records(idx.read(f"{c}/{s}")), records)
    assert idx.read("0/no_such_seq") is None


def test_per_capture_indexes_give_the_whole_file_parse(small, tmp_path):
    """joint_3d: each capture's frames as the whole-file load read them (null = no joints, malformed
    entries with the same reason, keys no lookup reaches left out); a capture that is not an object is
    'no capture'. MANO: each frame's entry as in the file."""
    from pairgen.sources import interhand as ih

    root, out = small
    idx = ih.open_annotation_index(out["joint_3d"], "joint_3d", tmp_path)
    table = json.loads(out["joint_3d"].read_text())
    assert set(idx.entries) == set(table)
    assert idx.entries["99"] is None and idx.entries["98"] == []
    for cap, entry in table.items():
        if not isinstance(entry, dict):
            continue
        frames = [int(k) for k in entry if str(int(k)) == k] + [123456789]  # and one that is absent
        got = ih._CaptureFrames(idx, cap).joints(frames)
        for fr in frames:
            want = legacy_frame(entry, fr)
            if want is None or isinstance(want, str):
                assert got.get(fr) == want, (cap, fr)
            else:
                np.testing.assert_array_equal(got[fr][0], want[0])
                np.testing.assert_array_equal(got[fr][1], want[1])
    assert sum(isinstance(v, str) for v in ih._CaptureFrames(idx, "0").joints(map(int, table["0"])).values()) == 2

    mano = ih.open_annotation_index(out["mano"], "MANO_NeuralAnnot", tmp_path)
    mtable = json.loads(out["mano"].read_text())
    for cap, entry in mtable.items():
        frames = [int(k) for k in entry]
        assert ih._CaptureFrames(mano, cap).fits(frames) == entry


def test_a_file_that_does_not_stream_is_read_whole(tmp_path):
    """A small file ijson refuses (a NaN, which json.loads reads) is read whole, as before."""
    from pairgen.sources import interhand as ih

    p = tmp_path / "InterHand2.6M_val_joint_3d.json"
    X = np.arange(126, dtype=float).reshape(42, 3).tolist()
    p.write_text(json.dumps({"0": {"6": {"world_coord": X, "joint_valid": [1] * 42}}}).replace("0.0", "NaN", 1))
    idx = ih.open_annotation_index(p, "joint_3d", tmp_path / "idx")
    assert idx.error is None and idx.toc["info"]["parser"] == "json (whole file)"
    got = ih._CaptureFrames(idx, "0").joints([6])[6]
    assert np.isnan(got[0][0, 0]) and got[0][0, 1] == 1.0


def test_malformed_file_recorded_once(tmp_path, monkeypatch):
    """A _data.json that does not parse: every unit of the split is a BadUnit with the whole-file parse's
    reason (a small file); a large one with the streaming parser's; the index records it, so another
    process does not parse the file again."""
    from pairgen.real.types import BadUnit
    from pairgen.sources import interhand as ih

    root = tmp_path / "ih"
    out = write_interhand_annotations(root, 200, cameras=4, frames_per_seq=5, captures=2, image_files=1)
    txt = out["data"].read_text()
    out["data"].write_text(txt[: len(txt) // 2])
    try:
        json.loads(out["data"].read_text())
    except json.JSONDecodeError as e:
        legacy = f"{out['data'].name}: malformed (JSONDecodeError: {str(e)[:120]})"
    r = ih.InterHandReader(str(root), {"index_dir": str(tmp_path / "idx")})
    with pytest.raises(BadUnit) as exc:
        r.load(out["units"][0])
    assert str(exc.value) == legacy
    again = ih.open_annotation_index(out["data"], "data", tmp_path / "idx")
    assert not again.built_here and again.error == legacy
    monkeypatch.setattr(ih, "SMALL_FILE", 0)  # as a file too large to read whole
    streamed = ih.open_annotation_index(out["data"], "data", tmp_path / "idx2")
    assert streamed.error.startswith(f"{out['data'].name}: malformed (IncompleteJSONError: ")


def test_index_folder_option_and_environment(tmp_path, monkeypatch):
    from pairgen.real import annotation_index as aidx
    from pairgen.sources import interhand as ih

    monkeypatch.delenv(aidx.ENV, raising=False)
    assert aidx.index_root() == Path(os.path.expanduser("~/.cache/crocoman/annotation-index"))
    monkeypatch.setenv(aidx.ENV, str(tmp_path / "env"))
    assert aidx.index_root() == tmp_path / "env"
    assert aidx.index_root(str(tmp_path / "opt")) == tmp_path / "opt"
    assert "index_dir" in ih.InterHandReader.option_help
    root = tmp_path / "ih"
    out = write_interhand_annotations(root, 160, cameras=4, frames_per_seq=5, captures=2, image_files=8)
    r = ih.InterHandReader(str(root), {"index_dir": str(tmp_path / "opt")})
    r.check()
    assert r.load(out["units"][0]).observations
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "opt").iterdir() if p.is_dir()) == [
        "InterHand2.6M_train_data.json", "InterHand2.6M_train_joint_3d.json"]
    assert not (tmp_path / "env").exists()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # (root may write anywhere)
            with pytest.raises(ValueError, match="not writable"):
                ih.InterHandReader(str(root), {"index_dir": str(ro)}).check()
    finally:
        ro.chmod(0o700)


# -- one unit per process; corrupt, concurrent, changed ---------------------------------------------------

@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """40,000 images (~21 MB of _data.json): 50 units of 800 images over 4 captures; the first unit's
    image files exist."""
    root = tmp_path_factory.mktemp("ih_medium")
    out = write_interhand_annotations(root, 40_000, cameras=20, frames_per_seq=40, captures=4, image_files=1)
    return root, out


_LOAD_ONE = """
import json, sys
from pathlib import Path
from pairgen.sources.interhand import InterHandReader
root, index_dir, unit = sys.argv[1:4]
r = InterHandReader(root, {"index_dir": index_dir})
u = r.load(unit)
ann = Path(root) / "annotations" / "train"
d = r._index(ann / "InterHand2.6M_train_data.json", "data")
j = r._index(ann / "InterHand2.6M_train_joint_3d.json", "joint_3d")
print(json.dumps({"observations": len(u.observations), "frames": u.frames,
                  "data": [d.batches_read, d.bytes_read, d.built_here],
                  "joints": [j.batches_read, j.bytes_read, j.built_here]}))
"""


def test_a_worker_reads_only_its_units_batches(medium, tmp_path):
    """The driver builds the index; a fresh process that loads one unit reads the index's footer and that
    unit's one batch (bytes counted by the file object pyarrow reads through), not the file."""
    from pairgen.sources import interhand as ih

    root, out = medium
    unit = out["units"][0]
    driver = ih.InterHandReader(str(root), {"index_dir": str(tmp_path)})
    expected = driver.load(unit)
    data = driver._index(out["data"], "data")
    arrow = data.path / "index.arrow"
    size = arrow.stat().st_size
    with open(arrow, "rb") as f:
        f.seek(-10, 2)
        footer = int.from_bytes(f.read(4), "little") + 10
    per_unit = (size - footer) / len(out["units"])

    run = subprocess.run([sys.executable, "-c", _LOAD_ONE, str(root), str(tmp_path), unit], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout)
    assert got["observations"] == len(expected.observations) and got["frames"] == expected.frames
    batches, nbytes, built = got["data"]
    assert not built
    cap, seq = unit.split("/")[1][len("Capture"):], unit.split("/")[2]
    assert batches == [data.entries[f"{cap}/{seq}"][0][0]]
    assert footer < nbytes <= footer + 2 * per_unit, (nbytes, footer, per_unit, size)
    assert nbytes < size / 10
    jbatches, jbytes, jbuilt = got["joints"]
    spans = driver._index(out["joint_3d"], "joint_3d").entries[cap]
    lo, hi = min(expected.frames), max(expected.frames)
    assert not jbuilt and jbatches and set(jbatches) <= {b for b, a, z in spans if a <= hi and z >= lo}


_OPEN = """
import json, os, sys, time
from pathlib import Path
from pairgen.sources.interhand import open_annotation_index
src, root, go, ready = sys.argv[1:5]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
idx = open_annotation_index(Path(src), "data", Path(root))
print(json.dumps({"built": idx.built_here, "waited": idx.waited_s, "id": idx.build_id, "path": str(idx.path)}))
"""


def test_two_processes_build_one_index(medium, tmp_path):
    """Two processes that need the index at the same moment: one builds it, the other waits on the lock
    and reads that one; one index, no leftovers."""
    root, out = medium
    go = tmp_path / "go"
    idx_root = tmp_path / "idx"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN, str(out["data"]), str(idx_root), str(go), str(r)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    t0 = time.time()
    while not all(r.exists() for r in ready) and time.time() - t0 < 120:  # both imported, polling
        time.sleep(0.01)
    go.touch()
    res = []
    for p in procs:
        so, se = p.communicate(timeout=180)
        assert p.returncode == 0, se[-3000:]
        res.append(json.loads(so))
    assert sorted(r["built"] for r in res) == [False, True]
    assert res[0]["id"] == res[1]["id"] and res[0]["path"] == res[1]["path"]
    waiter = next(r for r in res if not r["built"])
    assert waiter["waited"] > 0.05, res  # it waited for the build rather than building
    names = sorted(p.name for p in idx_root.iterdir())
    assert names == [Path(res[0]["path"]).name, Path(res[0]["path"]).name + ".lock"]


def test_corrupt_index_is_rebuilt(medium, tmp_path):
    """A damaged table of contents, a truncated index and an index whose footer is garbage (found when a
    unit is read) are rebuilt; the leftovers of a killed build are removed."""
    from pairgen.sources import interhand as ih

    root, out = medium
    unit = out["units"][0]
    r = ih.InterHandReader(str(root), {"index_dir": str(tmp_path)})
    want = r.load(unit)
    cached = r._index(out["data"], "data")  # the reader's (per process)
    first_id, key = cached.build_id, next(iter(cached.entries))
    rows = ih._records(cached.read(key))

    (cached.path / "toc.json").write_text("{not json")
    a = ih.open_annotation_index(out["data"], "data", tmp_path)
    assert a.built_here and a.build_id != first_id
    assert_same_records(ih._records(a.read(key)), rows)

    with open(a.path / "index.arrow", "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    b = ih.open_annotation_index(out["data"], "data", tmp_path)
    assert b.built_here and b.build_id != a.build_id

    dead = tmp_path / f".{b.path.name}.tmp-{socket.gethostname()}~999999999~deadbeef"
    dead.mkdir()
    arrow = b.path / "index.arrow"
    size = arrow.stat().st_size
    with open(arrow, "r+b") as f:  # same size, footer and magic overwritten: readable only as garbage
        f.seek(size - 64)
        f.write(b"\xab" * 64)
    # the reader's cached index (its table of contents read before the damage: b's) meets it while loading
    cached.path, cached.toc = b.path, b.toc
    again = r.load(unit)
    assert again.frames == want.frames and set(again.observations) == set(want.observations)
    now = r._index(out["data"], "data")
    assert now is cached and now.build_id not in (b.build_id, a.build_id, first_id)
    assert not dead.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "InterHand2.6M_train_data"))) == [
        now.path.name, now.path.name + ".lock"]


def test_changed_source_gets_a_new_index(tmp_path):
    """The index is keyed by the file's path, size and mtime: a rewritten file (or only a new mtime)
    gets its own index, with the new content."""
    from pairgen.sources import interhand as ih

    root = tmp_path / "ih"
    out = write_interhand_annotations(root, 400, cameras=4, frames_per_seq=10, captures=2)
    a = ih.open_annotation_index(out["data"], "data", tmp_path / "idx")
    key = next(iter(a.entries))
    d = json.loads(out["data"].read_text())
    for im in d["images"]:
        im["width"] = 640
    out["data"].write_text(json.dumps(d))
    st = out["data"].stat()
    os.utime(out["data"], ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    b = ih.open_annotation_index(out["data"], "data", tmp_path / "idx")
    assert b.built_here and b.path != a.path and a.path.is_dir()
    assert {rec[3] for rec in ih._records(b.read(key))} == {640}
    assert {rec[3] for rec in ih._records(a.read(key))} == {512, 334}  # the old one is left as it was
    st = out["data"].stat()
    os.utime(out["data"], ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # same bytes, new mtime
    c = ih.open_annotation_index(out["data"], "data", tmp_path / "idx")
    assert c.built_here and c.path not in (a.path, b.path)
