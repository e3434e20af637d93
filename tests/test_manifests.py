"""The contract: sample members round-trip, keys are dot-free, the schema rejects bad rows."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from manifests import layout, sample, schema


def _row(**over):
    row = {c: None for c in schema.COLUMN_NAMES}
    row.update(key="aist-000001-000002", shard="aist-000001.tar", source="aist", kind="cross_view", split="train",
               subject="d01", sequence="s", track="0", camera_target="c01", camera_reference="c02",
               frame_target=3, frame_reference=3, human_fraction_target=0.2, human_fraction_reference=0.3,
               silhouette_method="keypoints", image_size=256, jpeg_bytes_target=10, jpeg_bytes_reference=11,
               has_depth=False, has_keypoints=True)
    row.update(over)
    return row


def test_keys_are_deterministic_and_dot_free():
    assert sample.sample_key("aist", 1, 2) == "aist-000001-000002"
    assert "." not in sample.sample_key("synthetic", 123456, 999999)
    with pytest.raises(ValueError):
        sample.sample_key("a.b", 0, 0)
    assert layout.shard_name("humbi", 7) == "humbi-000007"


def test_sample_roundtrip_through_a_tar():
    rng = np.random.default_rng(0)
    # a smooth image (as photos are): 4:2:0 JPEG keeps it within a few levels; white noise it would not
    img = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:50, 20:40] = 255
    depth = (mask.astype(np.uint16) * 10)
    members = sample.encode_sample("x-000000-000000", sample.encode_jpeg(img), sample.encode_jpeg(img[::-1]),
                                   mask, mask[::-1].copy(), {"kind": "cross_pose", "a": np.float32(1.5)}, depth, depth)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"x-000000-000000.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    [(key, got)] = list(sample.iter_tar_samples(buf))
    s = sample.decode_sample(key, got)
    assert np.array_equal(s.target_mask, mask) and np.array_equal(s.target_depth, depth)
    assert s.target_depth.dtype == np.uint16
    assert np.abs(s.target.astype(int) - img).mean() < 8  # JPEG
    assert s.meta == {"kind": "cross_pose", "a": 1.5}
    with pytest.raises(ValueError, match="missing members"):
        sample.decode_sample(key, {k: v for k, v in got.items() if k != sample.TARGET_MASK})
    with pytest.raises(ValueError, match="corrupt JPEG"):
        sample.decode_sample(key, {**got, sample.TARGET_JPG: b"\xff\xd8garbage"})


def test_schema_types_and_validation():
    table = schema.rows_to_table([_row(), _row(key="aist-000001-000003", kind="cross_pose", time_gap_s=0.5)])
    assert table.schema == schema.SCHEMA and table.num_rows == 2
    assert table.column("time_gap_s").to_pylist() == [None, 0.5]
    with pytest.raises(ValueError, match="bad kind"):
        schema.rows_to_table([_row(kind="same_view")])
    with pytest.raises(ValueError, match="lacks"):
        schema.rows_to_table([_row(subject=None)])
    with pytest.raises(ValueError, match="unknown manifest columns"):
        schema.rows_to_table([{**_row(), "colour": 1}])
    assert all(schema.COLUMN_DOCS[c] or c.startswith("crop_") for c in schema.COLUMN_NAMES)


@pytest.mark.parametrize("isal", [True, False])
def test_gray_pngs_decode_exactly_with_either_deflate(isal, monkeypatch):
    """Silhouettes (8-bit) and depth (16-bit) PNGs decode to the same arrays with our decoder
    (ISA-L's inflate or the zlib fallback), OpenCV and Pillow (what webdataset's decoders use)."""
    import io

    from PIL import Image

    if not isal:
        monkeypatch.setattr(sample, "_ISAL", None)
    elif sample._ISAL is None:
        pytest.skip("isal not installed")
    rng = np.random.default_rng(1)
    depth = np.zeros((48, 40), np.uint16)
    depth[10:30, 5:35] = rng.integers(1500, 9000, (20, 30))
    mask = np.where(depth > 0, 255, 0).astype(np.uint8)
    for arr in (depth, mask, rng.integers(0, 65535, (7, 3), dtype=np.uint16), np.zeros((1, 1), np.uint8)):
        data = sample.encode_png(arr)
        assert sample.read_png_size(data) == (arr.shape[1], arr.shape[0])
        assert np.array_equal(sample.decode_png(data), arr)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))).astype(arr.dtype), arr)


def test_gray_png_fast_decoder_takes_only_what_it_can():
    import cv2

    rng = np.random.default_rng(2)
    mask = rng.integers(0, 256, (40, 24)).astype(np.uint8)
    depth = rng.integers(0, 65535, (40, 24)).astype(np.uint16)
    for arr in (mask, depth):
        fast = sample.decode_gray_png(sample.encode_png(arr))
        assert fast is not None and fast.dtype == arr.dtype and np.array_equal(fast, arr) and fast.flags.writeable
    adaptive = cv2.imencode(".png", mask)[1].tobytes()  # libpng picks a filter per row: maybe not ours
    got = sample.decode_gray_png(adaptive)
    assert got is None or np.array_equal(got, mask)
    assert np.array_equal(sample.decode_png(adaptive), mask)
    rgb = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
    assert sample.decode_gray_png(sample.encode_png(rgb)) is None
    assert sample.decode_gray_png(b"not a png") is None
    broken = bytearray(sample.encode_png(mask))
    broken[45:60] = bytes(15)  # inside the deflate stream
    with pytest.raises(ValueError, match="corrupt PNG"):
        sample.decode_gray_png(bytes(broken))
