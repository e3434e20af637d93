"""Frame decoding, planned first and done once.

The worker first collects every (camera, frame) its pairs and background models need, then
decodes each video once, sequentially from the start up to the last needed frame (no seeking per
frame, no frame decoded twice), and reads image files directly. Decoding runs in a background
thread a few frames ahead of the worker (PyAV and simplejpeg release the GIL), so it overlaps the
worker's cropping. A decoded video frame is handed on as a :class:`VideoImage`: its RGB pixels are
converted where a crop needs them, not over the whole frame.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np

_METRICS_LOCK = threading.Lock()


def add_metric(metrics: dict, key: str, value) -> None:
    """``metrics[key] += value`` from any thread."""
    with _METRICS_LOCK:
        metrics[key] = metrics.get(key, 0) + value


class FrameError(Exception):
    """An image could not be decoded: ``reason`` (generic, counted) and ``detail`` (which file)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _plane(plane) -> np.ndarray:
    """A video plane as a [height, width] uint8 view (no copy; rows keep their line padding)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: plane.height, : plane.width]


class VideoImage:
    """A decoded video frame that converts to RGB on demand, for the part that is used.

    ``img[y0:y1, x0:x1]`` (what a crop takes) converts only that region; ``np.asarray(img)`` the
    whole frame (kept, and sliced by later regions). ``shape`` (height, width, 3), ``ndim`` and
    ``dtype`` are those of that array. A yuv420p region is cut at even rows and columns (so it
    owns its chroma samples) and converted by the same swscale routine as the whole frame: its
    pixels are exactly the whole frame's (tests/test_real_machinery.py checks this). Other pixel
    formats convert whole frames. Conversion time is added to ``metrics["decode_s"]`` (decoding
    to RGB). Safe to use from several threads.
    """

    __slots__ = ("_frame", "_metrics", "_rgb", "_converted", "_lock", "shape")
    ndim = 3  # as the RGB array it stands for
    dtype = np.dtype(np.uint8)

    def __init__(self, frame, metrics: dict | None = None):
        self._frame = frame
        self._metrics = metrics if metrics is not None else {}
        self._rgb: np.ndarray | None = None
        self._converted = 0  # pixels converted region by region so far
        self._lock = threading.Lock()
        self.shape = (frame.height, frame.width, 3)

    def rgb(self) -> np.ndarray:
        """The whole frame as an [H, W, 3] RGB array (converted once)."""
        with self._lock:
            if self._rgb is None:
                t0 = time.perf_counter()
                self._rgb = self._frame.to_ndarray(format="rgb24")
                add_metric(self._metrics, "decode_s", time.perf_counter() - t0)
            return self._rgb

    def __array__(self, dtype=None, copy=None):
        return self.rgb() if dtype is None else self.rgb().astype(dtype)

    def __getitem__(self, key):
        h, w = self.shape[:2]
        regional = (self._frame.format.name == "yuv420p" and h % 2 == 0 and w % 2 == 0
                    and isinstance(key, tuple) and len(key) == 2
                    and all(isinstance(k, slice) and k.step in (None, 1) for k in key))
        if not regional:
            return self.rgb()[key]
        y0, y1, _ = key[0].indices(h)
        x0, x1, _ = key[1].indices(w)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        with self._lock:
            whole = self._rgb is not None or 2 * (self._converted + (y1 - y0) * (x1 - x0)) > h * w
            if not whole:
                self._converted += (y1 - y0) * (x1 - x0)
        if whole:  # converted already, or most of the frame is asked for: convert it all, once
            return self.rgb()[key]
        return self._region(y0, y1, x0, x1)

    def _region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        import av
        from av.video.reformatter import VideoReformatter

        t0 = time.perf_counter()
        ey0, ex0, ey1, ex1 = y0 & ~1, x0 & ~1, (y1 + 1) & ~1, (x1 + 1) & ~1
        src = self._frame
        part = av.VideoFrame(ex1 - ex0, ey1 - ey0, "yuv420p")
        for i, (a, b) in enumerate(zip(src.planes, part.planes)):
            d = 1 if i == 0 else 2  # chroma planes are subsampled 2x2
            _plane(b)[:] = _plane(a)[ey0 // d:ey1 // d, ex0 // d:ex1 // d]
        part.colorspace, part.color_range = src.colorspace, src.color_range
        rgb = VideoReformatter().reformat(part, format="rgb24", threads=1).to_ndarray()
        add_metric(self._metrics, "decode_s", time.perf_counter() - t0)
        return rgb[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]


_END = object()
# A unit's videos are decoded two at a time, each decoder with slice threads only: FFmpeg's frame
# threading (what "AUTO" picks for H.264) costs 15-40% more CPU per frame, which a worker that
# crops and encodes beside its decoders cannot spare. A lone video keeps PyAV's "AUTO".
VIDEO_DECODERS = 2


def read_ahead(sources, depth: int = 8):
    """Yield what the iterators ``sources`` yield, each produced by its own background thread, up
    to ``depth`` items ahead of the consumer (worth it when producing releases the GIL: decoding).
    Items of one source keep their order; sources interleave as they come. An exception in a
    producer is raised in the consumer; closing the consumer stops the producers."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce(items) -> None:
        try:
            for x in items:
                if not put((True, x)):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put((False, exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        put(_END)

    workers = [threading.Thread(target=produce, args=(items,), name="read-ahead", daemon=True) for items in sources]
    for w in workers:
        w.start()
    try:
        running = len(workers)
        while running:
            item = out.get()
            if item is _END:
                running -= 1
                continue
            ok, x = item
            if not ok:
                raise x
            yield x
    finally:
        stop.set()
        for w in workers:
            w.join()


def _video_events(videos: list[tuple[Path | None, set[int]]], fps: float, claim, thread_type: str):
    """What decoding videos meets, in order, for the videos this decoder claims (``claim()`` gives
    the next unclaimed index, or None): (kind, j, value) with kind "frame" (value (index, frame)),
    "missing", "unreadable" / "damaged" (value the exception), "end"."""
    import av

    while (j := claim()) is not None:
        path, wanted = videos[j]
        if path is None or not Path(path).exists():
            yield "missing", j, None
            continue
        if not wanted:
            continue
        last = max(wanted)
        try:
            container = av.open(str(path))
        except Exception as exc:  # noqa: BLE001 - the consumer decides (unreadable video or a crash)
            yield "unreadable", j, exc
            continue
        try:
            stream = container.streams.video[0]
            stream.thread_type = thread_type
            for n, frame in enumerate(container.decode(stream)):
                t = frame.time
                idx = int(np.floor(t * fps + 1e-6)) if t is not None else n
                yield "frame", j, (idx, frame)
                if idx >= last:
                    break
        except Exception as exc:  # noqa: BLE001 - as above (damaged video or a crash)
            yield "damaged", j, exc
            continue
        finally:
            container.close()  # decoded frames are reference-counted: they outlive it
        yield "end", j, None


def decode_videos(videos: list[tuple[Path | None, set[int]]], fps: float, counter: dict | None = None,
                  errors: list | None = None, depth: int = 8):
    """Yield (j, index, :class:`VideoImage`) for the frames wanted of each video j, video after video,
    each in one sequential pass.

    ``videos`` is [(path or None, wanted frame indices at ``fps``)]. Background threads (two
    decoders, see ``VIDEO_DECODERS``) open and decode the videos in turn up to ``depth`` frames
    ahead of the consumer, so decoding, and opening the next video, go on while the consumer crops;
    frames of two videos may interleave, each video's in order. Frame index = floor(timestamp * fps)
    (AIST's rule: 60 fps, rounded down); without timestamps, the decode order. A missing,
    unreadable, truncated or damaged file ends its video early and appends (j, reason, detail) to
    ``errors`` in video order (the caller counts the frames it did not get). ``counter``
    accumulates ``decoded_frames`` (and the images' conversion time, ``decode_s``).
    """
    import av

    counter = counter if counter is not None else {}
    found: list = []
    got: list[set[int]] = [set() for _ in videos]
    order = iter(range(len(videos)))
    lock = threading.Lock()

    def claim() -> int | None:
        with lock:
            return next(order, None)

    decoders = min(VIDEO_DECODERS, len(videos))
    thread_type = "SLICE" if decoders > 1 else "AUTO"
    events = [_video_events(videos, fps, claim, thread_type) for _ in range(decoders)]
    for kind, j, value in read_ahead(events, depth):
        path, wanted = videos[j]
        if kind == "frame":
            add_metric(counter, "decoded_frames", 1)
            idx, frame = value
            if idx in wanted and idx not in got[j]:
                got[j].add(idx)
                yield j, idx, VideoImage(frame, counter)
        elif kind == "missing":
            found.append((j, "missing video", str(path)))
        elif kind == "unreadable":
            if not isinstance(value, (av.FFmpegError, OSError)):
                raise value
            found.append((j, "unreadable video", f"{Path(path).name}: {value}"))
        elif kind == "damaged":
            if not isinstance(value, (av.FFmpegError, OSError, ValueError)):
                raise value
            found.append((j, "damaged video", f"{Path(path).name}: after {len(got[j])} wanted frames: {value}"))
        elif len(got[j]) < len(wanted):  # the end of a video that did not hold every wanted frame
            found.append((j, "video ended early", f"{Path(path).name}: before frame {max(set(wanted) - got[j])}"))
    if errors is not None:
        errors.extend(sorted(found, key=lambda e: e[0]))  # in video order, whichever decoder met them


def video_frames(path: Path, wanted: set[int], fps: float, counter: dict | None = None, errors: list | None = None):
    """Yield (index, :class:`VideoImage`) for the frames ``wanted`` of one video (see
    :func:`decode_videos`); problems are appended to ``errors`` as (reason, detail)."""
    found: list = []
    try:
        for _, idx, img in decode_videos([(path, wanted)], fps, counter, found):
            yield idx, img
    finally:
        if errors is not None:
            errors.extend((reason, detail) for _, reason, detail in found)


def read_image(path: Path) -> np.ndarray:
    """RGB array of an image file (JPEG through simplejpeg, others through OpenCV)."""
    import cv2
    import simplejpeg

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FrameError("missing image", path.name) from exc
    if path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except (ValueError, RuntimeError) as exc:
            raise FrameError("corrupt JPEG", f"{path.name}: {exc}") from exc
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise FrameError("corrupt image", path.name)
    return np.ascontiguousarray(img[..., ::-1])


def _image_events(unit, needed: dict[str, set[int]], metrics: dict):
    """(cam, frame, RGB array or FrameError) for the image files ``needed`` asks for, in order."""
    for cam in sorted(needed):
        for f in sorted(needed[cam]):
            t0 = time.perf_counter()
            try:
                img = read_image(unit.image_path(cam, f))
            except FrameError as exc:
                img = exc
            add_metric(metrics, "decode_s", time.perf_counter() - t0)
            yield cam, f, img


def iter_frames(unit, needed: dict[str, set[int]], metrics: dict | None = None, problems: list | None = None):
    """Yield (cam, frame, image) for what ``needed`` ({camera: frame ids}) asks for, each decoded
    once, a few frames ahead of the caller by a background thread. The image is an RGB array (image
    files) or a :class:`VideoImage` (videos), which slices like one and converts with ``np.asarray``.

    The caller consumes each frame as it comes (crops it) instead of holding a sequence's frames in
    memory. What cannot be decoded is appended to ``problems`` as (unit part, reason, detail).
    ``metrics`` accumulates decoded_frames and decode_s (images: time spent decoding them; videos:
    time the caller waited for a frame, plus the RGB conversions).
    """
    metrics = metrics if metrics is not None else {}
    problems = problems if problems is not None else []
    mode, spec = unit.images

    def timed(gen):
        while True:
            t0 = time.perf_counter()
            try:
                item = next(gen)
            except StopIteration:
                add_metric(metrics, "decode_s", time.perf_counter() - t0)
                return
            add_metric(metrics, "decode_s", time.perf_counter() - t0)
            yield item

    if mode == "video":  # one decoding thread runs through the cameras' videos in turn
        cams = sorted(needed)
        errors: list = []
        for j, f, img in timed(decode_videos([(spec.get(c), needed[c]) for c in cams], unit.fps, metrics, errors)):
            yield cams[j], f, img
        problems.extend((f"{unit.name}/{cams[j]}", reason, detail) for j, reason, detail in errors)
        return
    for cam, f, img in read_ahead([_image_events(unit, needed, metrics)]):
        if isinstance(img, FrameError):
            problems.append((f"{unit.name}/{cam}/{f}", img.reason, img.detail))
            continue
        add_metric(metrics, "decoded_frames", 1)
        yield cam, f, img


def jpeg_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF header without decoding; None if it is not a JPEG."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return None
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                while marker[1] == 0xFF:  # fill bytes
                    marker = marker[1:] + f.read(1)
                code = marker[1]
                if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
                    continue
                seg = f.read(2)
                if len(seg) < 2:
                    return None
                length = int.from_bytes(seg, "big")
                if code in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    sof = f.read(5)
                    if len(sof) < 5:
                        return None
                    h, w = int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big")
                    return (w, h) if w > 0 and h > 0 else None
                if code == 0xD9 or length < 2:
                    return None
                f.seek(length - 2, 1)
    except OSError:
        return None
