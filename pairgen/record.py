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


INTERNAL_ERROR = "internal error: "  # the reason of pairs lost to an unexpected exception, + its type


def traceback_tail(exc: BaseException, chars: int = 2000) -> str:
    """The last ``chars`` characters of ``exc``'s formatted traceback (where it was raised)."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-chars:]


@dataclass
class ShardResult:
    """Pairs built for one shard plus what was not built, each with its reason.

    - ``skipped``: {reason: pairs}: planned pairs that were not built, so for every source
      ``built + sum(skipped.values()) == planned`` (the shard stats' ``count`` and ``planned``).
    - ``metrics["dropped"]``: {reason: parts}: what was left out that is not a planned pair: a
      camera, frame or annotation the reader dropped while loading, a unit that gave no planned
      pair, a frame that could not be decoded (its pairs are counted in ``skipped`` as well), a
      synthetic draw made again. Written to the stats under ``metrics``.
    - ``skipped_units``: named examples of both, ``{"reason", "unit", "detail", "pairs"}`` with
      ``pairs`` the planned pairs the entry accounts for (0 for a dropped part); at most ``keep``,
      plus every internal error (:meth:`error`, up to ``MAX_ERRORS``) with its traceback as detail.
    """

    pairs: list[PairRecord]
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_units: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # e.g. decoded_frames, decode_s, dropped (written to the stats)

    MAX_ERRORS = 20  # internal errors named with their traceback per shard (all are counted)

    def skip(self, reason: str, unit: str | None = None, detail: str | None = None, keep: int = 50,
             pairs: int = 1) -> None:
        """``pairs`` planned pairs not built, for ``reason``; ``unit`` names an example."""
        self.skipped[reason] = self.skipped.get(reason, 0) + pairs
        if unit is not None:
            self._add({"reason": reason, "unit": unit, "detail": detail, "pairs": pairs}, keep)

    def drop(self, reason: str, unit: str | None = None, detail: str | None = None, keep: int = 50) -> None:
        """One part left out that is not a planned pair (see the class docstring)."""
        dropped = self.metrics.setdefault("dropped", {})
        dropped[reason] = dropped.get(reason, 0) + 1
        if unit is not None:
            self._add({"reason": reason, "unit": unit, "detail": detail, "pairs": 0}, keep)

    def error(self, exc: BaseException, unit: str, pairs: int) -> None:
        """An unexpected exception that cost ``unit`` its ``pairs``: counted as ``internal error:
        <type>`` with the end of the traceback as the named entry's detail."""
        reason = f"{INTERNAL_ERROR}{type(exc).__name__}"
        self.skipped[reason] = self.skipped.get(reason, 0) + pairs
        self._add({"reason": reason, "unit": unit, "detail": traceback_tail(exc), "pairs": pairs})

    def merge(self, other: "ShardResult", built: bool = True, keep: int = 50) -> None:
        """Add the pairs, skips and named entries of ``other`` (one unit's part of the shard; its
        ``metrics`` is this result's dict). ``built`` False (the unit failed): only the names of
        its dropped parts (their counts are already in the shared metrics)."""
        if built:
            self.pairs.extend(other.pairs)
            for reason, n in other.skipped.items():
                self.skipped[reason] = self.skipped.get(reason, 0) + n
        for entry in other.skipped_units:
            if built or not entry["pairs"]:
                self._add(entry, keep)

    def _add(self, entry: dict, keep: int = 50) -> None:
        error = entry["reason"].startswith(INTERNAL_ERROR)
        n = sum(u["reason"].startswith(INTERNAL_ERROR) == error for u in self.skipped_units)
        if n < (self.MAX_ERRORS if error else keep):
            self.skipped_units.append(entry)
