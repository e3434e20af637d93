"""What a source worker hands to the encoder: one pair of crops with silhouettes and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PairRecord:
    """A pair before encoding. Images HxWx3 uint8 RGB, masks HxW uint8 (0/255), depth HxW uint16 mm.

    ``meta`` holds the manifest columns the source knows (kind, split, subject, ... crop boxes)
    and any extras for the JSON (keypoints, cameras, body parameters); the encoder adds the key,
    shard, sizes and human fractions.
    """

    target: np.ndarray
    reference: np.ndarray
    target_mask: np.ndarray
    reference_mask: np.ndarray
    meta: dict = field(default_factory=dict)
    target_depth: np.ndarray | None = None
    reference_depth: np.ndarray | None = None


@dataclass
class ShardResult:
    """Pairs built for one shard plus what was skipped: {reason: count} and named examples."""

    pairs: list[PairRecord]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_units: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # e.g. decoded_frames, decode_s (written to the stats)

    def skip(self, reason: str, unit: str | None = None, detail: str | None = None, keep: int = 50) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if unit is not None and len(self.skipped_units) < keep:
            self.skipped_units.append({"reason": reason, "unit": unit, "detail": detail})
