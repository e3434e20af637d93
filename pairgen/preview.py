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


def _num(value, fmt: str) -> str:
    return "?" if value is None else format(value, fmt)


def caption(meta: dict) -> str:
    """``"<source> <kind>: view 90deg az 85"`` / ``"...: pose gap 0.50s"``; a value the sample does not
    record (null: e.g. the angle of uncalibrated cameras) shows as ``?``, never as 0."""
    kind = meta.get("kind", "?")
    if kind == "cross_view":
        text = f"view {_num(meta.get('view_angle_deg'), '.0f')}deg az {_num(meta.get('azimuth_gap_deg'), '.0f')}"
    else:
        text = f"pose gap {_num(meta.get('time_gap_s'), '.2f')}s"
    return f"{meta.get('source', '')} {kind}: {text}"


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
        cap = caption(s.meta)
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
