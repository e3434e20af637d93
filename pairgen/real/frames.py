"""Frame decoding, planned first and done once.

The worker first collects every (camera, frame) its pairs and background models need, then
decodes each video once, sequentially from the start up to the last needed frame (no seeking per
frame, no frame decoded twice), and reads image files directly. A decoded video frame is handed on
as a :class:`VideoImage`: its RGB pixels are converted where a crop needs them, not over the whole
frame.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np


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
    whole frame (kept, and sliced by later regions). ``shape`` is (height, width, 3) as for an
    array. Conversion time is added to ``metrics["decode_s"]`` (decoding to RGB, as before). A yuv420p region is cut at even rows and columns (so it owns its chroma samples) and
    converted by the same swscale routine as the whole frame: its pixels are exactly the whole
    frame's (tests/test_real_machinery.py checks this). Other pixel formats convert whole frames.
    """

    __slots__ = ("_frame", "_reformatter", "_metrics", "_rgb", "_converted", "shape")

    def __init__(self, frame, reformatter=None, metrics: dict | None = None):
        self._frame = frame
        self._reformatter = reformatter
        self._metrics = metrics if metrics is not None else {}
        self._rgb: np.ndarray | None = None
        self._converted = 0  # pixels converted region by region so far
        self.shape = (frame.height, frame.width, 3)

    def rgb(self) -> np.ndarray:
        """The whole frame as an [H, W, 3] RGB array (converted once)."""
        if self._rgb is None:
            t0 = time.perf_counter()
            self._rgb = self._frame.to_ndarray(format="rgb24")
            self._metrics["decode_s"] = self._metrics.get("decode_s", 0.0) + time.perf_counter() - t0
        return self._rgb

    def __array__(self, dtype=None, copy=None):
        return self.rgb() if dtype is None else self.rgb().astype(dtype)

    def __getitem__(self, key):
        h, w = self.shape[:2]
        regional = (self._rgb is None and self._frame.format.name == "yuv420p" and h % 2 == 0 and w % 2 == 0
                    and isinstance(key, tuple) and len(key) == 2
                    and all(isinstance(k, slice) and k.step in (None, 1) for k in key))
        if not regional:
            return self.rgb()[key]
        y0, y1, _ = key[0].indices(h)
        x0, x1, _ = key[1].indices(w)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        area = (y1 - y0) * (x1 - x0)
        if 2 * (self._converted + area) > h * w:  # most of the frame: convert it all, once
            return self.rgb()[key]
        self._converted += area
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
        if self._reformatter is None:
            self._reformatter = VideoReformatter()
        rgb = self._reformatter.reformat(part, format="rgb24", threads=1).to_ndarray()
        self._metrics["decode_s"] = self._metrics.get("decode_s", 0.0) + time.perf_counter() - t0
        return rgb[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]


_END = object()


def _decode_ahead(container, stream, fps: float, last: int, depth: int = 8):
    """Yield (index, frame) of ``stream`` up to the first frame at index >= ``last``, decoded by a
    background thread up to ``depth`` frames ahead (PyAV releases the GIL while it demuxes and
    decodes), so decoding goes on while the consumer crops. Errors are raised in the consumer."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for n, frame in enumerate(container.decode(stream)):
                t = frame.time
                idx = int(np.floor(t * fps + 1e-6)) if t is not None else n
                if not put((idx, frame)) or idx >= last:
                    break
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which decides
            put(exc)
            return
        put(_END)

    worker = threading.Thread(target=produce, name="decode-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def video_frames(path: Path, wanted: set[int], fps: float, counter: dict | None = None, errors: list | None = None):
    """Yield (index, :class:`VideoImage`) for the frames ``wanted`` (indices at ``fps``) in one
    sequential pass, decoded a few frames ahead by a background thread.

    Frame index = floor(timestamp * fps) (AIST's rule: 60 fps, rounded down); without timestamps,
    the decode order. A missing, truncated or damaged file ends the stream early and appends
    (reason, detail) to ``errors`` (the caller counts the frames it did not get). ``counter``
    accumulates ``decoded_frames`` (and the images' conversion time, ``decode_s``).
    """
    import av

    if not wanted:
        return
    last, got = max(wanted), set()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        if errors is not None:
            errors.append(("unreadable video", f"{Path(path).name}: {exc}"))
        return
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()  # shared by the stream's region conversions
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for idx, frame in _decode_ahead(container, stream, fps, last):
            if counter is not None:
                counter["decoded_frames"] = counter.get("decoded_frames", 0) + 1
            if idx in wanted and idx not in got:
                got.add(idx)
                yield idx, VideoImage(frame, reformatter, counter)
    except (av.FFmpegError, OSError, ValueError) as exc:
        if errors is not None:
            errors.append(("damaged video", f"{Path(path).name}: after {len(got)} wanted frames: {exc}"))
        return
    finally:
        container.close()
    if len(got) < len(wanted) and errors is not None:
        errors.append(("video ended early", f"{Path(path).name}: before frame {max(set(wanted) - got)}"))


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


def iter_frames(unit, needed: dict[str, set[int]], metrics: dict | None = None, problems: list | None = None):
    """Yield (cam, frame, image) for what ``needed`` ({camera: frame ids}) asks for, each decoded
    once. The image is an RGB array (image files) or a :class:`VideoImage` (videos), which slices
    like one and converts with ``np.asarray``.

    The caller consumes each frame as it comes (crops it) instead of holding a sequence's frames in
    memory. What cannot be decoded is appended to ``problems`` as (unit part, reason, detail).
    ``metrics`` accumulates decoded_frames and decode_s (time spent decoding, not consuming).
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
                metrics["decode_s"] = metrics.get("decode_s", 0.0) + time.perf_counter() - t0
                return
            metrics["decode_s"] = metrics.get("decode_s", 0.0) + time.perf_counter() - t0
            yield item

    for cam in sorted(needed):
        wanted = needed[cam]
        if mode == "video":
            path = spec.get(cam)
            if path is None or not Path(path).exists():
                problems.append((f"{unit.name}/{cam}", "missing video", str(path)))
                continue
            errors: list = []
            for f, img in timed(video_frames(Path(path), wanted, unit.fps, metrics, errors)):
                yield cam, f, img
            problems.extend((f"{unit.name}/{cam}", reason, detail) for reason, detail in errors)
        else:
            for f in sorted(wanted):
                t0 = time.perf_counter()
                try:
                    img = read_image(unit.image_path(cam, f))
                except FrameError as exc:
                    problems.append((f"{unit.name}/{cam}/{f}", exc.reason, exc.detail))
                    continue
                finally:
                    metrics["decode_s"] = metrics.get("decode_s", 0.0) + time.perf_counter() - t0
                metrics["decoded_frames"] = metrics.get("decoded_frames", 0) + 1
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
