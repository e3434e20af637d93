"""Backgrounds behind the rendered person: procedural by default, or crops of the user's images.

Procedural backgrounds mix a colour gradient, fractal noise, random shapes and a tiled texture so
that the trainer cannot separate person from background by flat colour alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pairgen.synthetic.appearance import pixel_grid, smooth_noise

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def procedural_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] uint8 RGB. The smooth layers (gradient, noise, texture band) are drawn at
    half resolution and upsampled once; the shapes are drawn at full resolution (sharp edges)."""
    import cv2

    half = max(16, size // 2)
    # Per-channel 2-D float32 planes (numpy is slow on [H, W, 3] broadcasts; numpy scalars are cast
    # to Python floats so they do not promote to float64), merged once into 8-bit RGB.
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = float(rng.uniform(0, 2 * np.pi))
    yy, xx = (g * (1.0 / half) for g in pixel_grid(half))
    g = np.clip(0.5 + (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang), 0, 1)
    noise = 0.6 + 0.8 * smooth_noise(rng, half, octaves=int(rng.integers(2, 6)))
    gn, n = g * noise, noise  # colour = (c0 + g (c1 - c0)) * noise = c0 * n + (c1 - c0) * g n
    planes = [float(c0[c]) * n + float(c1[c] - c0[c]) * gn for c in range(3)]
    if rng.random() < 0.5:  # a tiled texture band (floor, wall, fence...)
        period = float(rng.uniform(3, 20))
        t_ang = float(rng.uniform(0, np.pi))
        coord = (xx * (np.cos(t_ang) * half) + yy * (np.sin(t_ang) * half))
        band = (np.floor(coord * (2.0 / period)).astype(np.int32) & 1) == 0  # mod(coord, period) < period / 2
        mix = float(rng.uniform(0.1, 0.4))
        tint = mix * rng.uniform(0, 255, 3)
        planes = [np.where(band, p * (1 - mix) + float(tint[c]), p) for c, p in enumerate(planes)]
    img = cv2.convertScaleAbs(cv2.merge(planes))  # values >= 0: a saturating cast to uint8
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    n_shapes = int(rng.integers(0, 8))  # every shape parameter drawn at once (one generator call each)
    colours = [tuple(c) for c in rng.uniform(0, 255, (n_shapes, 3)).tolist()]
    points = rng.integers(0, size, (n_shapes, 4)).tolist()
    radii = rng.integers(size // 20, size // 4, n_shapes).tolist()
    kinds = rng.integers(3, size=n_shapes).tolist()
    widths = rng.integers(1, 6, n_shapes).tolist()
    for colour, (x, y, x2, y2), r, shape, width in zip(colours, points, radii, kinds, widths):
        if shape == 0:
            cv2.circle(img, (x, y), r, colour, -1, lineType=cv2.LINE_AA)
        elif shape == 1:
            cv2.rectangle(img, (x - r, y - r // 2), (x + r, y + r // 2), colour, -1)
        else:
            cv2.line(img, (x, y), (x2, y2), colour, width, lineType=cv2.LINE_AA)
    return img


def list_background_images(directory: Path) -> list[Path]:
    """Image files under ``directory`` (recursive), sorted so draws are deterministic."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"--backgrounds {d}: not a directory")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"--backgrounds {d}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return files


def check_background_images(files: list[Path], limit: int = 64) -> None:
    """Decode up to ``limit`` evenly spread files; raise ValueError naming the first corrupt one."""
    import cv2

    step = max(1, len(files) // limit)
    for p in files[::step][:limit]:
        if cv2.imread(str(p), cv2.IMREAD_COLOR) is None:
            raise ValueError(f"--backgrounds: cannot decode {p}")


def image_background(rng: np.random.Generator, files: list[Path], size: int) -> np.ndarray | None:
    """A random square crop of a random image, resized to ``size``; None if it cannot be decoded."""
    import cv2

    path = files[int(rng.integers(len(files)))]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    h, w = bgr.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 1.0))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = bgr[y0:y0 + side, x0:x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1])
