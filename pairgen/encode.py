"""Encoder stage: PairRecord -> tar members (JPEG/PNG/JSON) + one typed manifest row."""

from __future__ import annotations

import numpy as np

from manifests import sample as fmt
from manifests.schema import COLUMN_NAMES, manifest_row, validate_row
from pairgen.record import PairRecord

PATCH = 16


def human_fraction(mask: np.ndarray, patch: int = PATCH) -> float:
    """Fraction of ``patch``x``patch`` cells holding at least one person pixel."""
    h, w = mask.shape
    hp, wp = h // patch, w // patch
    cells = mask[: hp * patch, : wp * patch].reshape(hp, patch, wp, patch)
    return float((cells.max(axis=(1, 3)) > 0).mean())


def encode_pair(record: PairRecord, key: str, shard: str, jpeg_quality: int = 95) -> tuple[dict[str, bytes], dict]:
    """Members of one sample and its manifest row; the sample JSON gets every manifest column."""
    size = record.target.shape[0]
    for name, img in (("target", record.target), ("reference", record.reference)):
        if img.shape != (size, size, 3) or img.dtype != np.uint8:
            raise ValueError(f"{name} must be {size}x{size}x3 uint8, got {img.shape} {img.dtype}")
    tj = fmt.encode_jpeg(record.target, jpeg_quality)
    rj = fmt.encode_jpeg(record.reference, jpeg_quality)
    meta = dict(record.meta)
    meta.update(
        key=key,
        shard=f"{shard}.tar",
        image_size=size,
        jpeg_bytes_target=len(tj),
        jpeg_bytes_reference=len(rj),
        human_fraction_target=human_fraction(record.target_mask),
        human_fraction_reference=human_fraction(record.reference_mask),
        has_depth=record.target_depth is not None and record.reference_depth is not None,
        has_keypoints="keypoints_target" in meta and "keypoints_reference" in meta,
    )
    for col in COLUMN_NAMES:
        meta.setdefault(col, None)
    row = manifest_row(meta)
    validate_row(row)
    members = fmt.encode_sample(key, tj, rj, record.target_mask, record.reference_mask, meta,
                                record.target_depth, record.reference_depth)
    return members, row
