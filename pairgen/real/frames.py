"""Frame decoding, planned first and done once.

The worker first collects every (camera, frame) its pairs and background models need, then
decodes each video once, sequentially from the start up to the last needed frame (no seeking per
frame, no frame decoded twice), and reads image files directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class FrameError(Exception):
    """An image could not be decoded: ``reason`` (generic, counted) and ``detail`` (which file)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def video_frames(path: Path, wanted: set[int], fps: float, counter: dict | None = None, errors: list | None = None):
    """Yield (index, RGB) for the frames ``wanted`` (indices at ``fps``) in one sequential pass.

    Frame index = floor(timestamp * fps) (AIST's rule: 60 fps, rounded down); without timestamps,
    the decode order. A missing, truncated or damaged file ends the stream early and appends
    (reason, detail) to ``errors`` (the caller counts the frames it did not get). ``counter``
    accumulates ``decoded_frames``.
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
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for n, frame in enumerate(container.decode(stream)):
            if counter is not None:
                counter["decoded_frames"] = counter.get("decoded_frames", 0) + 1
            t = frame.time
            idx = int(np.floor(t * fps + 1e-6)) if t is not None else n
            if idx in wanted and idx not in got:
                got.add(idx)
                yield idx, frame.to_ndarray(format="rgb24")
            if idx >= last:
                break
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
    """Yield (cam, frame, RGB) for what ``needed`` ({camera: frame ids}) asks for, each decoded once.

    The caller consumes each frame as it comes (crops it) instead of holding a sequence's frames in
    memory. What cannot be decoded is appended to ``problems`` as (unit part, reason, detail).
    ``metrics`` accumulates decoded_frames and decode_s (time spent decoding, not consuming).
    """
    import time

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
