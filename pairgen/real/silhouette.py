"""Silhouette methods for real images, each computed in crop coordinates (size x size, person = 255).

- ``keypoints``: limb capsules, torso and palm polygons, head disc from 2D joints (rough; the
  paper notes patch-level masking needs no more).
- ``bgsub``: a per-camera background (median of frames spread over the sequence) subtracted from
  the frame, cleaned, restricted to the person's box, keeping the components that touch the body.
- ``smpl``: the dataset's body/hand model fit (vertices + faces) projected with the calibration
  and rasterised.
- ``grabcut``: for sources with only a person box (MARS): OpenCV's GrabCut seeded with the box
  (an ellipse inside it is probably the person, the rest of the crop probably not).
- ``box``: the person box itself (what ``keypoints`` falls back to without joints; recorded as such).
"""

from __future__ import annotations

import numpy as np

# COCO-17 limbs (index pairs) and relative thickness (fraction of the torso scale)
_LIMBS = ((5, 7, 0.22), (7, 9, 0.18), (6, 8, 0.22), (8, 10, 0.18), (11, 13, 0.30), (13, 15, 0.22),
          (12, 14, 0.30), (14, 16, 0.22), (5, 6, 0.25), (11, 12, 0.3), (5, 11, 0.25), (6, 12, 0.25))
# hand: 21 joints in InterHand order per finger tip->base (4 each: thumb, index, middle, ring, pinky), wrist 20
_FINGERS = [list(range(4 * f, 4 * f + 4)) for f in range(5)]
_WRIST = 20


# joints farther than this many crop sizes outside the crop are not drawn: crops are built around the
# usable joints, so such a joint is an annotation error, and OpenCV cannot draw its limb (coordinates
# and thicknesses beyond its integer limits)
_FAR = 4


def _usable(kps: np.ndarray, min_conf: float, size: int) -> tuple[dict[int, np.ndarray], dict[int, tuple[int, int]]]:
    """Joints with finite coordinates within ``_FAR`` crop sizes of the crop and confidence >
    ``min_conf``: {index: (x, y)} and the same rounded to integer pixels (what OpenCV's drawing
    calls take)."""
    k = np.asarray(kps, np.float64)
    with np.errstate(invalid="ignore"):
        near = (np.abs(k[:, :2] - size / 2) <= (_FAR + 0.5) * size).all(1)
    ok = np.isfinite(k).all(1) & (k[:, 2] > min_conf) & near
    idx = np.flatnonzero(ok).tolist()
    pts = {i: k[i, :2] for i in idx}
    # np.rint rounds half to even, as round() does
    return pts, {i: (x, y) for i, (x, y) in zip(idx, np.rint(k[idx, :2]).astype(np.int64).tolist())}


def body_keypoint_mask(kps: np.ndarray, size: int, min_conf: float = 0.05,
                       head_box: np.ndarray | None = None) -> np.ndarray:
    """Mask from COCO-17 keypoints [17, 3] already in crop pixels; ``head_box`` ([x0, y0, x1, y1] in
    crop pixels, when annotated) replaces the head disc guessed from the face joints."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    pts, ip = _usable(kps, min_conf, size)
    if len(pts) < 2:
        return mask
    arr = np.array(list(pts.values()))
    # body scale: shoulder/hip widths, torso length, else the keypoint extent
    cands = []
    for a, b in ((5, 6), (11, 12)):
        if a in pts and b in pts:
            cands.append(np.linalg.norm(pts[a] - pts[b]) * 1.4)
    for a, b in ((5, 11), (6, 12)):
        if a in pts and b in pts:
            cands.append(np.linalg.norm(pts[a] - pts[b]))
    scale = float(max(cands) if cands else 0.25 * max(np.ptp(arr[:, 0]), np.ptp(arr[:, 1]), 1.0))
    torso = [i for i in (5, 6, 12, 11) if i in pts]
    if len(torso) >= 3:
        cv2.fillConvexPoly(mask, np.round(np.array([pts[i] for i in torso]) * 4).astype(np.int32), 255,
                           lineType=cv2.LINE_8, shift=2)
    for a, b, w in _LIMBS:
        if a in pts and b in pts:
            t = max(2, int(round(w * scale)))
            cv2.line(mask, ip[a], ip[b], 255, t)
            cv2.circle(mask, ip[a], t // 2, 255, -1)
            cv2.circle(mask, ip[b], t // 2, 255, -1)
    head = [pts[i] for i in range(5) if i in pts]
    if head_box is not None and np.isfinite(head_box).all() and head_box[2] > head_box[0] and head_box[3] > head_box[1]:
        x0, y0, x1, y1 = head_box
        c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        cv2.ellipse(mask, (int(round(c[0])), int(round(c[1]))), (max(1, int(round((x1 - x0) / 2))),
                    max(1, int(round((y1 - y0) / 2)))), 0, 0, 360, 255, -1)
        if 5 in pts and 6 in pts:  # neck: from the bottom of the head to the shoulders
            neck = (pts[5] + pts[6]) / 2
            cv2.line(mask, (int(round(c[0])), int(round(y1))), (int(round(neck[0])), int(round(neck[1]))), 255,
                     max(2, int(round(0.3 * scale))))
    elif head:
        c = np.mean(head, axis=0)
        r = max(3, int(round(0.38 * scale)))
        cv2.circle(mask, (int(round(c[0])), int(round(c[1]))), r, 255, -1)
        if 5 in pts and 6 in pts:  # neck
            neck = (pts[5] + pts[6]) / 2
            cv2.line(mask, (int(round(c[0])), int(round(c[1]))), (int(round(neck[0])), int(round(neck[1]))), 255,
                     max(2, int(round(0.3 * scale))))
    return mask


def hand_keypoint_mask(kps: np.ndarray, size: int, min_conf: float = 0.05) -> np.ndarray:
    """Mask from 21 hand joints [21, 3] (InterHand order) in crop pixels: palm polygon + finger capsules."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    pts, ip = _usable(kps, min_conf, size)
    if len(pts) < 2:
        return mask
    arr = np.array(list(pts.values()))
    bases = [f[-1] for f in _FINGERS if f[-1] in pts]
    ref = [np.linalg.norm(pts[_WRIST] - pts[b]) for b in bases] if _WRIST in pts else []
    scale = float(np.median(ref) if ref else 0.4 * max(np.ptp(arr[:, 0]), np.ptp(arr[:, 1]), 1.0))
    palm = [pts[i] for i in ([_WRIST] if _WRIST in pts else []) + bases]
    if len(palm) >= 3:
        hull = cv2.convexHull(np.round(np.array(palm) * 4).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_8, shift=2)
    t = max(2, int(round(0.28 * scale)))
    for f in _FINGERS:
        chain = [i for i in reversed(f) if i in pts]
        if _WRIST in pts and chain:
            chain = [_WRIST] + chain
        for a, b in zip(chain, chain[1:]):
            cv2.line(mask, ip[a], ip[b], 255, t)
        for i in chain:
            cv2.circle(mask, ip[i], t // 2, 255, -1)
    return mask


BACKGROUND_BAND_PX = 1920 * 135  # pixels of each frame the background median works on at a time


def background_model(frames: list[np.ndarray], person_boxes: list[list[np.ndarray]],
                     grow: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median over frames spread across a sequence, leaving out each frame's people.

    ``person_boxes[i]`` are the [x0, y0, x1, y1] boxes of the people in ``frames[i]`` (grown by
    ``grow`` of their size): their pixels do not vote. Returns (background RGB, known mask): a
    pixel covered by a person in every frame (someone who never leaves a spot) is unknown.
    """
    K = len(frames)
    H, W = frames[0].shape[:2]
    boxes = [[(max(0, int(y0 - grow * (y1 - y0))), max(0, int(y1 + grow * (y1 - y0)) + 1),
               max(0, int(x0 - grow * (x1 - x0))), max(0, int(x1 + grow * (x1 - x0)) + 1))
              for x0, y0, x1, y1 in bs] for bs in person_boxes]
    bg = np.empty((H, W, 3), np.uint8)
    known = np.empty((H, W), bool)
    band = max(1, BACKGROUND_BAND_PX // max(W, 1))  # rows at a time: a full-HD median peaks at ~1/8 of the frames' size
    for r0 in range(0, H, band):
        r1 = min(H, r0 + band)
        stack = np.stack([f[r0:r1] for f in frames]).astype(np.uint16)  # [K, rows, W, 3]
        hidden = np.zeros((K, r1 - r0, W), bool)
        for i, bs in enumerate(boxes):
            for y0, y1, x0, x1 in bs:
                if y0 < r1 and y1 > r0:
                    hidden[i, max(y0, r0) - r0:min(y1, r1) - r0, x0:x1] = True
        stack[hidden] = 1000  # sorts after every real value
        stack.sort(axis=0)
        n = (~hidden).sum(0)  # [rows, W] voters per pixel
        mid = np.clip((n - 1) // 2, 0, K - 1)
        b = np.take_along_axis(stack, mid[None, :, :, None].repeat(3, axis=3), axis=0)[0]
        k = n >= 2
        bg[r0:r1] = np.where(k[..., None], b, 0)
        known[r0:r1] = k
    return bg, known


def bgsub_mask(crop: np.ndarray, bg_crop: np.ndarray, person: np.ndarray, known: np.ndarray | None = None,
               threshold: float = 30.0) -> np.ndarray:
    """Foreground of a crop against the background crop, restricted to the person.

    ``person`` is a rough mask of the person in the crop (keypoint mask): only foreground
    components that overlap it are kept. Where the background is ``known`` False (never seen
    without the person), the rough mask stands in.
    """
    import cv2

    diff = np.abs(crop.astype(np.int16) - bg_crop.astype(np.int16)).max(axis=2)
    fg = (diff > threshold).astype(np.uint8)
    if known is not None:
        fg = np.where(known, fg, (person > 0).astype(np.uint8))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    region = cv2.dilate(person, np.ones((15, 15), np.uint8)) > 0
    fg &= region
    n, labels = cv2.connectedComponents(fg)
    keep = np.zeros(n, bool)
    touched = np.unique(labels[(person > 0) & (fg > 0)])
    keep[touched[touched > 0]] = True
    out = keep[labels].astype(np.uint8) * 255
    # fill holes (clothing close to the background colour) inside the kept silhouette
    contours, _ = cv2.findContours(out, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, 255, -1)
    return out


def mesh_mask(uv_crop: np.ndarray, depth: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """Rasterise mesh triangles whose vertices were projected into crop pixels ([V, 2]); triangles
    with any vertex behind the camera (depth <= 0), not finite, or beyond OpenCV's integer range
    (about 2**26 crop pixels away) are dropped."""
    import cv2

    # Rasterised at 4x and averaged down: cv2 counts edge pixels as inside, which at 1x grows the
    # mask by about a pixel on two sides.
    up = 4
    big = np.zeros((size * up, size * up), np.uint8)
    good = np.isfinite(uv_crop).all(1) & (depth > 0)  # NaN depth compares False: dropped too
    f = faces[good[faces].all(1)]
    tri = np.round(((uv_crop[f] + 0.5) * up - 0.5) * 4)  # pixel centres, 2 fractional bits
    lo, hi = tri.min(1), tri.max(1)
    inside = (hi >= 0).all(1) & (lo < 4 * size * up).all(1)  # bounding box touches the crop
    # OpenCV takes int32 coordinates: a vertex that far out (a point almost in the camera plane) would
    # wrap around; such slivers are dropped
    inside &= (np.abs(tri) < 2**30).all((1, 2))
    tri = tri.astype(np.int64)
    # one call per triangle: a multi-polygon fillPoly uses the even-odd rule, and the front and back
    # of a body overlap everywhere, which would leave holes
    for t in tri[inside].astype(np.int32):
        cv2.fillConvexPoly(big, t, 255, lineType=cv2.LINE_8, shift=2)
    small = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return np.where(small >= 128, 255, 0).astype(np.uint8)


def grabcut_mask(image: np.ndarray, box: np.ndarray, work: int = 256, iterations: int = 4) -> np.ndarray:
    """Person mask (frame size, 0/255) from a box ([x0, y0, x1, y1] frame pixels) by GrabCut.

    Runs on a window around the box at source resolution (its long side capped at ``work`` px):
    an ellipse inscribed in the box is probably the person, the rest probably not, and the window's
    left/right edge columns beside the box are certainly background. The box is widened by half its
    width on each side, so the model sees enough background.
    """
    import cv2

    H, W = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    wx0, wx1 = int(max(0, np.floor(x0 - 0.5 * bw))), int(min(W, np.ceil(x1 + 0.5 * bw)))
    wy0, wy1 = int(max(0, np.floor(y0 - 0.1 * bh))), int(min(H, np.ceil(y1 + 0.1 * bh)))
    out = np.zeros((H, W), np.uint8)
    if wx1 - wx0 < 8 or wy1 - wy0 < 8:
        return out
    win = image[wy0:wy1, wx0:wx1]
    s = min(1.0, work / max(win.shape[:2]))
    small = cv2.resize(win, (max(8, round(win.shape[1] * s)), max(8, round(win.shape[0] * s))),
                       interpolation=cv2.INTER_AREA) if s < 1 else np.ascontiguousarray(win)
    h, w = small.shape[:2]
    gc = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    cx, cy = ((x0 + x1) / 2 - wx0) * s, ((y0 + y1) / 2 - wy0) * s
    ell = np.zeros((h, w), np.uint8)
    cv2.ellipse(ell, (int(round(cx)), int(round(cy))), (max(1, int(bw * s / 2)), max(1, int(bh * s / 2))),
                0, 0, 360, 1, -1)
    gc[ell > 0] = cv2.GC_PR_FGD
    if (x0 - wx0) * s >= 2:
        gc[:, :2] = cv2.GC_BGD
    if (wx1 - x1) * s >= 2:
        gc[:, -2:] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(small, gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    except cv2.error:  # degenerate colour models (flat images): keep the prior
        fg = ell
    if not fg.any():
        fg = ell
    fg = cv2.resize(fg * 255, (wx1 - wx0, wy1 - wy0), interpolation=cv2.INTER_NEAREST) if s < 1 else fg * 255
    out[wy0:wy1, wx0:wx1] = fg
    return out
