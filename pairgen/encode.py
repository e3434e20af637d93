"""Encoder stage: PairRecord -> tar members (JPEG/PNG/JSON) + one typed manifest row.

A real source shares one crop and silhouette between every pair that uses the same (person,
camera, frame): :class:`PairEncoder` encodes each distinct image array once per shard (equal
arrays give equal bytes, so the output is what encoding every pair on its own gives).
"""

from __future__ import annotations

import numpy as np

from manifests import sample as fmt
from manifests.schema import COLUMN_NAMES, manifest_row, validate_row
from pairgen.memo import cached_per_array
from pairgen.record import PairRecord

PATCH = 16


def human_fraction(mask: np.ndarray, patch: int = PATCH) -> float:
    """Fraction of ``patch``x``patch`` cells holding at least one person pixel."""
    h, w = mask.shape
    hp, wp = h // patch, w // patch
    # rows first (a reduction over contiguous rows), then the columns of each cell
    rows = mask[: hp * patch, : wp * patch].reshape(hp, patch, wp * patch).max(axis=1)
    return float((rows.reshape(hp, wp, patch).max(axis=2) > 0).mean())


class PairEncoder:
    """Encodes the pairs of one shard; an image or mask array shared by several pairs (the same
    object) is encoded once. Holds the arrays it has seen, so an id is never reused meanwhile."""

    def __init__(self, jpeg_quality: int = 95):
        self.jpeg_quality = jpeg_quality
        self._memo: dict[tuple, tuple] = {}

    def _once(self, what: str, arr: np.ndarray, fn):
        return cached_per_array(self._memo, arr, lambda: fn(arr), what, limit=None)

    def jpeg(self, img: np.ndarray) -> bytes:
        return self._once("jpeg", img, lambda a: fmt.encode_jpeg(a, self.jpeg_quality))

    def mask_png(self, mask: np.ndarray) -> bytes:
        return self._once("png", mask, fmt.encode_png)

    def human_fraction(self, mask: np.ndarray) -> float:
        return self._once("hf", mask, human_fraction)

    def encode(self, record: PairRecord, key: str, shard: str) -> tuple[dict[str, bytes], dict]:
        """Members of one sample and its manifest row; the sample JSON gets every manifest column."""
        size = record.target.shape[0]
        for name, img in (("target", record.target), ("reference", record.reference)):
            if img.shape != (size, size, 3) or img.dtype != np.uint8:
                raise ValueError(f"{name} must be {size}x{size}x3 uint8, got {img.shape} {img.dtype}")
        for name, mask in (("target", record.target_mask), ("reference", record.reference_mask)):
            if mask.dtype != np.uint8 or mask.ndim != 2:
                raise ValueError(f"{name} silhouette must be HxW uint8, got {mask.dtype} {mask.shape}")
        tj = self.jpeg(record.target)
        rj = self.jpeg(record.reference)
        meta = dict(record.meta)
        meta.update(
            key=key,
            shard=f"{shard}.tar",
            image_size=size,
            jpeg_bytes_target=len(tj),
            jpeg_bytes_reference=len(rj),
            human_fraction_target=self.human_fraction(record.target_mask),
            human_fraction_reference=self.human_fraction(record.reference_mask),
            has_depth=record.target_depth is not None and record.reference_depth is not None,
            has_keypoints="keypoints_target" in meta and "keypoints_reference" in meta,
        )
        for col in COLUMN_NAMES:
            meta.setdefault(col, None)
        row = manifest_row(meta)
        validate_row(row)
        members = fmt.encode_sample(key, tj, rj, record.target_mask, record.reference_mask, meta,
                                    record.target_depth, record.reference_depth,
                                    target_mask_png=self.mask_png(record.target_mask),
                                    reference_mask_png=self.mask_png(record.reference_mask))
        return members, row


def encode_pair(record: PairRecord, key: str, shard: str, jpeg_quality: int = 95) -> tuple[dict[str, bytes], dict]:
    """Members of one sample and its manifest row (one pair on its own; see :class:`PairEncoder`)."""
    return PairEncoder(jpeg_quality).encode(record, key, shard)
