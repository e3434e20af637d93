"""Camera placement around the person: look-at rotation, random viewpoint, framing fit.

Every synthetic camera looks at the person's centre from a given azimuth/elevation/distance; its
focal length and principal point are then fitted so the person (all given vertices) is fully
visible and centred, filling a random fraction of the square image.
"""

from __future__ import annotations

import numpy as np

from pairgen.synthetic.render import Camera

# ``pairgen build --source synthetic --framing``: the camera distance (m) and the fraction of the
# image that the person's larger side spans (``fit_camera``'s ``fill``), each drawn uniformly.
# "wide" is the original framing (its pairs are byte-identical to builds made before the option);
# "tight" frames the person like the real sources' crops (a square of the person box's longer side
# x (1 + --crop-margin 0.2), so the body spans ~0.83-0.95 of the side: the keypoint box misses the
# top of the head and the soles), from 2-5 m. The whole body stays in the image either way.
FRAMINGS: dict[str, dict[str, tuple[float, float]]] = {
    "wide": {"distance_m": (2.5, 8.0), "fill": (0.6, 0.88)},
    "tight": {"distance_m": (2.0, 5.0), "fill": (0.86, 0.96)},
}


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t), OpenCV axes: +Z forward, +X right, +Y down in the image."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = _cross(z, up)
    if np.linalg.norm(x) < 1e-6:  # looking straight up/down
        x = _cross(z, np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = _cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ center


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of two 3-vectors (np.cross costs ~25 us a call in its generic broadcasting)."""
    a0, a1, a2 = (float(v) for v in a)
    b0, b1, b2 = (float(v) for v in b)
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def camera_center(target: np.ndarray, azimuth: float, elevation: float, distance: float) -> np.ndarray:
    """Point at ``distance`` from ``target``; azimuth 0 = in front of an unrotated person (-Y)."""
    d = np.array([np.sin(azimuth) * np.cos(elevation), -np.cos(azimuth) * np.cos(elevation), np.sin(elevation)])
    return target + distance * d


def fit_camera(R: np.ndarray, t: np.ndarray, points: np.ndarray, size: int, fill: float) -> Camera:
    """Camera with rotation R, translation t whose intrinsics frame ``points`` [N, 3].

    The larger side of the points' projected box spans ``fill`` of the image and the box is
    centred (principal point shift, as if cropping a larger sensor).
    """
    # float32, one row per camera axis (contiguous 1-D reductions; [N, 3] axis-0 ones are slow)
    pc = np.asarray(R, np.float32) @ np.asarray(points, np.float32).T
    pc += np.asarray(t, np.float32)[:, None]
    if pc[2].min() <= 0.05:
        raise ValueError("person behind or too close to the camera")
    xn, yn = pc[0] / pc[2], pc[1] / pc[2]
    x0, x1, y0, y1 = float(xn.min()), float(xn.max()), float(yn.min()), float(yn.max())
    f = fill * size / max(x1 - x0, y1 - y0)
    cx = size / 2 - f * (x0 + x1) / 2
    cy = size / 2 - f * (y0 + y1) / 2
    return Camera(R=R, t=t, fx=f, fy=f, cx=cx, cy=cy, width=size, height=size)


def view_angle_deg(cam_a: Camera, cam_b: Camera, target: np.ndarray) -> float:
    """Angle between the two cameras' directions towards ``target`` (degrees)."""
    da = target - cam_a.center
    db = target - cam_b.center
    cos = np.dot(da, db) / (np.linalg.norm(da) * np.linalg.norm(db))
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


def azimuth_gap_deg(cam_a: Camera, cam_b: Camera, target: np.ndarray) -> float:
    """Difference of the cameras' azimuths around the vertical axis through ``target`` (0..180)."""
    a = cam_a.center - target
    b = cam_b.center - target
    ang = np.arctan2(a[1], a[0]) - np.arctan2(b[1], b[0])
    return float(abs(np.degrees((ang + np.pi) % (2 * np.pi) - np.pi)))
