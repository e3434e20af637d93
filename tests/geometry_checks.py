"""Checks shared by the geometry tests of every source."""

from __future__ import annotations

import numpy as np


def keypoints_inside_fraction(pairs, grow_px: int = 2) -> tuple[float, int]:
    """Fraction of visible (v == 2) keypoints that fall on their image's silhouette (grown by
    ``grow_px``), over pairs with ``target_mask``/``reference_mask`` and ``meta`` keypoints."""
    import cv2

    kernel = np.ones((2 * grow_px + 1, 2 * grow_px + 1), np.uint8)
    inside = total = 0
    for p in pairs:
        for mask, key in ((p.target_mask, "keypoints_target"), (p.reference_mask, "keypoints_reference")):
            grown = cv2.dilate(mask, kernel)
            for u, v, vis in p.meta[key]:
                if vis == 2:
                    total += 1
                    inside += grown[int(v), int(u)] > 0
    return inside / max(total, 1), total
