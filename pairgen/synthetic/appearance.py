"""Procedural appearance: skin tones, clothing textures on the UV layout, and lighting.

The UV layout is rasterised once into a region map (skin, shirt, sleeve, forearm, trousers, shin,
shoes, hair). Each body draws an outfit: a shirt (short or long sleeves), trousers (shorts or
long), shoes and hair, each with a solid, striped, checked or noisy pattern, over a skin tone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pairgen.memo import cached_per_array
from pairgen.synthetic.body import (FOREARM, HAIR, SHIN, SHIRT, SHOES, SKIN, SLEEVE, TROUSERS)

# Skin tones (sRGB), light to dark, from common cosmetic/Fitzpatrick-style reference swatches.
SKIN_TONES = np.array([
    [255, 224, 196], [241, 194, 167], [224, 172, 138], [198, 134, 103],
    [161, 102, 72], [120, 74, 50], [87, 53, 36], [60, 38, 28],
], dtype=np.float32)
HAIR_COLOURS = np.array([
    [20, 16, 14], [50, 34, 24], [90, 60, 38], [150, 110, 70], [200, 170, 120], [120, 120, 120], [160, 60, 30],
], dtype=np.float32)


def region_map(uv: np.ndarray, faces: np.ndarray, regions: np.ndarray, size: int) -> np.ndarray:
    """[size, size] int8 map of the region owning each texel (-1 = unused), from UV triangles.

    ``uv`` [Vs, 2] GL texture coordinates; pyrender uploads images bottom row first, so texel
    row r samples v = 1 - r/size.
    """
    import cv2

    px = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=1)
    face_region = regions[faces[:, 0]]
    out = np.full((size, size), -1, np.int8)
    tris = np.round(px[faces] * 4).astype(np.int32)  # 2 fractional bits for cv2's shift
    for reg in np.unique(face_region):
        cv2.fillPoly(out, list(tris[face_region == reg]), int(reg), lineType=cv2.LINE_8, shift=2)
    # Grow regions into unused texels so bilinear sampling at seams never picks "unused".
    unused = out < 0
    if unused.any():
        idx = cv2.distanceTransformWithLabels(unused.astype(np.uint8), cv2.DIST_L2, 3,
                                              labelType=cv2.DIST_LABEL_PIXEL)[1]
        labels_src = np.zeros(idx.max() + 1, np.int8)
        ys, xs = np.nonzero(~unused)
        labels_src[idx[ys, xs]] = out[ys, xs]
        out = labels_src[idx]
    return out


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) float32 pixel coordinates of a size x size image (cached, read-only)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


PATTERNS = ("solid", "stripes", "checks", "noise")
PATTERN_CDF = np.cumsum([0.4, 0.25, 0.15, 0.2])


def _pattern(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """One clothing pattern [size, size, 3] float32 in 0..255 (a solid colour is a read-only
    broadcast of ``base``: a constant layer)."""
    kind = PATTERNS[min(int(np.searchsorted(PATTERN_CDF, rng.random(), side="right")), len(PATTERNS) - 1)]
    img = np.broadcast_to(base, (size, size, 3))
    if kind == "solid":
        return img
    other = rng.uniform(0, 255, 3).astype(np.float32)
    yy, xx = pixel_grid(size)
    if kind == "stripes":
        period = rng.uniform(3, 14)  # in half-resolution texels
        ang = rng.uniform(0, np.pi)
        coord = xx * np.float32(np.cos(ang)) + yy * np.float32(np.sin(ang))
        frac = coord * np.float32(1.0 / period)
        frac -= np.floor(frac)  # = mod(coord, period) / period, without np.mod's slow float path
        mask = (frac < rng.uniform(0.3, 0.6))[..., None]
        return np.where(mask, other, img)
    if kind == "checks":
        inv = np.float32(1.0 / rng.uniform(4, 16))
        mask = ((np.floor(xx * inv).astype(np.int32) + np.floor(yy * inv).astype(np.int32)) & 1) == 0
        return np.where(mask[..., None], 0.5 * (other + base), img)
    noise = smooth_noise(rng, size, octaves=3)[..., None]
    return img * (0.7 + 0.6 * noise)


def smooth_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1], [size, size] float32: random grids of 4, 8, 16... cells with
    halving amplitudes, summed coarse to fine (the running sum is upsampled 2x and the next octave
    added), then one cubic upsampling to ``size``."""
    import cv2

    acc = rng.random((4, 4), dtype=np.float32)
    for o in range(1, octaves):
        cells = 4 << o
        acc = cv2.resize(acc, (cells, cells), interpolation=cv2.INTER_CUBIC)
        acc += rng.random((cells, cells), dtype=np.float32) * np.float32(1.0 / 2 ** o)
    acc = cv2.resize(acc, (size, size), interpolation=cv2.INTER_CUBIC)
    lo, hi = cv2.minMaxLoc(acc)[:2]
    acc -= lo
    acc *= 1.0 / (hi - lo + 1e-6)
    return np.clip(acc, 0, 1, out=acc)


_REGION_U8: dict[tuple, tuple] = {}


def _region_u8(regions: np.ndarray) -> np.ndarray:
    """The region map as uint8 (unused texels -> region 0), for cv2.LUT; cached per map."""
    return cached_per_array(_REGION_U8, regions, lambda: np.clip(regions, 0, None).astype(np.uint8))


def random_outfit_texture(rng: np.random.Generator, regions: np.ndarray) -> tuple[np.ndarray, dict]:
    """Texture [H, W, 3] uint8 for a region map, and a description of the outfit."""
    import cv2

    size = regions.shape[0]
    half = max(16, size // 2)  # clothing patterns are drawn at half resolution, upsampled once
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.08)
    low = max(16, size // 4)  # the skin's mottling is 2 octaves (4 and 8 cells): a quarter resolution holds it
    skin_img = np.broadcast_to(skin, (low, low, 3)) * (0.95 + 0.1 * smooth_noise(rng, low, 2)[..., None])
    long_sleeves = bool(rng.random() < 0.5)
    long_trousers = bool(rng.random() < 0.7)
    shirt = _pattern(rng, half, rng.uniform(0, 255, 3).astype(np.float32))
    trousers = _pattern(rng, half, rng.uniform(0, 200, 3).astype(np.float32))
    shoes = np.broadcast_to(rng.uniform(0, 220, 3).astype(np.float32), (half, half, 3))
    hair = np.broadcast_to(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], (half, half, 3))
    bald = bool(rng.random() < 0.1)
    layers = {SKIN: skin_img, SHIRT: shirt, SLEEVE: shirt, FOREARM: shirt if long_sleeves else skin_img,
              TROUSERS: trousers, SHIN: trousers if long_trousers else skin_img, SHOES: shoes,
              HAIR: skin_img if bald else hair}
    # the distinct layer images, and which one each region takes
    distinct: list[np.ndarray] = []
    layer_of_region = np.zeros(max(layers) + 1, np.int64)
    for reg, layer in layers.items():
        for i, d in enumerate(distinct):
            if d is layer:
                break
        else:
            distinct.append(layer)
            i = len(distinct) - 1
        layer_of_region[reg] = i
    # Solid colours are painted through a palette lookup (one packed RGBA value per region); each
    # image layer is upsampled once (4-channel fast path) and copied onto its regions' texels.
    region = _region_u8(regions)
    palette = np.zeros((256, 4), np.uint8)
    images = []
    for i, d in enumerate(distinct):
        if np.asarray(d).strides[:2] == (0, 0):
            palette[np.flatnonzero(layer_of_region == i), :3] = np.clip(np.asarray(d)[0, 0], 0, 255)
        else:
            images.append(i)
    tex = cv2.LUT(region, palette.view(np.int32).reshape(-1)).view(np.uint8).reshape(size, size, 4)
    for i in images:  # layers are >= 0: convertScaleAbs is a saturating cast to uint8
        small = cv2.cvtColor(cv2.convertScaleAbs(np.asarray(distinct[i])), cv2.COLOR_RGB2RGBA)
        pick = np.zeros(256, np.uint8)
        pick[np.flatnonzero(layer_of_region == i)] = 1
        cv2.copyTo(cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR), cv2.LUT(region, pick), tex)
    tex = tex[..., :3]
    desc = {"skin_rgb": [round(float(c), 1) for c in skin], "long_sleeves": long_sleeves,
            "long_trousers": long_trousers, "bald": bald}
    return tex, desc


def random_lighting(rng: np.random.Generator, up: np.ndarray = np.array([0.0, 0.0, 1.0])):
    """(ambient rgb [3], [(direction [3], rgb [3], intensity)]) with random colour and strength."""
    temp = rng.uniform(-1, 1)  # warm (+) to cool (-) tint
    tint = np.array([1.0 + 0.15 * temp, 1.0, 1.0 - 0.15 * temp])
    ambient = np.clip(rng.uniform(0.25, 0.6) * tint, 0, 1)
    lights = []
    for _ in range(rng.integers(1, 3)):
        az = rng.uniform(0, 2 * np.pi)
        el = rng.uniform(np.radians(15), np.radians(75))
        direction = -np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        colour = np.clip(tint * rng.uniform(0.85, 1.0, 3), 0, 1)
        lights.append((direction, colour, float(rng.uniform(1.5, 4.5))))
    return ambient, lights
