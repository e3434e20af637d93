"""The sample format: what one pair looks like inside a WebDataset shard.

A sample is a group of tar members sharing one key (the text before the first dot):

    <key>.target.jpg         target image (the one the trainer masks), RGB JPEG, S x S
    <key>.reference.jpg      reference image, RGB JPEG, S x S
    <key>.target.mask.png    silhouette of the target, 8-bit single channel, person = 255
    <key>.reference.mask.png silhouette of the reference, same convention
    <key>.target.depth.png   (optional) 16-bit depth in millimetres, 0 = no surface
    <key>.reference.depth.png(optional) same for the reference
    <key>.json               metadata: every manifest column plus per-image extras
                             (2D keypoints in crop pixels, camera, body parameters)

Keys contain no dots and are deterministic: ``<source>-<shard:06d>-<index:06d>``.

Plain webdataset reads the shards, but its image decoders (``.decode("rgb")`` and the like) convert
every ``.png`` through PIL to 8-bit RGB: depth would lose its millimetres (0..1 floats) and masks
would get 3 channels. Decode the PNGs as stored with a handler placed before the image decoder
(README, "Using the shards elsewhere"; ``tests/test_readme_snippets.py`` runs it)::

    def png_as_stored(data):  # masks: HxW uint8 (person = 255); depth: HxW uint16 millimetres
        return np.asarray(PIL.Image.open(io.BytesIO(data)))

    wds.WebDataset(urls, shardshuffle=False).decode(
        wds.handle_extension("mask.png depth.png", png_as_stored), "rgb8")
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

# Member suffixes (what follows "<key>."), one constant per member.
TARGET_JPG = "target.jpg"
REFERENCE_JPG = "reference.jpg"
TARGET_MASK = "target.mask.png"
REFERENCE_MASK = "reference.mask.png"
TARGET_DEPTH = "target.depth.png"
REFERENCE_DEPTH = "reference.depth.png"
META_JSON = "json"

REQUIRED_SUFFIXES = (TARGET_JPG, REFERENCE_JPG, TARGET_MASK, REFERENCE_MASK, META_JSON)
OPTIONAL_SUFFIXES = (TARGET_DEPTH, REFERENCE_DEPTH)
ALL_SUFFIXES = REQUIRED_SUFFIXES + OPTIONAL_SUFFIXES

KINDS = ("cross_view", "cross_pose")
KEY_RE = re.compile(r"^[a-z0-9_]+-\d{6}-\d{6}$")
SOURCE_RE = re.compile(r"^[a-z0-9_]+$")

# COCO-17 keypoint order, used for every "keypoints" entry in the JSON.
COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
try:
    from isal import isal_zlib as _ISAL  # inflate only (decoding is deterministic by definition)
except ImportError:  # optional speed-up: plain zlib then
    _ISAL = None


def sample_key(source: str, shard: int, index: int) -> str:
    """Deterministic, dot-free key of the ``index``-th sample of shard ``shard``."""
    if not SOURCE_RE.match(source):
        raise ValueError(f"source name {source!r} must match {SOURCE_RE.pattern}")
    return f"{source}-{shard:06d}-{index:06d}"


@dataclass
class Sample:
    """One decoded pair. Images are HxWx3 uint8 RGB; masks HxW uint8 (0/255); depth HxW uint16 mm."""

    key: str
    target: np.ndarray
    reference: np.ndarray
    target_mask: np.ndarray
    reference_mask: np.ndarray
    meta: dict
    target_depth: np.ndarray | None = None
    reference_depth: np.ndarray | None = None


def encode_png(array: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of a uint8 (HxW or HxWx3 RGB) or uint16 (HxW) array.

    Single-channel images (silhouettes, depth) are written here with zlib: 8-bit rows unfiltered
    (they decode ~4x faster than RLE-deflated rows; the trainer decodes every target mask), 16-bit
    rows with the "up" filter and RLE deflate. No adaptive filter search (libpng's is most of its
    encoding time), no libpng per-row overhead: a 256x256 depth map takes 0.17 ms instead of
    OpenCV's 0.24 ms for the same size. RGB goes through OpenCV.
    """
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16, got {array.dtype}")
    if array.ndim == 2:
        return _encode_gray_png(array, level)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"PNG needs HxW (8/16-bit) or HxWx3 (8-bit), got {array.shape} {array.dtype}")
    import cv2

    bgr = np.ascontiguousarray(array[..., ::-1])  # RGB -> BGR for OpenCV
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    ok, buf = cv2.imencode(".png", bgr, params)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _zlib_stream(data, level: int, strategy: int) -> bytes:
    """A zlib stream (what PNG's IDAT holds). Always zlib: equal input must give equal bytes (a
    resumed build rewrites shards byte-identically), and ISA-L's deflate does not promise that
    (a build here gave one depth PNG of ~2,100 members different bytes for equal pixels)."""
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 8, strategy)
    return z.compress(data) + z.flush()


def _encode_gray_png(array: np.ndarray, level: int) -> bytes:
    h, w = array.shape
    if array.dtype == np.uint16:
        be = array.astype(">u2").view(np.uint8).reshape(h, 2 * w)  # PNG samples are big-endian
        rows = np.empty((h, 2 * w + 1), np.uint8)
        rows[:, 0] = 2  # filter "up": each byte minus the byte above (mod 256); row 0 is as is
        rows[0, 1:] = be[0]
        np.subtract(be[1:], be[:-1], out=rows[1:, 1:])
        strategy, depth = zlib.Z_RLE, 16
    else:
        rows = np.empty((h, w + 1), np.uint8)
        rows[:, 0] = 0  # filter "none"
        rows[:, 1:] = array
        strategy, depth = zlib.Z_DEFAULT_STRATEGY, 8
    idat = _zlib_stream(rows, level, strategy)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)  # greyscale, deflate, adaptive filters, no interlace
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an HxWx3 uint8 RGB image: full-resolution chroma (4:4:4; the trainer regresses
    pixels, and 4:2:0 would blur colour edges of its targets), accurate DCT, deterministic for
    equal input."""
    import simplejpeg

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"JPEG needs HxWx3 uint8, got {rgb.dtype} {rgb.shape}")
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB",
                                  colorsubsampling="444", fastdct=False)


def decode_jpeg(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB from JPEG bytes (raises ValueError on corrupt data)."""
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except Exception as exc:  # simplejpeg raises plain ValueError/RuntimeError variants
        raise ValueError(f"corrupt JPEG: {exc}") from exc


def decode_png(data: bytes) -> np.ndarray:
    """Array from PNG bytes, keeping bit depth (uint8 or uint16) and channels (RGB order)."""
    import cv2

    arr = decode_gray_png(data)
    if arr is not None:
        return arr
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("corrupt PNG")
    if arr.ndim == 3:
        arr = arr[..., ::-1].copy()
    return arr


def decode_gray_png(data: bytes) -> np.ndarray | None:
    """Fast path for what :func:`encode_png` writes for silhouettes and depth: a non-interlaced
    8/16-bit greyscale PNG whose rows all use filter "none" or all "up". Inflated by ISA-L where
    installed (2-3x faster than libpng's zlib: ~30 instead of ~70 us for a 256x256 mask). Returns
    None for any other PNG (the caller decodes it in full); raises ValueError on a corrupt stream.
    """
    if data[:8] != PNG_SIGNATURE:
        return None
    pos, end, header, parts = 8, len(data), None, []
    while pos + 8 <= end:
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif kind == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + n])
        elif kind == b"IEND":
            break
        pos += 12 + n
    if header is None or not parts:
        return None
    w, h, depth, colour, compression, filtering, interlace = header
    if colour != 0 or depth not in (8, 16) or compression or filtering or interlace:
        return None
    row = w * depth // 8 + 1
    try:
        raw = (_ISAL or zlib).decompress(b"".join(parts))
    except Exception as exc:  # zlib.error / isal's IsalError  # noqa: BLE001
        raise ValueError(f"corrupt PNG: {exc}") from exc
    if len(raw) != h * row:
        raise ValueError("corrupt PNG: image data of the wrong size")
    rows = np.frombuffer(raw, np.uint8).reshape(h, row)
    filters = rows[:, 0]
    if not filters.any():
        px = rows[:, 1:].copy()
    elif (filters == 2).all():  # "up": a running sum down each column, mod 256
        px = np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8)
    else:
        return None
    if depth == 16:
        return px.view(">u2").astype(np.uint16)
    return px


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace, UTF-8) so equal metadata gives equal bytes.
    Non-finite floats are written as null (strict JSON: every parser reads it)."""
    import orjson

    return orjson.dumps(meta, default=_json_default,
                        option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def encode_sample(
    key: str,
    target_jpg: bytes,
    reference_jpg: bytes,
    target_mask: np.ndarray,
    reference_mask: np.ndarray,
    meta: Mapping[str, Any],
    target_depth: np.ndarray | None = None,
    reference_depth: np.ndarray | None = None,
    *,
    target_mask_png: bytes | None = None,
    reference_mask_png: bytes | None = None,
) -> dict[str, bytes]:
    """Tar members of one sample, as ``{suffix: bytes}`` (already-encoded JPEGs are passed through,
    and so are the masks' PNGs when given: ``encode_png`` of the masks, e.g. shared by several pairs)."""
    if not KEY_RE.match(key):
        raise ValueError(f"bad sample key {key!r}")
    for name, mask in (("target", target_mask), ("reference", reference_mask)):
        if mask.dtype != np.uint8 or mask.ndim != 2:
            raise ValueError(f"{name} silhouette must be HxW uint8, got {mask.dtype} {mask.shape}")
    members = {
        TARGET_JPG: target_jpg,
        REFERENCE_JPG: reference_jpg,
        TARGET_MASK: encode_png(target_mask) if target_mask_png is None else target_mask_png,
        REFERENCE_MASK: encode_png(reference_mask) if reference_mask_png is None else reference_mask_png,
        META_JSON: encode_meta(meta),
    }
    if target_depth is not None:
        members[TARGET_DEPTH] = encode_png(np.asarray(target_depth, np.uint16))
    if reference_depth is not None:
        members[REFERENCE_DEPTH] = encode_png(np.asarray(reference_depth, np.uint16))
    return members


def decode_sample(key: str, members: Mapping[str, bytes]) -> Sample:
    """Decode the members of one sample; raises ValueError naming what is missing or corrupt."""
    missing = [s for s in REQUIRED_SUFFIXES if s not in members]
    if missing:
        raise ValueError(f"sample {key}: missing members {missing}")
    target = decode_jpeg(members[TARGET_JPG])
    reference = decode_jpeg(members[REFERENCE_JPG])
    tmask = decode_png(members[TARGET_MASK])
    rmask = decode_png(members[REFERENCE_MASK])
    if tmask.shape != target.shape[:2] or rmask.shape != reference.shape[:2]:
        raise ValueError(f"sample {key}: silhouette size differs from its image")
    try:
        meta = json.loads(members[META_JSON])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"sample {key}: corrupt JSON: {exc}") from exc
    tdepth = decode_png(members[TARGET_DEPTH]) if TARGET_DEPTH in members else None
    rdepth = decode_png(members[REFERENCE_DEPTH]) if REFERENCE_DEPTH in members else None
    return Sample(key, target, reference, tmask, rmask, meta, tdepth, rdepth)


def split_member_name(name: str) -> tuple[str, str]:
    """``"a-000000-000001.target.jpg" -> ("a-000000-000001", "target.jpg")`` (webdataset's rule)."""
    base = name.rsplit("/", 1)[-1]
    key, _, suffix = base.partition(".")
    return key, suffix


def read_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG header without decoding."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def iter_tar_members(stream):
    """Yield ``(name, bytes)`` of the regular files of a tar read from a binary stream, in order.

    A lean reader of the ustar/GNU/pax layout (512-byte headers, checksummed): about 10x less
    Python work per member than ``tarfile``, which matters at thousands of samples per second.
    Raises ValueError on a damaged header or a truncated member.
    """
    long_name = None
    while True:
        header = stream.read(512)
        if not header or header == b"\0" * len(header):
            return  # end of archive (two zero blocks) or of the stream
        if len(header) < 512:
            raise ValueError("truncated tar header")
        stored = header[148:156].split(b"\0", 1)[0].strip()
        if not stored or int(stored, 8) != sum(header[:148]) + 256 + sum(header[156:]):
            raise ValueError("bad tar header checksum")
        size_field = header[124:136]
        if size_field[0] & 0x80:  # base-256 (GNU) for huge members
            size = int.from_bytes(size_field[1:], "big")
        else:
            size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
        data = stream.read(size)
        if len(data) < size:
            raise ValueError("truncated tar member")
        if size % 512:
            stream.read(512 - size % 512)
        kind = header[156:157]
        if kind == b"L":  # GNU long name for the next member
            long_name = data.split(b"\0", 1)[0].decode()
            continue
        if kind == b"x":  # pax extended header: take its path, if any
            for rec in data.decode("utf-8", "replace").splitlines():
                _, _, kv = rec.partition(" ")
                if kv.startswith("path="):
                    long_name = kv[5:]
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue
        if long_name is not None:
            name, long_name = long_name, None
        else:
            name = header[:100].split(b"\0", 1)[0].decode()
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0].decode()
                if prefix:
                    name = f"{prefix}/{name}"
        yield name, data


def iter_tar_samples(source):
    """Yield ``(key, {suffix: bytes})`` from a shard (path or binary stream), grouping adjacent
    members as webdataset does."""
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        with open(source, "rb", buffering=1 << 20) as f:
            yield from iter_tar_samples(f)
        return
    yield from group_samples(iter_tar_members(source))


def group_samples(members):
    """``(name, bytes)`` members -> ``(key, {suffix: bytes})`` samples, adjacent members with the
    same key grouped (webdataset's rule)."""
    current, grouped = None, {}
    for name, data in members:
        key, suffix = split_member_name(name)
        if key != current and current is not None:
            yield current, grouped
            grouped = {}
        current = key
        grouped[suffix] = data
    if current is not None:
        yield current, grouped
