"""The manifest schema: one Parquet row per pair, one Parquet file per shard.

``pandas.read_parquet("OUT/manifest")`` loads every pair of every source built into OUT.
Each column is documented here; the same values (and more) are in each sample's JSON.
Missing values are nulls (e.g. ``view_angle_deg`` for uncalibrated cameras, ``time_gap_s`` for
cross-view pairs).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

# (name, arrow type, description). Order is the column order on disk.
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("key", pa.string(), "sample key in the shard: <source>-<shard:06d>-<index:06d>"),
    ("shard", pa.string(), "shard file name, e.g. synthetic-000003.tar"),
    ("source", pa.string(), "source name (synthetic, aist, humbi, ...)"),
    ("kind", pa.string(), "cross_view (same instant, two cameras) | cross_pose (same camera and person, two instants)"),
    ("split", pa.string(), "dataset split the pair comes from (train, val, test)"),
    ("subject", pa.string(), "person identity (dataset subject id or synthetic body id)"),
    ("sequence", pa.string(), "sequence / video / capture the pair comes from"),
    ("track", pa.string(), "person track within the sequence"),
    ("camera_target", pa.string(), "camera of the target image"),
    ("camera_reference", pa.string(), "camera of the reference image"),
    ("frame_target", pa.int64(), "frame index of the target image in its sequence"),
    ("frame_reference", pa.int64(), "frame index of the reference image"),
    ("time_gap_s", pa.float64(), "cross_pose: |t_reference - t_target| in seconds; null for cross_view"),
    ("view_angle_deg", pa.float64(), "cross_view: angle between the two cameras' viewing directions towards the person (deg); null for cross_pose (one camera) and for uncalibrated cameras"),
    ("azimuth_gap_deg", pa.float64(), "cross_view: azimuth difference of the two cameras around the person's up axis (deg), when known; null for cross_pose"),
    ("motion", pa.float64(), "cross_pose: mean 2D keypoint displacement between the two instants, in fractions of the person's height"),
    ("human_fraction_target", pa.float64(), "fraction of 16x16 patches of the target that contain the person (silhouette)"),
    ("human_fraction_reference", pa.float64(), "fraction of 16x16 patches of the reference that contain the person (silhouette)"),
    ("silhouette_method", pa.string(), "how silhouettes were made: render | smpl | bgsub | keypoints | grabcut | box; <target>+<reference> when the two differ"),
    ("crop_target_x0", pa.float64(), "target crop box in source pixels, left edge; the box may extend past the frame (padded)"),
    ("crop_target_y0", pa.float64(), "target crop box in source pixels, top edge"),
    ("crop_target_x1", pa.float64(), "target crop box in source pixels, right edge"),
    ("crop_target_y1", pa.float64(), "target crop box in source pixels, bottom edge"),
    ("crop_reference_x0", pa.float64(), "reference crop box in source pixels, left edge; may extend past the frame (padded)"),
    ("crop_reference_y0", pa.float64(), "reference crop box in source pixels, top edge"),
    ("crop_reference_x1", pa.float64(), "reference crop box in source pixels, right edge"),
    ("crop_reference_y1", pa.float64(), "reference crop box in source pixels, bottom edge"),
    ("image_size", pa.int32(), "side of the square images in pixels"),
    ("jpeg_bytes_target", pa.int32(), "size of the target JPEG in bytes"),
    ("jpeg_bytes_reference", pa.int32(), "size of the reference JPEG in bytes"),
    ("has_depth", pa.bool_(), "the sample carries 16-bit depth PNGs (millimetres, 0 = no surface)"),
    ("has_keypoints", pa.bool_(), "the JSON carries COCO-17 2D keypoints for both images"),
    ("seed", pa.int64(), "build seed the pair was drawn with"),
)

COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
COLUMN_DOCS = {name: doc for name, _, doc in COLUMNS}
DESCRIPTION = b"description"  # the Parquet field metadata key holding a column's meaning
# Each field carries its description, so ``pyarrow.parquet.read_schema(path)`` shows what a column means.
SCHEMA = pa.schema([pa.field(name, typ, metadata={DESCRIPTION: doc.encode()}) for name, typ, doc in COLUMNS])

# Columns every row must fill (the rest may be null).
REQUIRED = (
    "key", "shard", "source", "kind", "split", "subject", "sequence", "track",
    "camera_target", "camera_reference", "frame_target", "frame_reference",
    "human_fraction_target", "human_fraction_reference", "silhouette_method",
    "image_size", "jpeg_bytes_target", "jpeg_bytes_reference", "has_depth", "has_keypoints",
)


def validate_row(row: Mapping[str, Any]) -> None:
    """Raise ValueError if a row lacks a required column, has an unknown one, or a bad kind."""
    unknown = set(row) - set(COLUMN_NAMES)
    if unknown:
        raise ValueError(f"unknown manifest columns: {sorted(unknown)}")
    missing = [c for c in REQUIRED if row.get(c) is None]
    if missing:
        raise ValueError(f"manifest row {row.get('key')!r} lacks {missing}")
    if row["kind"] not in ("cross_view", "cross_pose"):
        raise ValueError(f"bad kind {row['kind']!r}")


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Typed Arrow table from row dicts (columns absent from a row become null)."""
    rows = list(rows)
    for row in rows:
        validate_row(row)
    columns = {name: [row.get(name) for row in rows] for name in COLUMN_NAMES}
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def manifest_row(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest columns found in a sample's JSON metadata (the JSON holds a superset)."""
    return {name: meta.get(name) for name in COLUMN_NAMES}
