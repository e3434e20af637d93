"""What the fixtures' hard variants share: cameras panned so that a person crosses a frame edge or
zoomed out so that they are tiny, and damaged files (garbage, half-size frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

EDGES = ("left", "right", "top", "bottom", "corner")
TINY_ZOOM = 0.2  # "tiny": the camera zoomed out 5x (people well below --min-person-px)


def standing_box(cam, foot: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0]), tall: float = 1.8,
                 half_width: float = 0.3) -> np.ndarray:
    """[x0, y0, x1, y1] pixels of a person standing at ``foot`` (world, metres) seen by ``cam``."""
    foot = np.asarray(foot, np.float64)
    side = np.cross(up, np.array([0.0, 1.0, 0.0]) if abs(up[1]) < 0.9 else np.array([1.0, 0.0, 0.0]))
    side = side / np.linalg.norm(side)
    pts = np.array([foot + a * half_width * side + b * half_width * np.cross(up, side) + h * tall * up
                    for a in (-1, 1) for b in (-1, 1) for h in (0, 1)])
    uv, _ = cam.project(pts)
    return np.array([*uv.min(0), *uv.max(0)])


def moved(cam, edge: str, box: np.ndarray, width: int, height: int, outside: float = 0.3):
    """``cam`` with its principal point moved so that ``box`` (its pixels) crosses ``edge`` of the
    width x height frame, ``outside`` of its size beyond it ("corner": left and top), or zoomed
    out TINY_ZOOM times for "tiny"."""
    from pairgen.synthetic.render import Camera

    if edge == "tiny":
        return Camera(R=cam.R, t=cam.t, fx=cam.fx * TINY_ZOOM, fy=cam.fy * TINY_ZOOM, cx=cam.cx, cy=cam.cy,
                      width=width, height=height)
    (x0, y0, x1, y1), dx, dy = box, 0.0, 0.0
    if edge in ("left", "corner"):
        dx = -x0 - outside * (x1 - x0)
    if edge == "right":
        dx = width - x1 + outside * (x1 - x0)
    if edge in ("top", "corner"):
        dy = -y0 - outside * (y1 - y0)
    if edge == "bottom":
        dy = height - y1 + outside * (y1 - y0)
    return Camera(R=cam.R, t=cam.t, fx=cam.fx, fy=cam.fy, cx=cam.cx + dx, cy=cam.cy + dy, width=width, height=height)


def write_garbage(path: Path) -> None:
    """A file that starts like a JPEG and is not one."""
    Path(path).write_bytes(b"\xff\xd8\xff\xe0 not a JPEG" * 50)


def write_half_size(path: Path, quality: int = 90) -> None:
    """Re-encode the JPEG at ``path`` at half its width and height."""
    import cv2
    import simplejpeg

    img = simplejpeg.decode_jpeg(Path(path).read_bytes())
    h, w = img.shape[:2]
    Path(path).write_bytes(simplejpeg.encode_jpeg(cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
                                                  quality=quality))
