"""`pairgen preview DIR --out FILE.png`: a contact sheet of pairs, silhouettes overlaid.

Each row shows target | reference with the silhouette outline and a tint, and a caption with
the kind and its angle or gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from manifests import layout
from manifests.sample import decode_sample, iter_tar_samples
from manifests.storage import StorageError


def _overlay(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    out = img.astype(np.float32)
    m = mask > 127
    out[m] = 0.75 * out[m] + 0.25 * np.array([0, 255, 0])
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(out.astype(np.uint8))
    cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    return out


def preview(directory: str, out_png: str, num: int = 16, seed: int = 0, storage_options: dict | None = None) -> int:
    import cv2

    try:
        store = layout.as_store(directory, storage_options)
    except StorageError as exc:
        raise ValueError(str(exc)) from None
    shards = layout.finished_shards(store)
    if not shards:
        raise ValueError(f"{store.url}: no finished shards")
    rng = np.random.default_rng(seed)
    samples = []
    per_shard = max(1, -(-num // len(shards)))
    for name in rng.permutation(shards):
        with store.open(layout.tar_rel(str(name)), "rb") as f:
            items = list(iter_tar_samples(f))
        for i in rng.permutation(len(items))[:per_shard]:
            samples.append(decode_sample(*items[i]))
        if len(samples) >= num:
            break
    samples = samples[:num]
    tiles = []
    for s in samples:
        a, b = _overlay(s.target, s.target_mask), _overlay(s.reference, s.reference_mask)
        pair = np.concatenate([a, np.full((a.shape[0], 4, 3), 255, np.uint8), b], axis=1)
        kind = s.meta.get("kind", "?")
        if kind == "cross_view":
            cap = f"view {s.meta.get('view_angle_deg') or 0:.0f}deg az {s.meta.get('azimuth_gap_deg') or 0:.0f}"
        else:
            cap = f"pose gap {s.meta.get('time_gap_s') or 0:.2f}s"
        cap = f"{s.meta.get('source', '')} {kind}: {cap}"
        bar = np.full((18, pair.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, cap, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([bar, pair], axis=0))
    cols = 4 if len(tiles) >= 8 else 2
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    sheet = np.full((rows * (h + 6), cols * (w + 6), 3), 40, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + 6): r * (h + 6) + t.shape[0], c * (w + 6): c * (w + 6) + t.shape[1]] = t
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), sheet[..., ::-1]):
        raise ValueError(f"cannot write {out_png}")
    return len(tiles)
