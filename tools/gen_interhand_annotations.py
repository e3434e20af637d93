"""Generate InterHand2.6M annotation files of any size in the real schema (for scale measurements).

    python tools/gen_interhand_annotations.py ROOT --images 1000000 [--split train] [--image-files 1]

writes ``ROOT/annotations/<split>/InterHand2.6M_<split>_{data,camera,joint_3d}.json`` (and
``_MANO_NeuralAnnot.json`` with ``--mano``) plus ``ROOT/images/<split>/Capture<N>/<seq>/`` folders, so
that ``pairgen.sources.interhand.InterHandReader(ROOT)`` lists the units. The geometry is plausible
(cameras on a sphere around the hands, looking at them; joints near the origin, in mm), so a unit whose
image files exist loads into observations. Image files are empty (the reader never decodes them).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

__all__ = ["write_interhand_annotations"]


def _look_at(center: np.ndarray) -> np.ndarray:
    """World-to-camera rotation of a camera at ``center`` looking at the origin (y down in the image)."""
    z = -center / np.linalg.norm(center)
    up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.95 else np.array([0.0, 1.0, 0.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def _shape(n_images: int, cameras: int, frames: int, captures: int) -> tuple[int, int, int, int]:
    """(captures, sequences per capture, cameras, frames per sequence) giving about n_images."""
    per_unit = cameras * frames
    units = max(1, math.ceil(n_images / per_unit))
    captures = max(1, min(captures, units))
    return captures, math.ceil(units / captures), cameras, frames


def write_interhand_annotations(root, n_images: int, split: str = "train", *, cameras: int = 40,
                                frames_per_seq: int = 50, captures: int = 10, step: int = 18, seed: int = 0,
                                shuffle: bool = False, nested_joint_valid: bool = False, image_files: int = 0,
                                image_bytes: bytes = b"", mano: bool = False, joint_3d: bool = True,
                                camera: bool = True) -> dict:
    """Write InterHand2.6M annotations for ``split`` under ``root`` in the real v1.0 schema.

    Parameters
    ----------
    root: the dataset root (``root/annotations/<split>/...`` and ``root/images/<split>/...`` are written).
    n_images: number of images (and of annotations) in ``_data.json``, exactly.
    cameras, frames_per_seq, captures: a unit (Capture<N>/<seq>) is ``cameras`` x ``frames_per_seq``
        images; units are spread over ``captures`` captures (the last unit may be short).
    step: frame ids step (18 = the 5 fps train release, 6 = val/test); frame ids are unique per capture.
    shuffle: list images and annotations in a random order (units interleaved; annotations in another
        order than images). Default: capture, sequence, camera, frame order, as in the release.
    nested_joint_valid: ``joint_valid`` as 42 one-element lists (``[[1], [0], ...]``) instead of flat.
    image_files: create the image files of this many units (the first ones); the other units get their
        sequence folder only (enough for ``unit_names()``, not for ``load()``).
    image_bytes: the content of each image file (default empty: enough for ``load()``, which never
        decodes; give a JPEG of 512x334 to build pairs from them).
    mano: also write ``_MANO_NeuralAnnot.json`` (random pose/shape/trans per frame and hand).
    joint_3d, camera: write ``_joint_3d.json`` / ``_camera.json`` (default True).

    ``_data.json`` lists ``images`` then ``annotations`` (two top-level arrays joined by ``id`` /
    ``image_id``), then ``categories``, written with ``json.dumps``'s default separators; one
    image + annotation is about 550 bytes (1,000,000 images: about 550 MB).

    Returns (JSON-serialisable) {"data": path, "joint_3d": path | None, "camera": path | None,
    "mano": path | None (paths as str), "units": [unit names, in order], "images": n_images,
    "seconds": write time}.
    """
    t0 = time.perf_counter()
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_caps, seqs_per_cap, n_cams, n_frames = _shape(n_images, cameras, frames_per_seq, captures)
    cams = [str(400000 + 2 * k + 200) for k in range(n_cams)]
    ann_dir = root / "annotations" / split
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_root = root / "images" / split

    # units in release order: (capture, seq, first frame id)
    units: list[tuple[int, str, int]] = []
    left = n_images
    for c in range(n_caps):
        for s in range(seqs_per_cap):
            if left <= 0:
                break
            units.append((c, f"{s:04d}_gen_seq_{c}_{s}", 1000 + s * (n_frames * step + 10_000)))
            left -= n_cams * n_frames
    names = [f"{split}/Capture{c}/{seq}" for c, seq, _ in units]
    for i, (c, seq, f0) in enumerate(units):
        d = img_root / f"Capture{c}" / seq
        d.mkdir(parents=True, exist_ok=True)
        if i < image_files:
            for cam in cams:
                (d / f"cam{cam}").mkdir(exist_ok=True)
                for k in range(n_frames):
                    (d / f"cam{cam}" / f"image{f0 + k * step}.jpg").write_bytes(image_bytes)

    # image rows: (capture, seq, camera, frame); exactly n_images of them
    rows = [(c, seq, cam, f0 + k * step) for c, seq, f0 in units for cam in cams for k in range(n_frames)]
    rows = rows[:n_images]
    img_order = rng.permutation(len(rows)) if shuffle else range(len(rows))
    ann_order = rng.permutation(len(rows)) if shuffle else range(len(rows))
    subjects = {c: 1 + c % 26 for c in range(n_caps)}
    hand_types = ("right", "left", "interacting")

    data_path = ann_dir / f"InterHand2.6M_{split}_data.json"
    with open(data_path, "w", buffering=1 << 22) as f:
        f.write('{"images": [')
        for j, i in enumerate(img_order):
            c, seq, cam, fr = rows[i]
            w, h = (334, 512) if cam == cams[-1] else (512, 334)  # one portrait camera, like cam400412
            f.write(("" if j == 0 else ", ") +
                    f'{{"id": {i}, "file_name": "Capture{c}/{seq}/cam{cam}/image{fr}.jpg", "width": {w}, '
                    f'"height": {h}, "capture": {c}, "subject": {subjects[c]}, "seq_name": "{seq}", '
                    f'"camera": "{cam}", "frame_idx": {fr}}}')
        f.write('], "annotations": [')
        bits = rng.random((4096, 42)) < 0.85
        boxes = rng.uniform(0, 300, (4096, 4))
        for j, i in enumerate(ann_order):
            jv = bits[i % 4096]
            jv_txt = ", ".join(f"[{int(b)}]" if nested_joint_valid else str(int(b)) for b in jv)
            b = boxes[i % 4096].tolist()
            f.write(("" if j == 0 else ", ") +
                    f'{{"id": {i}, "image_id": {i}, "bbox": [{b[0]!r}, {b[1]!r}, {b[2]!r}, {b[3]!r}], '
                    f'"joint_valid": [{jv_txt}], "hand_type": "{hand_types[i % 3]}", '
                    f'"hand_type_valid": {int(i % 7 != 0)}}}')
        f.write('], "categories": [{"supercategory": "hand", "id": 1, "name": "hand"}]}')

    out = {"data": data_path, "joint_3d": None, "camera": None, "mano": None, "units": names, "images": len(rows)}
    if camera:
        cam_json = {}
        for c in range(n_caps):
            entry = {"campos": {}, "camrot": {}, "focal": {}, "princpt": {}}
            for k, cam in enumerate(cams):
                az = 2 * np.pi * k / n_cams + rng.uniform(-0.05, 0.05)
                el = np.radians(rng.uniform(-40, 60))
                center = 1000.0 * np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
                w, h = (334, 512) if cam == cams[-1] else (512, 334)
                entry["campos"][cam] = center.tolist()
                entry["camrot"][cam] = _look_at(center).tolist()
                entry["focal"][cam] = [1200.0, 1200.0]
                entry["princpt"][cam] = [w / 2, h / 2]
            cam_json[str(c)] = entry
        out["camera"] = ann_dir / f"InterHand2.6M_{split}_camera.json"
        out["camera"].write_text(json.dumps(cam_json))
    frames_of: dict[int, list[int]] = {}
    for c, _, f0 in units:
        frames_of.setdefault(c, []).extend(f0 + k * step for k in range(n_frames))
    if joint_3d:
        out["joint_3d"] = ann_dir / f"InterHand2.6M_{split}_joint_3d.json"
        base = rng.normal(0, 40, (256, 42, 3))
        with open(out["joint_3d"], "w", buffering=1 << 22) as f:
            f.write("{")
            for ci, (c, frs) in enumerate(frames_of.items()):
                f.write(("" if ci == 0 else ", ") + f'"{c}": {{')
                for j, fr in enumerate(frs):
                    X = np.round(base[fr % 256], 4)
                    wc = ", ".join(f"[{x!r}, {y!r}, {z!r}]" for x, y, z in X.tolist())
                    jv = ", ".join("1" if (fr + k) % 13 else "0" for k in range(42))
                    f.write(("" if j == 0 else ", ") +
                            f'"{fr}": {{"world_coord": [{wc}], "joint_valid": [{jv}], '
                            f'"hand_type": "interacting", "hand_type_valid": 1}}')
                f.write("}")
            f.write("}")
    if mano:
        out["mano"] = ann_dir / f"InterHand2.6M_{split}_MANO_NeuralAnnot.json"
        with open(out["mano"], "w", buffering=1 << 22) as f:
            f.write("{")
            for ci, (c, frs) in enumerate(frames_of.items()):
                f.write(("" if ci == 0 else ", ") + f'"{c}": {{')
                for j, fr in enumerate(frs):
                    r = np.random.default_rng([seed, c, fr])
                    hands = {h: {"pose": r.normal(0, 0.2, 48).round(6).tolist(),
                                 "shape": r.normal(0, 0.5, 10).round(6).tolist(),
                                 "trans": r.normal(0, 0.05, 3).round(6).tolist()} for h in ("right", "left")}
                    if fr % 11 == 0:
                        hands["left"] = None  # a hand without a fit, as in the release
                    f.write(("" if j == 0 else ", ") + f'"{fr}": ' + json.dumps(hands))
                f.write("}")
            f.write("}")
    out["seconds"] = time.perf_counter() - t0
    return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--split", default="train")
    ap.add_argument("--cameras", type=int, default=40)
    ap.add_argument("--frames-per-seq", type=int, default=50)
    ap.add_argument("--captures", type=int, default=10)
    ap.add_argument("--image-files", type=int, default=1, help="units whose (empty) image files are created")
    ap.add_argument("--shuffle", action="store_true")
    ap.add_argument("--mano", action="store_true")
    a = ap.parse_args(argv)
    out = write_interhand_annotations(a.root, a.images, a.split, cameras=a.cameras, frames_per_seq=a.frames_per_seq,
                                      captures=a.captures, image_files=a.image_files, shuffle=a.shuffle, mano=a.mano)
    for k in ("data", "joint_3d", "camera", "mano"):
        if out[k]:
            print(f"{k}: {out[k]} ({Path(out[k]).stat().st_size / 1e6:.1f} MB)")
    print(f"{len(out['units'])} units, {out['images']} images, {out['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
