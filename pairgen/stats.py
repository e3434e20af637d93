"""`pairgen stats DIR`: counts per source and kind, distributions of human fraction, time gap and
view angle, skipped units per reason; ``--plot FILE.png`` draws the histograms."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd

from manifests import layout
from manifests.storage import Store, StorageError


REDRAWN = "redrawn: "
"""Reason prefix of a synthetic draw made again (``pairgen/sources/synthetic.py``): a dropped part
whose pair was drawn anew, so no pair is lost."""


def accounting_lines(skipped: dict, dropped: dict) -> list[str]:
    """Human lines for a build's losses: planned pairs not built (``skipped``: lost), synthetic draws
    discarded and drawn again (not pairs: a pair is lost only when no draw works, and is then counted
    in ``skipped``) and other dropped parts (cameras, frames: not pairs); ``dropped`` is the shard
    stats' ``metrics["dropped"]``, summed."""

    def join(counts: dict) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))

    redrawn = {k[len(REDRAWN):]: v for k, v in dropped.items() if k.startswith(REDRAWN)}
    other = {k: v for k, v in dropped.items() if not k.startswith(REDRAWN)}
    lines = []
    if skipped:
        lines.append("skipped pairs (planned, not built): " + join(skipped))
    if redrawn:
        lines.append("redrawn (draws discarded and drawn again: not lost pairs): " + join(redrawn))
    if other:
        lines.append("dropped parts (not pairs): " + join(other))
    return lines


def _store(directory, storage_options: dict | None = None) -> Store:
    try:
        return layout.as_store(directory, storage_options)
    except StorageError as exc:
        raise ValueError(str(exc)) from None


def load_manifest(directory, storage_options: dict | None = None) -> pd.DataFrame:
    """Every finished shard's manifest rows (``directory``: a local path, a URL or a Store)."""
    store = _store(directory, storage_options)
    present = store.listing(layout.MANIFEST_DIR)
    names = [n for n in layout.finished_shards(store) if f"{n}.parquet" in present]
    if not names:
        raise ValueError(f"{store.url}: no finished shards with manifests")
    frames = []
    for n in names:
        frames.append(pd.read_parquet(store.path(layout.manifest_rel(n))) if store.local
                      else store.read_parquet(layout.manifest_rel(n)).to_pandas())
    return pd.concat(frames, ignore_index=True)


def _describe(s: pd.Series) -> str:
    s = s.dropna()
    if s.empty:
        return "n/a"
    q = np.percentile(s, [0, 25, 50, 75, 100])
    return f"n={len(s)} min={q[0]:.3g} p25={q[1]:.3g} median={q[2]:.3g} p75={q[3]:.3g} max={q[4]:.3g}"


def _shard_stats(store: Store) -> list[dict]:
    names = layout.finished_shards(store)
    found = []
    for raw in store.read_many([layout.stats_rel(n) for n in names]).values():
        try:
            s = json.loads(raw) if raw is not None else None
        except ValueError:
            s = None  # damaged: `pairgen verify` reports it, a re-run of the build repairs it
        if isinstance(s, dict):
            found.append(s)
    return found


def stats(directory: str, plot: str | None = None, storage_options: dict | None = None) -> str:
    store = _store(directory, storage_options)
    df = load_manifest(store)
    shard_stats = _shard_stats(store)
    empty = sum(s.get("count") == 0 for s in shard_stats)  # every pair skipped: a tar with no sample
    lines = [f"{len(df)} pairs in {len(shard_stats)} shards" + (f" ({empty} empty)" if empty else "")]
    counts = df.groupby(["source", "kind"]).size()
    for (src, kind), n in counts.items():
        lines.append(f"  {src:12s} {kind:11s} {n:8d}")
    lines.append(f"silhouette methods: {dict(Counter(df['silhouette_method']))}")
    hf = pd.concat([df["human_fraction_target"], df["human_fraction_reference"]])
    lines.append(f"human fraction (16px patches): {_describe(hf)}")
    for src, rows in df.groupby("source"):  # the target's: what the human-centric masking sees
        lines.append(f"  {src + ' (target)':<28}{_describe(rows['human_fraction_target'])}")
    lines.append(f"cross-pose time gap (s):       {_describe(df['time_gap_s'])}")
    cv = df[df["kind"] == "cross_view"]
    unknown = int(cv["view_angle_deg"].isna().sum())  # uncalibrated cameras: null, left out of the figures
    lines.append(f"cross-view view angle (deg):   {_describe(cv['view_angle_deg'])}"
                 + (f" ({unknown} uncalibrated: null)" if unknown else ""))
    lines.append(f"cross-view azimuth gap (deg):  {_describe(cv['azimuth_gap_deg'])}")
    lines.append(f"cross-pose motion:             {_describe(df['motion'])}")
    skipped: Counter = Counter()  # planned pairs not built, per reason
    dropped: Counter = Counter()  # parts left out that were never planned pairs (pairgen.record.ShardResult)
    for s in shard_stats:
        skipped.update(s.get("skipped", {}))
        dropped.update((s.get("metrics") or {}).get("dropped", {}))
    planned = sum(s.get("planned", 0) for s in shard_stats)
    lines.append(f"planned pairs: {planned} = {sum(s.get('count', 0) for s in shard_stats)} built + "
                 f"{sum(skipped.values())} skipped")
    lines += accounting_lines(skipped, dropped)
    if plot:
        _plot(df, plot)
        lines.append(f"plot: {plot}")
    return "\n".join(lines)


def _plot(df: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0, 0]
    counts = df.groupby(["source", "kind"]).size()
    ax.bar([f"{s}\n{k}" for s, k in counts.index], counts.values, color="tab:blue")
    ax.set_title("pairs per source / kind")
    ax = axes[0, 1]
    ax.hist([df["human_fraction_target"], df["human_fraction_reference"]], bins=20, label=["target", "reference"])
    ax.set_title("human fraction of 16x16 patches")
    ax.legend()
    ax = axes[1, 0]
    ax.hist(df["time_gap_s"].dropna(), bins=20, color="tab:green")
    ax.set_title("cross-pose time gap (s)")
    ax = axes[1, 1]
    cv = df[df["kind"] == "cross_view"]
    ax.hist([cv["view_angle_deg"].dropna(), cv["azimuth_gap_deg"].dropna()], bins=18, range=(0, 180),
            label=["view angle", "azimuth gap"])
    ax.set_title("cross-view angle (deg)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
