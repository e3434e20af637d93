"""InterHand2.6M (v1.0, 5 fps or 30 fps release): multi-view hand images with 3D joints.

Unit = one (split, capture, sequence): ``"<split>/Capture<N>/<seq_name>"``. Tracks are the hands,
``"right"`` and ``"left"`` (an image whose hand_type is ``interacting`` shows both). One
observation per (hand, camera, frame) where the hand is visible: its 21 joints (InterHand
per-hand order: thumb, index, middle, ring, pinky, each tip first, then the wrist) projected
from ``world_coord`` with the camera, valid where annotated, in front of the camera and inside
the image; a hand needs ``min_hand_joints`` (default 8) such joints. Cross-view = same hand and
frame in two cameras; cross-pose = same hand and camera at two frames.

Readings chosen where the documentation is UNCERTAIN:

- **Time.** ``frame_idx`` does not count frames of the release: in the 5 fps release train
  sequences step by 18 and val/test by 6; in the 30 fps release by 3 and 1
  (facebookresearch/InterHand2.6M#147: some captures are numbered at 90 fps, others at 30 fps;
  all are "properly downsampled to 5 fps or 30 fps"). The reader takes the commonest step ``s``
  between consecutive frames of a camera and sets ``Unit.fps`` (frame ids per second) to
  ``release_fps * s``; the release (5 or 30) is the option ``fps`` or, when not given, the one
  value for which the numbering rate is 90 or 30 (s = 18 or 6 -> 5 fps; s = 3 or 1 -> 30 fps).
  Unknown steps fall back to 90 frame ids per second. time = frame_idx / Unit.fps.
- **Joint validity.** A joint is used when ``joint_3d`` marks it valid and, where the image has
  an annotation in ``_data.json``, that annotation's ``joint_valid`` too. With
  ``hand_type_valid`` and hand_type ``right``/``left``, the other hand is not observed.
- **Image size.** From ``_data.json`` ``width``/``height``; the known cam400412 bug (images
  334x512) only matters for the inside-the-image test, and the cropper works on decoded pixels.
  Without ``_data.json`` (it is optional: the 30 fps train file is ~4 GB) images come from the
  folder listing and are assumed 512x334.
- **Subject.** ``images[].subject`` of ``_data.json``; without it, ``Capture<N>``.
- **Units.** Calibration in mm (world = mm), so view angles come from mm camera centres.

The MANO fit (``smpl`` silhouette) is used only when the user passes ``--mano-model`` (a
directory with MANO_RIGHT/LEFT .pkl, or one of the files): meshes come from
``_MANO_NeuralAnnot.json`` (world axis-angle pose 48, shape 10, trans in metres; left-hand
shapedirs sign fix as in the official tools).

Annotation files: ``_data.json``, ``_joint_3d.json`` and ``_MANO_NeuralAnnot.json`` are stream-parsed
(ijson) once, by the first process that needs them (the driver, while planning), into an on-disk index
(:mod:`pairgen.real.annotation_index`; reader option ``index_dir``, else ``$CROCOMAN_INDEX_DIR``, else
``~/.cache/crocoman/annotation-index``): ``_data.json`` -> one record batch per unit (its images, in file
order, each joined with its annotation: the last one listed for its ``image_id``), the two per-capture
files -> batches of at most 2048 frames per capture, sorted by frame. ``load()`` reads only the batches
of its unit (its frames), so a worker's memory does not grow with the files. Building keeps memory
bounded: ``images`` and ``annotations`` (two top-level arrays joined by ``id``/``image_id``) are
streamed in two passes into partitions by image id, joined one partition at a time and regrouped by
unit through a second set of partitions; a per-capture file holds one capture in memory at a time.
A file that does not stream (and is at most 64 MB) is read whole as before, so its errors read the same.
``_camera.json`` (small) is parsed whole, once per process.

Missing image files/camera folders (listed in ``_data.json`` but absent) and cameras absent
from the calibration are dropped and counted in ``unit.skipped`` ((part, reason, detail) tuples).
Malformed ``_camera.json`` / ``_joint_3d.json`` / ``_data.json`` raise :class:`BadUnit` for
the affected units (the whole split when the file does not parse, one capture when its entry
is malformed).
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from pairgen.real import annotation_index as aidx
from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, CameraModel, Observation, Reader, Unit

SPLITS = ("train", "val", "test")
HANDS = ("right", "left")  # right = joints 0..20, left = 21..41
DEFAULT_SIZE = (512, 334)  # W x H
MIN_HAND_JOINTS = 8  # visible joints a hand needs (default of --reader-option min_hand_joints)
_CAM_DIR = re.compile(r"^cam(\d+)$")
_IMAGE = re.compile(r"^image(\d+)\.jpg$")
_CAPTURE = re.compile(r"^Capture(\d+)$")

_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 6


def _cached(path: Path, parse):
    """Parse a (possibly large) annotation file once per process; keyed by path, size, mtime.
    A parse error is cached too (re-raised as the same BadUnit)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns, parse.__name__)
    with _CACHE_LOCK:
        if key in _CACHE:
            val = _CACHE[key]
            if isinstance(val, BadUnit):
                raise val
            return val
    try:
        val = parse(path)
    except BadUnit as e:
        val = e
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeDecodeError) as e:
        val = BadUnit(f"{path.name}: malformed ({type(e).__name__}: {str(e)[:120]})")
    with _CACHE_LOCK:
        while len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = val
    if isinstance(val, BadUnit):
        raise val
    return val


def _load_json(path: Path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def _parse_camera(path: Path) -> dict:
    d = _load_json(path)
    if not isinstance(d, dict):
        raise BadUnit(f"{path.name}: malformed (top level is not an object)")
    return d


# -- annotation indexes (pairgen.real.annotation_index) ----------------------------------------------
# Builders: each reads the file as the whole-file parse did (same expressions, in the same order, so a
# malformed file fails with the same error), streamed with ijson. Versions name the layout of an index.

INDEX_VERSIONS = {"data": "interhand-data-1", "joint_3d": "interhand-joint3d-1", "MANO_NeuralAnnot": "interhand-mano-1"}
SMALL_FILE = 64 << 20  # a file that does not stream and is at most this large is read whole (exact errors)
FRAMES_PER_BATCH = 2048  # per-capture indexes: frames per batch (a unit reads the batches of its frames)
UNIT_COLUMNS = ("camera", "frame_idx", "file_name", "width", "height", "subject",
                "has_ann", "joint_valid", "hand_type", "hand_type_valid")
_MALFORMED = (ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeDecodeError, OverflowError)


class _NotStreamed(Exception):
    """The file cannot be streamed as expected (top level not an object, no images found)."""


class _BadRow(Exception):
    """An entry of the file failed to convert (``args[0]``: the error the whole-file parse gave)."""


def _malformed(path: Path, exc: BaseException) -> str:
    if isinstance(exc, _BadRow):
        exc = exc.args[0]
    if isinstance(exc, _NotStreamed):
        return f"{path.name}: malformed ({exc})"
    return f"{path.name}: malformed ({type(exc).__name__}: {str(exc)[:120]})"


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return b""
            chunk = chunk.lstrip()
            if chunk:
                return chunk[:1]


def _items(path: Path, prefix: str):
    import ijson

    with open(path, "rb") as f:
        yield from ijson.items(f, prefix, use_float=True, buf_size=1 << 20)


def _kvitems(path: Path):
    import ijson

    with open(path, "rb") as f:
        yield from ijson.kvitems(f, "", use_float=True, buf_size=1 << 20)


def _streamed_or_whole(path: Path, w, stream, whole) -> None:
    """``stream()`` the file into ``w``; when that fails, a small file is parsed whole by ``whole(d)``
    (the errors the whole-file parse gave: JSONDecodeError, ...); a large one is malformed."""
    import ijson

    try:
        stream()
        w.info["parser"] = "ijson (streamed)"
        return
    except (ijson.JSONError, _NotStreamed, _BadRow) as exc:
        if path.stat().st_size > SMALL_FILE:
            raise aidx.SourceMalformed(_malformed(path, exc)) from None
    w.reset()
    try:
        d = _load_json(path)
        whole(d)
        w.info["parser"] = "json (whole file)"
    except (_BadRow, *_MALFORMED) as exc:  # json.loads's errors, or an entry's
        raise aidx.SourceMalformed(_malformed(path, exc)) from None


def _data_schemas():
    import pyarrow as pa

    img = pa.schema([("id", pa.int64()), ("pos", pa.int64()), ("capture", pa.int64()), ("seq", pa.string()),
                     ("camera", pa.string()), ("frame_idx", pa.int64()), ("file_name", pa.string()),
                     ("width", pa.int64()), ("height", pa.int64()), ("subject", pa.string())])
    ann = pa.schema([("image_id", pa.int64()), ("pos", pa.int64()), ("joint_valid", pa.list_(pa.float32())),
                     ("hand_type", pa.string()), ("hand_type_valid", pa.bool_())])
    return img, ann


def _img_batch(rows: list):
    import pyarrow as pa

    schema, _ = _data_schemas()
    cols = list(zip(*rows))
    return pa.record_batch([pa.array(c, f.type) for c, f in zip(cols, schema)], schema=schema)


def _ann_batch(rows: list):
    import pyarrow as pa

    _, schema = _data_schemas()
    iid, pos, jv, ht, htv = zip(*rows)
    offsets = np.zeros(len(jv) + 1, np.int32)
    np.cumsum([len(a) for a in jv], out=offsets[1:])
    values = pa.array(np.concatenate(jv), pa.float32())
    return pa.record_batch([pa.array(iid, pa.int64()), pa.array(pos, pa.int64()),
                            pa.ListArray.from_arrays(pa.array(offsets), values),
                            pa.array(ht, pa.string()), pa.array(htv, pa.bool_())], schema=schema)


def _data_rows(path: Path, w, items, streamed: bool = True) -> None:
    """``items(prefix)`` yields the annotations, then the images (prefixes as ijson's); spilled by image
    id into partitions, joined a partition at a time, regrouped by unit, one batch per unit."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = aidx.partitions_for(path.stat().st_size)
    img_schema, ann_schema = _data_schemas()
    anns = aidx.PartitionedSpill(w.tmp, "ann", ann_schema, parts, _ann_batch)
    imgs = aidx.PartitionedSpill(w.tmp, "img", img_schema, parts, _img_batch)
    try:  # the whole-file parse's expressions, in its order: a malformed entry fails the same way
        for pos, a in enumerate(items("annotations.item")):
            jv = np.asarray(a.get("joint_valid", []), np.float32).reshape(-1)
            hand_type, hand_type_valid = a.get("hand_type"), a.get("hand_type_valid", 0)
            a.get("bbox")
            iid = int(a["image_id"])
            anns.add(iid % parts, (iid, pos, jv, hand_type if isinstance(hand_type, str) else None,
                                   bool(hand_type_valid)))
        anns.close()
        for pos, im in enumerate(items("images.item")):
            capture, seq = int(im["capture"]), str(im["seq_name"])
            row = (str(im["camera"]), int(im["frame_idx"]), str(im["file_name"]),
                   int(im.get("width") or DEFAULT_SIZE[0]), int(im.get("height") or DEFAULT_SIZE[1]), im.get("subject"))
            iid = int(im["id"])
            imgs.add(iid % parts, (iid, pos, capture, seq, *row[:5], None if row[5] is None else str(row[5])))
        imgs.close()
    except (pa.ArrowException, *_MALFORMED) as exc:  # (an int beyond int64 fails as it is spilled)
        raise _BadRow(exc) from None
    w.info.update(images=imgs.rows, annotations=anns.rows, partitions=parts)
    if imgs.rows == 0 and streamed:  # no "images" array, or an empty one: the whole-file parse tells which
        raise _NotStreamed("no images")

    # join: per image-id partition; the last annotation listed for an image id is its annotation
    unit_schema = img_schema.append(pa.field("has_ann", pa.bool_()))
    for f in list(ann_schema)[2:]:
        unit_schema = unit_schema.append(f)
    units = aidx.PartitionedSpill(w.tmp, "unit", unit_schema, parts, None)
    for p in range(parts):
        ti, ta = imgs.read(p), anns.read(p)
        imgs.remove(p)
        anns.remove(p)
        if not ti.num_rows:
            continue
        iid = aidx.as_numpy(ti["id"])
        hit = np.zeros(len(iid), bool)
        take = np.zeros(len(iid), np.int64)
        if ta.num_rows:
            aid = aidx.as_numpy(ta["image_id"])
            order = np.lexsort((aidx.as_numpy(ta["pos"]), aid))
            last = np.ones(len(order), bool)
            last[:-1] = aid[order][1:] != aid[order][:-1]
            keep = order[last]  # sorted by image id, one per id
            uid = aid[keep]
            j = np.minimum(np.searchsorted(uid, iid), len(uid) - 1)
            hit = uid[j] == iid
            take = keep[j]
        picked = ta.take(pa.array(take, mask=~hit)) if ta.num_rows else None
        cols = [ti[f.name] for f in img_schema] + [pa.array(hit)]
        for f in list(ann_schema)[2:]:
            cols.append(picked[f.name] if picked is not None else pa.nulls(len(iid), f.type))
        joined = pa.Table.from_arrays(cols, schema=unit_schema)
        # regroup by unit: a partition per unit (stable across processes)
        seq_codes = pc.dictionary_encode(joined["seq"].combine_chunks())
        pairs = np.stack([aidx.as_numpy(joined["capture"]), aidx.as_numpy(seq_codes.indices).astype(np.int64)], 1)
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        names = seq_codes.dictionary.to_pylist()
        unit_part = np.array([aidx.stable_part(f"{c}/{names[s]}", parts) for c, s in uniq], np.int64)[inv.reshape(-1)]
        order = np.argsort(unit_part, kind="stable")  # one sort, then a slice per part (rows keep their order)
        grouped, cuts = joined.take(pa.array(order)), np.flatnonzero(np.diff(unit_part[order])) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(order)]):
            units.write(int(unit_part[order[a]]), grouped.slice(int(a), int(b - a)))
        del ti, ta, joined, picked
        pa.default_memory_pool().release_unused()
    units.close()
    for q in range(parts):
        t = units.read(q)
        units.remove(q)
        if not t.num_rows:
            continue
        t = t.sort_by([("capture", "ascending"), ("seq", "ascending"), ("pos", "ascending")])
        cap = aidx.as_numpy(t["capture"])
        seq_codes = aidx.as_numpy(pc.dictionary_encode(t["seq"].combine_chunks()).indices)
        starts = np.flatnonzero(np.r_[True, (cap[1:] != cap[:-1]) | (seq_codes[1:] != seq_codes[:-1])])
        ends = np.r_[starts[1:], len(cap)]
        seqs = t["seq"].take(pa.array(starts)).to_pylist()
        for a, b, seq in zip(starts, ends, seqs):
            batch = w.write(t.slice(int(a), int(b - a)).select(list(UNIT_COLUMNS)))
            w.entries[f"{cap[a]}/{seq}"] = [[batch, None, None]]
    w.info["units"] = len(w.entries)


def _build_data(path: Path, w) -> None:
    """``_data.json`` -> one batch per (capture, seq_name): its images in file order with their annotation."""

    def stream():
        if _first_byte(path) != b"{":
            raise _NotStreamed("top level is not an object")
        _data_rows(path, w, lambda prefix: _items(path, prefix))

    def whole(d):
        _data_rows(path, w, lambda prefix: iter(d.get("annotations", []) if prefix == "annotations.item"
                                                else d["images"]), streamed=False)

    _streamed_or_whole(path, w, stream, whole)


def _frame_key(key) -> int | None:
    """The frame id a per-capture file's key is looked up by (``str(frame)``), or None when no lookup
    can reach it."""
    try:
        fr = int(key)
    except (TypeError, ValueError):
        return None
    return fr if str(fr) == key else None


def _joint3d_row(e):
    """A frame's entry of ``_joint_3d.json`` -> (world_coord [126], joint_valid [42], None), or
    (None, None, reason) when malformed, or None when absent (null)."""
    if e is None:
        return None
    try:
        X = np.asarray(e["world_coord"], np.float64)
        v = np.asarray(e.get("joint_valid", np.ones(42)), np.float64).reshape(-1)
        if X.shape != (42, 3) or v.shape != (42,):
            raise ValueError(f"world_coord {X.shape}, joint_valid {v.shape}")
    except Exception as ex:  # noqa: BLE001 - recorded; raised as BadUnit when the frame is needed
        return None, None, str(ex)[:100]
    return X.reshape(-1), v, None


def _joint3d_batch(rows: list):
    import pyarrow as pa

    ok = np.array([r[1][2] is None for r in rows])
    X = np.zeros((len(rows), 126))
    v = np.zeros((len(rows), 42))
    for i, (_, (x, vv, _)) in enumerate(rows):
        if x is not None:
            X[i], v[i] = x, vv
    return pa.record_batch({
        "frame": pa.array([r[0] for r in rows], pa.int64()),
        "world_coord": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 126, mask=pa.array(~ok)),
        "joint_valid": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), 42, mask=pa.array(~ok)),
        "error": pa.array([r[1][2] for r in rows], pa.string())})


def _mano_row(e):
    return json.dumps(e)


def _mano_batch(rows: list):
    import pyarrow as pa

    return pa.record_batch({"frame": pa.array([r[0] for r in rows], pa.int64()),
                            "fit": pa.array([r[1] for r in rows], pa.string())})


def _frame_rows(w, captures, row, make_batch) -> None:
    """{capture: {frame: entry}} -> per capture, batches of FRAMES_PER_BATCH frames sorted by frame;
    a capture whose value is not an object is recorded as such (None)."""
    frames = 0
    for cap, entry in captures:
        if not isinstance(entry, dict):
            w.entries[cap] = None
            continue
        rows = []
        for key, e in entry.items():
            fr = _frame_key(key)
            if fr is not None:
                r = row(e)
                if r is not None:
                    rows.append((fr, r))
        rows.sort(key=lambda r: r[0])
        spans = []
        for i in range(0, len(rows), FRAMES_PER_BATCH):
            chunk = rows[i:i + FRAMES_PER_BATCH]
            spans.append([w.write(make_batch(chunk)), chunk[0][0], chunk[-1][0]])
        w.entries[cap] = spans  # a capture listed twice: the last one (as json.loads)
        frames += len(rows)
    w.info.update(captures=len(w.entries), frames=frames)


def _per_capture_builder(row, make_batch):
    def build(path: Path, w) -> None:
        def stream():
            if _first_byte(path) != b"{":
                raise _NotStreamed("top level is not an object")
            _frame_rows(w, _kvitems(path), row, make_batch)

        def whole(d):
            if not isinstance(d, dict):
                raise aidx.SourceMalformed(f"{path.name}: malformed (top level is not an object)")
            _frame_rows(w, iter(d.items()), row, make_batch)

        _streamed_or_whole(path, w, stream, whole)
    return build


_BUILDERS = {"data": _build_data, "joint_3d": _per_capture_builder(_joint3d_row, _joint3d_batch),
             "MANO_NeuralAnnot": _per_capture_builder(_mano_row, _mano_batch)}
_INDEXES: dict[tuple, "aidx.AnnotationIndex"] = {}


def open_annotation_index(path: Path, kind: str, root: Path | None = None) -> "aidx.AnnotationIndex":
    """The index of an InterHand annotation file (``kind``: data, joint_3d or MANO_NeuralAnnot), built now
    if missing (``root``: the index folder, default :func:`pairgen.real.annotation_index.index_root`)."""
    return aidx.open_index(Path(path), kind, _BUILDERS[kind], version=INDEX_VERSIONS[kind], root=root)


def _records(t) -> list:
    """A unit's batch of the ``_data.json`` index -> [(cam, frame, file_name, w, h, subject, ann | None)]
    (ann: joint_valid float32 [n], hand_type, hand_type_valid), in file order."""
    if t.num_rows == 0:
        return []
    jv = t["joint_valid"].combine_chunks()
    offsets = aidx.as_numpy(jv.offsets)
    values = aidx.as_numpy(jv.values)
    cols = [t[c].to_pylist() for c in ("camera", "frame_idx", "file_name", "width", "height", "subject",
                                        "has_ann", "hand_type", "hand_type_valid")]
    out = []
    for i, (cam, fr, fn, w, h, subj, has, ht, htv) in enumerate(zip(*cols)):
        ann = ({"joint_valid": values[offsets[i]:offsets[i + 1]], "hand_type": ht, "hand_type_valid": htv}
               if has else None)
        out.append((cam, fr, fn, w, h, subj, ann))
    return out


class _CaptureFrames:
    """One capture of a per-capture index (``_joint_3d.json``, ``_MANO_NeuralAnnot.json``)."""

    def __init__(self, index, key: str):
        self.index, self.key = index, key

    def _rows(self, frames):
        """The index's rows for ``frames`` (only the batches holding them are read) and which rows are
        of these frames; (None, None) when none."""
        frames = sorted(set(frames))
        t = self.index.read(self.key, frames)
        if t is None or t.num_rows == 0:
            return None, None
        # (numpy, not Table.filter: pyarrow converting a numpy mask imports pandas, ~50 MB per worker)
        return t, np.isin(aidx.as_numpy(t["frame"]), np.asarray(frames, np.int64))

    def joints(self, frames) -> dict[int, tuple | str]:
        """frame -> (world_coord [42, 3], joint_valid [42]) or the reason it is malformed (str)."""
        t, keep = self._rows(frames)
        if t is None:
            return {}
        X = t["world_coord"].combine_chunks()
        V = t["joint_valid"].combine_chunks()
        Xv = aidx.as_numpy(X.values)[X.offset * 126:(X.offset + len(X)) * 126].reshape(-1, 42, 3)
        Vv = aidx.as_numpy(V.values)[V.offset * 42:(V.offset + len(V)) * 42].reshape(-1, 42)
        frs, errors = aidx.as_numpy(t["frame"]), t["error"].to_pylist()
        return {int(frs[i]): errors[i] if errors[i] is not None else (Xv[i].copy(), Vv[i].copy())
                for i in np.flatnonzero(keep)}

    def fits(self, frames) -> dict[str, object]:
        """str(frame) -> that frame's MANO entry (as in the file)."""
        t, keep = self._rows(frames)
        if t is None:
            return {}
        return {str(fr): json.loads(fit) for fr, fit, k in zip(t["frame"].to_pylist(), t["fit"].to_pylist(), keep)
                if k}


def _image_file(paths: dict, cam: str, frame: int) -> Path:
    return Path(paths[(cam, frame)])


def _observe(cm: CameraModel, cam: str, rows: list, world: dict, valid3: dict, min_joints: int,
             observations: dict) -> None:
    """One camera's hands: ``rows`` [(frame, path, w, h, ann | None)] by frame (frames with 3D joints)
    -> ``observations[(hand, cam, frame)]`` for each hand with at least ``min_joints`` joints valid in
    3D, in front of the camera, inside the image and not marked invalid by ``ann``. The camera's
    frames are projected in one call: the same numbers as one call per image."""
    n = len(rows)
    frames = [r[0] for r in rows]
    X = np.nan_to_num(np.stack([world[fr] for fr in frames]))  # [n, 42, 3]
    uv, z = cm.project(X.reshape(-1, 3))
    uv, z = uv.reshape(n, 42, 2), z.reshape(n, 42)
    w = np.array([r[2] for r in rows], np.float64)[:, None]
    h = np.array([r[3] for r in rows], np.float64)[:, None]
    ok = np.stack([valid3[fr] for fr in frames]) & (z > 1e-6)
    ok &= (uv[..., 0] >= 0) & (uv[..., 0] <= w - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= h - 1)
    only = [None] * n  # the one hand an annotation names
    for i, r in enumerate(rows):
        ann = r[4]
        if ann is None:
            continue
        jv = ann["joint_valid"]
        if jv.shape == (42,):
            ok[i] &= jv > 0
        if ann.get("hand_type_valid") and ann.get("hand_type") in HANDS:
            only[i] = ann["hand_type"]
    per_hand = []
    for k in range(len(HANDS)):
        sl = slice(21 * k, 21 * k + 21)
        okh, pts = ok[:, sl], uv[:, sl]
        kps = np.concatenate([pts, okh[..., None].astype(np.float64)], axis=2)
        kps[~okh, :2] = 0.0
        top_left = np.where(okh[..., None], pts, np.inf).min(1)
        bottom_right = np.where(okh[..., None], pts, -np.inf).max(1)
        box = np.concatenate([top_left, bottom_right], axis=1)  # [n, 4]: x0, y0, x1, y1
        per_hand.append((okh.sum(1) >= min_joints, kps, box))
    for i, fr in enumerate(frames):
        for hand, (enough, kps, box) in zip(HANDS, per_hand):
            if enough[i] and (only[i] is None or only[i] == hand):
                observations[(hand, cam, fr)] = Observation(box=box[i], keypoints=kps[i])


def _joints_of(world: dict, valid: dict, track: str, frame: int) -> np.ndarray:
    sl = slice(0, 21) if track == "right" else slice(21, 42)
    out = np.array(world[frame][sl], np.float64)
    out[~valid[frame][sl]] = np.nan
    return out


def release_fps_and_rate(step: int, release: float | None) -> float:
    """Frame ids per second for a sequence whose consecutive frames differ by ``step``."""
    if release:
        return float(release) * step
    for rate in (90.0, 30.0):
        if rate / step in (5.0, 30.0):
            return rate
    return 90.0


class InterHandReader(Reader):
    name = "interhand"
    summary = "InterHand2.6M (5/30 fps): multi-view hands, 3D joints; one crop per hand; cross-view and cross-pose"
    needs = ("--root with images/ and annotations/ (InterHand2.6M v1.0, 5 fps or 30 fps release); "
             "optional --mano-model (MANO_RIGHT/LEFT.pkl) for --silhouette smpl")
    layout = ("ROOT/images/{train,val,test}/Capture<N>/<seq_name>/cam<ID>/image<frame_idx>.jpg\n"
              "ROOT/annotations/{skeleton.txt,subject.txt}\n"
              "ROOT/annotations/<split>/InterHand2.6M_<split>_{data,camera,joint_3d}.json "
              "[+ _MANO_NeuralAnnot.json]")
    option_help = {"fps": "the release, 5 or 30 (default: told from the steps between frame ids)",
                   "min_hand_joints": f"visible joints a hand needs to be cropped (default {MIN_HAND_JOINTS})",
                   "index_dir": f"where the annotation indexes are built once and read (default ${aidx.ENV}, "
                                f"else {aidx.DEFAULT_DIR}); on a cluster a folder every node sees"}

    # -- paths ----------------------------------------------------------------------------
    def _opt(self, key, default=None):
        o = self.options
        v = o.get(key) if isinstance(o, dict) else getattr(o, key, None)
        return default if v is None else v

    @property
    def ann_dir(self) -> Path:
        return Path(self._opt("annotations") or self.root / "annotations")

    def _ann(self, split: str, what: str) -> Path:
        return self.ann_dir / split / f"InterHand2.6M_{split}_{what}.json"

    def _splits(self) -> list[str]:
        return [s for s in SPLITS if (self.root / "images" / s).is_dir()
                and self._ann(s, "camera").is_file() and self._ann(s, "joint_3d").is_file()]

    def check(self) -> None:
        if not (self.root / "images").is_dir():
            raise ValueError(f"{self.root}: no images/ folder (expected {self.layout.splitlines()[0]})")
        if not self.ann_dir.is_dir():
            raise ValueError(f"{self.ann_dir}: no annotations folder")
        if not self._splits():
            raise ValueError(f"{self.root}: no split with images/<split>/ and "
                             "annotations/<split>/InterHand2.6M_<split>_{camera,joint_3d}.json")
        _ = self.release_fps, self.min_hand_joints  # validates the options
        aidx.check_index_root(self.index_root)

    @property
    def index_root(self) -> Path:
        """The folder of the annotation indexes (``--reader-option index_dir``, ``$CROCOMAN_INDEX_DIR``)."""
        return aidx.index_root(self._opt("index_dir"))

    def _index(self, path: Path, kind: str) -> aidx.AnnotationIndex | None:
        """The index of an annotation file (built now by the first process that needs it); None when
        the file is missing; BadUnit when it does not parse."""
        try:
            st = path.stat()
        except OSError:
            return None
        root = self.index_root
        key = (str(path.absolute()), st.st_size, st.st_mtime_ns, kind, str(root))
        with _CACHE_LOCK:
            idx = _INDEXES.get(key)
        if idx is None:
            try:
                idx = open_annotation_index(path, kind, root)
            except FileNotFoundError:
                return None
            with _CACHE_LOCK:
                while len(_INDEXES) >= 4 * _CACHE_MAX:
                    _INDEXES.pop(next(iter(_INDEXES)))
                _INDEXES[key] = idx
        if idx.error:
            raise BadUnit(idx.error)
        return idx

    @property
    def release_fps(self) -> float | None:
        """``--reader-option fps``: the release (5 or 30), None when not given. Values from the
        command line are strings."""
        raw = self._opt("fps")
        if raw in (None, ""):
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = None
        if value not in (5.0, 30.0):
            raise ValueError(f"interhand: --reader-option fps={raw}: the release, 5 or 30")
        return value

    @property
    def min_hand_joints(self) -> int:
        raw = self._opt("min_hand_joints", MIN_HAND_JOINTS)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            value = 0
        if not 1 <= value <= 21:
            raise ValueError(f"interhand: --reader-option min_hand_joints={raw}: a whole number in [1, 21]")
        return value

    def unit_names(self) -> list[tuple[str, str]]:
        out = []
        for split in self._splits():
            caps = []
            for c in os.scandir(self.root / "images" / split):
                m = _CAPTURE.match(c.name)
                if m and c.is_dir():
                    caps.append((int(m.group(1)), c.name, c.path))
            for _, cname, cpath in sorted(caps):
                for seq in sorted(e.name for e in os.scandir(cpath) if e.is_dir()):
                    out.append((f"{split}/{cname}/{seq}", split))
        return out

    # -- annotations --------------------------------------------------------------------------
    def _calibration(self, split: str, capture: int) -> dict[str, CameraModel]:
        path = self._ann(split, "camera")
        cams = _cached(path, _parse_camera)
        if cams is None:
            raise BadUnit(f"{path.name}: missing")
        entry = cams.get(str(capture))
        if entry is None:
            raise BadUnit(f"{path.name}: no capture {capture}")
        out = {}
        try:
            for cam, pos in entry["campos"].items():
                R = np.asarray(entry["camrot"][cam], np.float64)
                c = np.asarray(pos, np.float64).reshape(3)
                f = np.asarray(entry["focal"][cam], np.float64).reshape(2)
                p = np.asarray(entry["princpt"][cam], np.float64).reshape(2)
                if R.shape != (3, 3) or not (np.isfinite(R).all() and np.isfinite(c).all()):
                    raise ValueError(f"camrot of camera {cam} is not a finite 3x3 matrix")
                K = np.array([[f[0], 0, p[0]], [0, f[1], p[1]], [0, 0, 1.0]])
                out[str(cam)] = CameraModel(K=K, R=R, t=-R @ c)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadUnit(f"{path.name}: capture {capture} malformed ({type(e).__name__}: {str(e)[:100]})") from None
        return out

    def _capture_entry(self, split: str, kind: str, capture: int, missing: str = "missing") -> _CaptureFrames:
        """One capture of an annotation file keyed by capture (joint_3d, MANO_NeuralAnnot)."""
        path = self._ann(split, kind)
        index = self._index(path, kind)
        if index is None:
            raise BadUnit(f"{path.name}: {missing}")
        if index.entries.get(str(capture)) is None:  # absent, or not an object
            raise BadUnit(f"{path.name}: no capture {capture}")
        return _CaptureFrames(index, str(capture))

    def _joints3d(self, split: str, capture: int) -> _CaptureFrames:
        return self._capture_entry(split, "joint_3d", capture)

    def _data(self, split: str, capture: int, seq: str) -> list | None:
        """The unit's images in ``_data.json`` (file order): [(cam, frame, file_name, w, h, subject,
        ann | None)]; None without a ``_data.json``."""
        path = self._ann(split, "data")
        if not path.is_file():
            return None
        index = self._index(path, "data")
        if index is None:
            return None
        t = index.read(f"{capture}/{seq}")
        return [] if t is None else _records(t)

    def _listing(self, seq_dir: Path) -> dict[str, dict[int, str]]:
        """{camera: {frame: image path}} of a sequence folder (paths as strings: a unit has up to
        ~10^5 images)."""
        out: dict[str, dict[int, str]] = {}
        if not seq_dir.is_dir():
            return out
        for c in os.scandir(seq_dir):
            m = _CAM_DIR.match(c.name)
            if not (m and c.is_dir()):
                continue
            files = {}
            for f in os.scandir(c.path):
                mm = _IMAGE.match(f.name)
                if mm:
                    files[int(mm.group(1))] = f.path
            out[m.group(1)] = files
        return out

    # -- a unit ---------------------------------------------------------------------------------
    def load(self, name: str) -> Unit:
        try:
            split, cname, seq = name.split("/", 2)
            capture = int(_CAPTURE.match(cname).group(1))
        except (ValueError, AttributeError):
            raise BadUnit(f"not an InterHand unit name: {name}") from None
        calib = self._calibration(split, capture)
        joints = self._joints3d(split, capture)
        img_root = self.root / "images" / split
        listing = self._listing(img_root / cname / seq)
        records = self._data(split, capture, seq)
        skipped: list[tuple[str, str, str]] = []
        missing_cam: Counter = Counter()
        missing_file = 0
        subject = None
        images: list[tuple] = []  # (cam, frame, path, w, h, ann)
        if records is None:  # no _data.json: the folder listing is the index
            for cam, files in listing.items():
                for fr, p in files.items():
                    images.append((cam, fr, p, DEFAULT_SIZE[0], DEFAULT_SIZE[1], None))
        else:
            for cam, fr, fn, w, h, subj, ann in records:
                if subject is None and subj is not None:
                    subject = str(subj)
                if cam not in listing:
                    missing_cam[cam] += 1
                    continue
                p = listing[cam].get(fr)
                if p is None:
                    missing_file += 1
                    continue
                images.append((cam, fr, p, w, h, ann))
        for cam, n in sorted(missing_cam.items()):
            skipped.append((f"cam{cam}", "image folder missing", f"{n} images skipped"))
        if missing_file:
            skipped.append(("images", "image files listed in _data.json missing", f"{missing_file} images"))
        if not images:
            raise BadUnit(f"{name}: no images" + (f" ({'; '.join(f'{p}: {r}' for p, r, _ in skipped)})" if skipped else ""))
        uncal = Counter(cam for cam, *_ in images if cam not in calib)
        for cam, n in sorted(uncal.items()):
            skipped.append((f"cam{cam}", "not in the calibration", f"{n} images skipped"))
        images = [im for im in images if im[0] in calib]

        frame_joints = joints.joints({fr for _, fr, *_ in images})  # only the batches of these frames
        world: dict[int, np.ndarray] = {}
        valid3: dict[int, np.ndarray] = {}
        no_joints = 0
        by_cam: dict[str, list[tuple]] = {}  # cam -> [(frame, path, w, h, ann)], by frame
        for cam, fr, p, w, h, ann in sorted(images, key=lambda r: (r[0], r[1])):
            if fr not in world:
                e = frame_joints.get(fr)
                if e is None:
                    no_joints += 1
                    continue
                if isinstance(e, str):  # the entry did not convert (reason recorded in the index)
                    raise BadUnit(f"{self._ann(split, 'joint_3d').name}: capture {capture} frame {fr} "
                                  f"malformed ({e})")
                X, v = e
                world[fr] = X
                valid3[fr] = (v > 0) & np.isfinite(X).all(1)
            by_cam.setdefault(cam, []).append((fr, p, w, h, ann))
        observations: dict[tuple[str, str, int], Observation] = {}
        paths: dict[tuple[str, int], str] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for cam, rows in by_cam.items():  # sorted by camera, then frame
            for fr, p, w, h, _ in rows:
                paths[(cam, fr)] = p
            sizes.setdefault(cam, rows[0][2:4])
            _observe(calib[cam], cam, rows, world, valid3, self.min_hand_joints, observations)
        if no_joints:
            skipped.append(("images", "images without 3D joints", f"{no_joints} images skipped"))
        for cam, (w, h) in sizes.items():
            calib[cam].width, calib[cam].height = w, h
        if not observations:
            raise BadUnit(f"{name}: no visible hand" + (f" ({'; '.join(f'{p}: {r}' for p, r, _ in skipped)})" if skipped else ""))

        frames = sorted({fr for (_, fr) in paths})
        cameras = sorted(by_cam)
        steps: Counter = Counter()
        for cam in cameras:
            d = np.diff([r[0] for r in by_cam[cam]])  # the camera's frames, ascending
            steps.update(d[d > 0].tolist())
        release = self.release_fps
        fps = release_fps_and_rate(steps.most_common(1)[0][0], release) if steps else 90.0

        unit = Unit(
            name=name, split=split, subject=subject or cname, fps=fps, frames=frames, cameras=cameras,
            observations=observations, images=("files", functools.partial(_image_file, paths)),
            calibration={c: calib[c] for c in cameras},
            joints3d=functools.partial(_joints_of, world, valid3),
            kind="hand", silhouette_default="keypoints")
        unit.meshes = self._meshes(split, capture, frames)
        unit.skipped = skipped
        return unit

    # -- MANO (optional) ---------------------------------------------------------------------
    def _meshes(self, split: str, capture: int, frames: list[int]):
        model = self._opt("mano_model")
        if not model:
            return None
        entry = self._capture_entry(split, "MANO_NeuralAnnot", capture, "missing (needed by --mano-model)")
        return functools.partial(_mano_mesh, str(model), entry.fits(frames))  # the unit's frames only


@functools.lru_cache(maxsize=4)
def _mano_layers(model: str) -> dict:
    import smplx
    import torch

    from pairgen import safe_pickle

    p = Path(model)
    if p.is_file():
        p = p.parent
    # smplx would unpickle MANO_{RIGHT,LEFT}.pkl with plain pickle: hand it the restricted loader's arrays
    try:
        data = {h: safe_pickle.body_model_struct(p, "mano", is_rhand=(h == "right")) for h in HANDS}
    except safe_pickle.RefusedPickle as exc:
        raise BadUnit(f"--mano-model: {exc}") from None
    layers = {h: smplx.MANO(str(p), is_rhand=(h == "right"), use_pca=False, flat_hand_mean=False, data_struct=data[h])
              for h in HANDS}
    # smplx loads the left MANO with the right hand's first shape direction (known sign bug)
    if torch.sum(torch.abs(layers["left"].shapedirs[:, 0, :] - layers["right"].shapedirs[:, 0, :])) < 1:
        layers["left"].shapedirs[:, 0, :] *= -1
    return layers


def _mano_mesh(model: str, entry: dict, track: str, frame: int):
    import torch

    e = (entry.get(str(frame)) or {}).get(track)
    if not e:
        raise BadUnit(f"no MANO fit for the {track} hand at frame {frame}")
    layer = _mano_layers(model)[track]
    pose = torch.as_tensor(np.asarray(e["pose"], np.float32).reshape(1, 48))
    shape = torch.as_tensor(np.asarray(e["shape"], np.float32).reshape(1, 10))
    trans = torch.as_tensor(np.asarray(e["trans"], np.float32).reshape(1, 3))
    with torch.no_grad():
        out = layer(global_orient=pose[:, :3], hand_pose=pose[:, 3:], betas=shape, transl=trans)
    verts = out.vertices[0].numpy().astype(np.float64) * 1000.0  # metres -> mm (world)
    return verts, np.asarray(layer.faces, np.int64)


class InterHandSource(RealSource):
    reader_cls = InterHandReader
