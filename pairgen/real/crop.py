"""Square person-centred crops: box from keypoints/box, margin, padding outside the frame, resize."""

from __future__ import annotations

import numpy as np


def person_box(obs, min_conf: float = 0.05) -> np.ndarray | None:
    """[x0, y0, x1, y1] around an Observation: usable keypoints (finite, confidence > ``min_conf``;
    at least 2), else its box; None without either (a box with a NaN or inf is no box)."""
    if obs.keypoints is not None:
        k = np.asarray(obs.keypoints, np.float64)
        ok = np.isfinite(k).all(1) & (k[:, 2] > min_conf)
        if ok.sum() >= 2:
            p = k[ok, :2]
            box = np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])
            b = None if obs.box is None else np.asarray(obs.box, np.float64)
            if b is not None and np.isfinite(b).all():  # keypoints lie inside the body: widen with the detector box
                box = np.array([min(box[0], b[0]), min(box[1], b[1]), max(box[2], b[2]), max(box[3], b[3])])
            return box
    if obs.box is not None:
        b = np.asarray(obs.box, np.float64)
        if np.isfinite(b).all():
            return b
    return None


def square_crop_box(box: np.ndarray, margin: float, kind: str = "body") -> np.ndarray:
    """Square [x0, y0, x1, y1] centred on ``box``, side = longer side * (1 + margin).

    Keypoint boxes stop at the joints, so the head top, hands and feet need extra room: bodies
    get 15% more height (mostly above), hands 40% more on every side.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if kind == "hand":
        side = max(w, h) * 1.4
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    else:
        y0 -= 0.12 * h  # head top above the eyes/nose keypoints
        h = y1 - y0
        side = max(w, h) * 1.05
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(side * (1 + margin), 8.0)
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def _square(box: np.ndarray) -> tuple[int, int, int]:
    """(x0, y0, side) of the integer square a crop box stands for: its corner rounded, its width
    rounded (at least 1; y1 is not used: crop boxes are square). ValueError for NaN/inf."""
    if not np.isfinite(np.asarray(box, np.float64)).all():
        raise ValueError(f"crop box {list(box)} is not finite")
    x0, y0 = round(box[0]), round(box[1])
    return x0, y0, max(round(box[2]) - x0, 1)


def crop_resize(img: np.ndarray, box: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Pixels of ``box`` (may leave the frame: padded with zeros) resized to size x size.

    ``img`` is an [H, W] or [H, W, C] array or anything that has ``shape`` and slices like one
    (a :class:`pairgen.real.frames.VideoImage`: only the in-frame part of the box is converted).
    The box must be finite (ValueError otherwise); a box wholly outside the frame gives zeros.
    """
    import cv2

    x0, y0, side = _square(box)
    y1 = y0 + side
    x1 = x0 + side
    h, w = img.shape[:2]
    ya, yb, xa, xb = max(0, y0), min(h, y1), max(0, x0), min(w, x1)  # the part inside the frame
    if yb <= ya or xb <= xa:  # nothing of the frame in the box
        return np.zeros((size, size) + tuple(img.shape[2:]), img.dtype)
    pad = ((ya - y0, y1 - yb), (xa - x0, x1 - xb))
    patch = img[ya:yb, xa:xb]
    if any(p for pair in pad for p in pair):
        pad = pad + ((0, 0),) * (patch.ndim - 2)  # a VideoImage's region is an array; the image may not be
        patch = np.pad(patch, pad)
    elif patch.strides[1:] != np.empty((1,) + patch.shape[1:], patch.dtype).strides[1:]:
        patch = np.ascontiguousarray(patch)  # OpenCV takes rows with a stride, but not strided pixels
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
    return cv2.resize(patch, (size, size), interpolation=interp)


def in_frame(box: np.ndarray, size: int, h: int, w: int) -> np.ndarray:
    """Which pixels of ``crop_resize(img, box, size)`` come from the h x w frame, not the padding
    (bool [size, size]): ``crop_resize`` of an all-ones frame with ``nearest=True``, made as the
    outer product of the same nearest resize of the in-frame rows and columns (no crop-sized
    patch is built). ValueError for a box with NaN/inf."""
    import cv2

    x0, y0, side = _square(box)
    y1 = y0 + side
    x1 = x0 + side
    cols = np.zeros((1, side), np.uint8)
    cols[0, min(side, max(0, -x0)):max(0, side - max(0, x1 - w))] = 1  # clamped: the box may miss the frame
    rows = np.zeros((side, 1), np.uint8)
    rows[min(side, max(0, -y0)):max(0, side - max(0, y1 - h)), 0] = 1
    c = cv2.resize(cols, (size, 1), interpolation=cv2.INTER_NEAREST).reshape(size) > 0
    r = cv2.resize(rows, (1, size), interpolation=cv2.INTER_NEAREST).reshape(size) > 0
    return r[:, None] & c[None, :]


def to_crop(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Map [N, >=2] frame pixel coordinates into crop pixels (extra columns kept; NaN stays NaN)."""
    out = np.array(points, np.float64, copy=True)
    x0, y0, side = _square(box)
    s = size / side
    out[:, 0] = (out[:, 0] - x0 + 0.5) * s - 0.5
    out[:, 1] = (out[:, 1] - y0 + 0.5) * s - 0.5
    return out


def crop_box_used(box: np.ndarray) -> list[float]:
    """The integer box actually cropped (what the manifest records), [x0, y0, x1, y1]; ValueError
    for a box with NaN/inf."""
    x0, y0, side = _square(box)
    return [float(x0), float(y0), float(x0 + side), float(y0 + side)]
