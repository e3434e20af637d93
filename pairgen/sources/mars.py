"""MARS (Motion Analysis and Re-identification Set): tracklets of 256x128 person crops, 6 cameras.

Layout (ROOT is the unpacked dataset)::

    bbox_train/<pid %04d>/<pid>C<cam>T<tracklet %04d>F<frame %03d>.jpg    e.g. 0001C1T0001F001.jpg
    bbox_test/<pid %04d>/...                                              (also 00-1/ junk, 0000/ distractors)
    info/train_name.txt, test_name.txt          optional: one image name per line
    info/tracks_train_info.mat, tracks_test_info.mat   optional: var track_{train,test}_info (N, 4) =
                                                [start, end (1-based, inclusive into the name list), pid, camid]

Unit = one tracklet (``0001C1T0001``): one person (subject = the pid folder, ``0001``), one camera
(``C1``), track = the tracklet name. MARS cameras are not synchronised, so there are no cross-view
pairs (the same pid in two cameras is an identity pair, not an instant): only ``cross_pose`` pairs,
two frames of one tracklet (the planner hands the cross-view quota to cross-pose).
Split: ``bbox_train`` -> "train", ``bbox_test`` -> "test" (query/gallery are not needed).
Junk (``00-1``, pid -1) and distractor (``0000``, pid 0) folders and info rows are excluded.

Readings chosen where the documentation is uncertain (docs/datasets.md section 7):

- Frame ids: F is the frame number within the tracklet; time = F / fps. MARS does not state the
  frame rate of the F numbers: reader option ``fps`` (``--reader-option fps=25``), default 25.
- Which wins, file names or info tables: the FILE NAMES. A tracklet's frames are the images on
  disk named ``<pid>C<cam>T<tracklet>F<frame>.jpg`` in its pid folder, ordered by F. The info
  tables (when both the name list and the .mat of a split are present and readable) are a
  cross-check: images they list that are missing on disk are recorded (``unit.skipped``); a
  tracklet whose listed images are all missing is a bad unit; a table row whose pid/camid
  disagree with its names is recorded and ignored. Images on disk that the tables do not list
  are used. A malformed table (unreadable .mat, wrong variable or shape, indices outside the
  name list) is not used: the split falls back to file names, recorded once, on the split's
  first tracklet (part ``info/<file>``). MATLAB v7.3 (HDF5) .mat files count as unreadable.
- Image size: read from the first readable JPEG header of the tracklet (256x128 H x W in MARS).
- Person box: the crops are detector boxes around the person, so the person spans the crop's
  height and its central part. The box is the full height and the central ``person_width``
  fraction of the width (reader option, default 0.5; 1 = the whole image). The square crop around
  it is padded left and right (and above: the machinery's head room). On rendered MARS-like
  crops the central half scores a higher silhouette IoU (0.40 mean) than the whole image (0.24)
  and covers less of the neighbours who enter the crop.
- Silhouettes: MARS ships no keypoints, masks or body fits, and the crops follow the person (no
  static background), so ``keypoints`` (the default; with no keypoints it is the person box as a
  rectangle) is the only method that applies; ``bgsub`` and ``smpl`` do not apply to MARS.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pairgen.real.source import RealSource
from pairgen.real.types import BadUnit, Observation, Reader, Unit
from pairgen.real.frames import jpeg_size

DEFAULT_FPS = 25.0
DEFAULT_PERSON_WIDTH = 0.5
DEFAULT_SIZE = (128, 256)  # MARS crops, W x H
SPLIT_DIRS = {"train": "bbox_train", "test": "bbox_test"}
INFO_FILES = {  # split -> (name list, .mat file, variable)
    "train": ("train_name.txt", "tracks_train_info.mat", "track_train_info"),
    "test": ("test_name.txt", "tracks_test_info.mat", "track_test_info"),
}
EXCLUDED_PIDS = ("00-1", "0000")  # junk (pid -1) and distractors (pid 0)
NAME_RE = re.compile(r"^(\d{4}|00-1)C(\d)T(\d{4})F(\d{3,})\.jpg$", re.IGNORECASE)
TRACK_RE = re.compile(r"^(\d{4})C(\d)T(\d{4})$")
PID_RE = re.compile(r"^\d{4}$")
PID_CACHE = 32  # pid folder listings kept (~1,000 names each; a full split's would be ~0.6M file names).
# Units come in a seeded random order, so a larger cache would rarely be hit: it only grew with the dataset
FRAME_MAX = np.iinfo(np.int32).max  # a larger F number is not a frame of MARS: the name counts as bad


class ListedFrames(Mapping):
    """tracklet -> the set of frame numbers the info table lists for it, stored as one small int32
    array per tracklet (~25x smaller than sets: a split's table is ~0.5M names)."""

    def __init__(self):
        self._frames: dict[str, np.ndarray] = {}

    def add(self, track: str, frames) -> None:
        have = self._frames.get(track)
        new = np.unique(np.asarray(frames if isinstance(frames, np.ndarray) else list(frames), np.int32))
        self._frames[track] = new if have is None else np.union1d(have, new).astype(np.int32)

    def __getitem__(self, track: str) -> set[int]:
        return set(self._frames[track].tolist())

    def __contains__(self, track) -> bool:
        return track in self._frames

    def __iter__(self):
        return iter(self._frames)

    def __len__(self) -> int:
        return len(self._frames)


class InfoTable:
    """A split's info tables: listed frames per tracklet, row problems, or why the table is unusable."""

    def __init__(self):
        self.listed = ListedFrames()
        self.notes: dict[str, list[tuple[str, str, str]]] = {}
        self.problem: tuple[str, str] | None = None  # (file, detail): malformed, the split uses file names
        self.present = False


class _Row:
    """What one info row's names say, gathered as the name list streams past."""

    __slots__ = ("keys", "bad", "first", "last")

    def __init__(self):
        self.keys: dict[str, list[int]] = {}
        self.bad = 0
        self.first = self.last = ""


def _names(path: Path):
    """The name list's non-empty lines, stripped, one at a time (never the whole list in memory)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def read_info(info_dir: Path, split: str) -> InfoTable:
    """Parse ``info/<split>_name.txt`` + ``tracks_<split>_info.mat`` (both optional, never fatal).

    The name list is streamed: each line is given to the row whose [start, end] holds it, so memory
    holds the rows (~8k) and the listed frame numbers (int32), not ~0.5M name strings; a row's frame
    numbers are made an int32 array as soon as its last name has passed."""
    names_file, mat_file, var = INFO_FILES[split]
    table = InfoTable()
    names_path, mat_path = info_dir / names_file, info_dir / mat_file
    if not names_path.exists() and not mat_path.exists():
        return table
    table.present = True
    if not names_path.is_file() or not mat_path.is_file():
        missing = names_file if not names_path.is_file() else mat_file
        table.problem = (missing, f"{missing} missing (the other table is useless alone)")
        return table
    try:
        with open(names_path, "rb") as f:
            f.read(1)
    except OSError as exc:
        table.problem = (names_file, f"unreadable: {exc}")
        return table
    try:
        from scipy.io import loadmat

        arr = np.asarray(loadmat(str(mat_path))[var], np.float64)
    except KeyError:
        table.problem = (mat_file, f"no variable {var!r}")
        return table
    except Exception as exc:  # scipy raises assorted errors (ValueError, TypeError, NotImplementedError for v7.3)
        table.problem = (mat_file, f"unreadable .mat: {type(exc).__name__}: {exc}"[:200])
        return table
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all() or np.any(arr != np.round(arr)):
        table.problem = (mat_file, f"{var} is not an (N, 4) integer table (shape {arr.shape})")
        return table
    rows = arr.astype(np.int64)
    live = np.flatnonzero(~np.isin(rows[:, 2], (-1, 0)))  # junk and distractor rows are not used
    starts, ends = rows[:, 0].tolist(), rows[:, 1].tolist()
    # each line goes to the live rows whose [start, end] hold it (rows may overlap)
    order = sorted(live.tolist(), key=lambda r: starts[r])
    state = {r: _Row() for r in order}
    active: list[int] = []
    nxt, n_names, next_end = 0, 0, None
    try:
        for i, name in enumerate(_names(names_path), start=1):
            n_names = i
            while nxt < len(order) and starts[order[nxt]] == i:
                active.append(order[nxt])
                next_end = None
                nxt += 1
            if not active:
                continue
            m = NAME_RE.match(name)
            key = f"{m.group(1)}C{m.group(2)}T{m.group(3)}" if m and int(m.group(4)) <= FRAME_MAX else None
            for r in active:
                st = state[r]
                if i == starts[r]:
                    st.first = name
                if i == ends[r]:
                    st.last = name
                if key is None:
                    st.bad += 1
                else:
                    st.keys.setdefault(key, []).append(int(m.group(4)))
            if next_end is None:
                next_end = min(ends[r] for r in active)
            if i >= next_end:
                for r in active:
                    if ends[r] <= i:  # the row's last name: its frames, compact
                        st = state[r]
                        st.keys = {k: np.asarray(v, np.int32) for k, v in st.keys.items()}
                active = [r for r in active if ends[r] > i]
                next_end = None
    except OSError as exc:
        table.problem = (names_file, f"unreadable: {exc}")
        return table
    if len(live) and (rows[live, 0].min() < 1 or rows[live, 1].max() > n_names or np.any(rows[live, 0] > rows[live, 1])):
        table.problem = (mat_file, f"{var} indices fall outside {names_file} ({n_names} names) or start > end")
        return table
    for r, (start, end, pid, cam) in enumerate(rows, start=1):
        if pid in (-1, 0):
            continue
        st = state.pop(r - 1)  # its frames move to table.listed
        expect = {k for k in st.keys if TRACK_RE.match(k) and int(k[:4]) == pid and int(k[5]) == cam}
        if st.bad or len(st.keys) != 1 or not expect:
            detail = f"pid {pid} camid {cam}, names {st.first}..{st.last}"
            for k in st.keys:
                table.notes.setdefault(k, []).append(
                    (f"info row {r}", f"{mat_file} row disagrees with its names (file names used)", detail))
            continue
        for k, frames in st.keys.items():
            table.listed.add(k, frames)
    return table


class MarsReader(Reader):
    name = "mars"
    summary = "MARS video re-id: tracklets of 256x128 person crops, 6 unsynchronised cameras; cross-pose only"
    needs = ("--root: the MARS folder (bbox_train/, bbox_test/, optional info/); "
             "--reader-option fps=N (frame rate of the F numbers, default 25), person_width=F (default 0.5)")
    layout = ("ROOT/bbox_{train,test}/<pid %04d>/<pid>C<cam>T<tracklet %04d>F<frame %03d>.jpg, optional "
              "ROOT/info/{train,test}_name.txt + tracks_{train,test}_info.mat")
    # no keypoints, masks or fits, and no static background: GrabCut seeded by the box, or the box itself
    silhouettes = ("grabcut", "box")
    option_help = {"fps": f"frame rate of the F numbers, not stated by MARS (default {DEFAULT_FPS:g})",
                   "person_width": f"box width as a share of the crop width, in (0, 1] "
                                   f"(default {DEFAULT_PERSON_WIDTH:g})"}

    def __init__(self, root: str, options: dict | None = None):
        super().__init__(root, options)
        self._pid_files: OrderedDict[tuple[str, str], dict[str, dict[int, str]]] = OrderedDict()
        self._info: dict[str, InfoTable] = {}
        self._note_unit: dict[str, str | None] = {}

    # options ----------------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        return self.number_option("fps", DEFAULT_FPS, 0.0, 1000.0)

    @property
    def person_width(self) -> float:
        return self.number_option("person_width", DEFAULT_PERSON_WIDTH, 0.0, 1.0)

    # listing ----------------------------------------------------------------------------------
    def _splits(self) -> list[str]:
        want = self.options.get("split")
        return [s for s, d in SPLIT_DIRS.items() if (self.root / d).is_dir() and want in (None, s)]

    def check(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"--root {self.root}: not a directory")
        if not any((self.root / d).is_dir() for d in SPLIT_DIRS.values()):
            raise ValueError(f"--root {self.root}: no bbox_train/ or bbox_test/ folder (give the MARS folder)")
        _ = (self.fps, self.person_width)  # validates the options

    def _pids(self, split: str) -> list[str]:
        d = self.root / SPLIT_DIRS[split]
        try:
            return sorted(p.name for p in d.iterdir() if PID_RE.match(p.name) and p.name not in EXCLUDED_PIDS
                          and p.is_dir())
        except OSError:
            return []

    def _files(self, split: str, pid: str) -> dict[str, dict[int, str]]:
        """{tracklet: {F: file name}} of one pid folder (names of another pid are ignored)."""
        key = (split, pid)
        if key in self._pid_files:
            self._pid_files.move_to_end(key)
        else:
            found: dict[str, dict[int, str]] = {}
            try:
                names = sorted(p.name for p in (self.root / SPLIT_DIRS[split] / pid).iterdir())
            except OSError:
                names = []
            for n in names:
                m = NAME_RE.match(n)
                if m and m.group(1) == pid:
                    found.setdefault(f"{pid}C{m.group(2)}T{m.group(3)}", {})[int(m.group(4))] = n
            self._pid_files[key] = found
            while len(self._pid_files) > PID_CACHE:  # the listings of the pids used last, not of the dataset
                self._pid_files.popitem(last=False)
        return self._pid_files[key]

    def info(self, split: str) -> InfoTable:
        if split not in self._info:
            self._info[split] = read_info(self.root / "info", split)
        return self._info[split]

    def unit_names(self) -> list[tuple[str, str]]:
        out: dict[str, str] = {}
        for split in self._splits():
            tracks = {t for pid in self._pids(split) for t in self._files(split, pid)}
            table = self.info(split)
            if table.problem is None:
                tracks |= {t for t in table.listed if t[:4] not in EXCLUDED_PIDS}
            for t in tracks:
                if t in out:
                    raise ValueError(f"mars: tracklet {t} is in both {SPLIT_DIRS[out[t]]}/ and {SPLIT_DIRS[split]}/")
                out[t] = split
        return sorted(out.items())

    def _split_of(self, track: str) -> str | None:
        """The split whose folder holds the tracklet's images, else whose info table lists it: a worker
        parses the info table of its tracklets' split only (a name in both splits is refused by
        :meth:`unit_names`)."""
        for split in self._splits():
            if track in self._files(split, track[:4]):
                return split
        for split in self._splits():
            table = self.info(split)
            if table.problem is None and track in table.listed:
                return split
        return None

    def _first_unit(self, split: str) -> str | None:
        """The split's first tracklet (sorted) with two images: where a malformed table is recorded."""
        if split not in self._note_unit:
            self._note_unit[split] = None
            for pid in self._pids(split):
                usable = sorted(t for t, frames in self._files(split, pid).items() if len(frames) >= 2)
                if usable:
                    self._note_unit[split] = usable[0]
                    break
        return self._note_unit[split]

    # one tracklet -----------------------------------------------------------------------------
    def load(self, name: str) -> Unit:
        m = TRACK_RE.match(name)
        if not m or name[:4] in EXCLUDED_PIDS:
            raise BadUnit(f"not a MARS tracklet name: {name}")
        split = self._split_of(name)
        if split is None:
            raise BadUnit("no images and not in the info tables")
        pid, cam = m.group(1), f"C{m.group(2)}"
        folder = self.root / SPLIT_DIRS[split] / pid
        on_disk = self._files(split, pid).get(name, {})
        table = self.info(split)
        names_file, mat_file, _ = INFO_FILES[split]
        skipped: list[tuple[str, str, str]] = []
        if table.problem is not None:
            if self._first_unit(split) == name:
                file, detail = table.problem
                skipped.append((f"info/{file}", "malformed info table: tracklets from file names", detail))
        else:
            skipped += table.notes.get(name, [])
            listed = table.listed.get(name, set())
            missing = sorted(listed - set(on_disk))
            if listed and not on_disk:
                raise BadUnit(f"all {len(listed)} images listed in info/{names_file} are missing")
            for F in missing:
                skipped.append((f"F{F:03d}", f"image listed in info/{names_file} is missing", f"{name}F{F:03d}.jpg"))
        if not on_disk:
            raise BadUnit("no images")
        if len(on_disk) < 2:
            raise BadUnit("tracklet has 1 image: no cross-pose pair")
        frames = sorted(on_disk)
        W, H = DEFAULT_SIZE
        for F in frames[:3]:
            size = jpeg_size(folder / on_disk[F])
            if size:
                W, H = size
                break
        pw = self.person_width
        box = np.array([(1 - pw) / 2 * W - 0.5, -0.5, (1 + pw) / 2 * W - 0.5, H - 0.5])
        observations = {(name, cam, F): Observation(box=box.copy()) for F in frames}

        def image_fn(camera: str, frame: int) -> Path:
            return folder / on_disk[frame]

        unit = Unit(name=name, split=split, subject=pid, fps=self.fps, frames=frames, cameras=[cam],
                    observations=observations, images=("files", image_fn), kind="body",
                    silhouette_default="grabcut")
        unit.skipped = skipped
        return unit


class MarsSource(RealSource):
    reader_cls = MarsReader
