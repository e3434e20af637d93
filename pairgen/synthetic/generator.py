"""SURREAL-style synthetic pairs: a random body in a random motion, rendered from random cameras.

cross_view: one instant (one posed mesh) seen by two cameras whose azimuths around the person
differ by a drawn angle (0-180 degrees, so front/back pairs occur); cross_pose: one camera and one
body at two instants of one motion, separated by a drawn gap. Each pair is a pure function of
(seed, pair index): any worker, any order, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pairgen.record import PairRecord
from pairgen.synthetic import appearance, background, camera as cam
from pairgen.synthetic.motions import sample_clip
from pairgen.synthetic.gl import GLBodyRenderer
from pairgen.synthetic.render import Camera

FPS = 30.0  # frame index = round(t * FPS) for the manifest's frame columns
KEYPOINT_DEPTH_TOLERANCE_M = 0.12  # a joint lies inside the body, behind the visible surface


@dataclass
class SyntheticSettings:
    image_size: int = 256
    texture_size: int = 256
    cross_view_fraction: float = 0.5
    kinds: tuple[str, ...] = ("cross_view", "cross_pose")
    min_gap_s: float = 0.25
    max_gap_s: float = 1.5
    min_azimuth_deg: float = 0.0
    max_azimuth_deg: float = 180.0
    min_motion: float = 0.01  # cross-pose: minimum mean keypoint displacement (fraction of height)
    distance_m: tuple[float, float] = (2.5, 8.0)
    elevation_deg: tuple[float, float] = (-10.0, 35.0)
    fill: tuple[float, float] = (0.6, 0.88)  # fraction of the image the person's larger side spans


class SyntheticGenerator:
    """Per-worker state (body model, renderer, UV region map) and the pair recipe."""

    def __init__(self, body, settings: SyntheticSettings, background_files=None, motion_bank=None):
        self.body = body
        self.s = settings
        self.renderer = GLBodyRenderer(settings.image_size, body.faces, body.uv, settings.texture_size)
        if hasattr(body, "region_texture_map"):  # bodies with an atlas layout (SMPL)
            self.regions = body.region_texture_map(settings.texture_size)
        else:
            self.regions = appearance.region_map(body.uv, body.faces, body.regions, settings.texture_size)
        self.background_files = background_files
        self.motion_bank = motion_bank  # optional AMASS clips (SMPL body)

    # -- pieces ------------------------------------------------------------------------------
    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        if self.background_files:
            img = background.image_background(rng, self.background_files, self.s.image_size)
            if img is not None:
                return img, "image"
        return background.procedural_background(rng, self.s.image_size), "procedural"

    def _finish(self, colour, depth, camera: Camera, bg, keypoints3d):
        """Composite over the background; silhouette, 16-bit depth, COCO keypoints with visibility."""
        import cv2

        mask = (depth > 0).view(np.uint8)  # 0/1
        image = bg.copy()
        cv2.copyTo(colour, mask, image)
        uv, z = camera.project(keypoints3d)
        S = self.s.image_size
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < S) & (uv[:, 1] >= 0) & (uv[:, 1] < S)
        px = np.clip(uv, 0, S - 1).astype(np.int64)
        d = depth[px[:, 1], px[:, 0]]
        vis = np.where(inside, np.where((d > 0) & (z <= d + KEYPOINT_DEPTH_TOLERANCE_M), 2, 1), 0)
        kps = [[u, v, f] for (u, v), f in zip(np.round(uv.astype(np.float64), 3).tolist(), vis.tolist())]
        depth_mm = cv2.multiply(depth, 1000.0, dtype=cv2.CV_16U)  # rounded; depth <= FAR (60 m): no overflow
        return image, mask * np.uint8(255), depth_mm, kps

    # -- the recipe --------------------------------------------------------------------------
    def make_pair(self, seed: int, index: int, attempt: int = 0) -> PairRecord:
        """Pair ``index`` of a build with ``seed`` (``attempt`` > 0 redraws an unusable pair)."""
        spec = self._draw(seed, index, attempt)
        posed = self.body.forward(spec["phenotypes"], spec["angles"], spec["yaw"])
        return self._compose(spec, posed.vertices, posed.keypoints)

    def make_pairs(self, seed: int, indices: list[int], batch: int = 128) -> list[tuple[int, PairRecord | Exception]]:
        """First attempts of many pairs, with the body model run in batches (same bytes as one by one
        for a given shard: the batches depend only on the indices)."""
        return list(self.iter_pairs(seed, indices, batch))

    def iter_pairs(self, seed: int, indices: list[int], batch: int = 128):
        """:meth:`make_pairs`, yielding each ``(index, record or the exception of a bad draw)`` as
        soon as it is made."""
        n_batches = max(1, -(-len(indices) // batch))
        bounds = np.linspace(0, len(indices), n_batches + 1).round().astype(int)  # equal sizes: 500 -> 4 x 125
        for b0, b1 in zip(bounds[:-1], bounds[1:]):
            specs = [self._draw(seed, i, 0) for i in indices[b0:b1]]
            posed = self.body.forward(np.concatenate([sp["phenotypes"] for sp in specs]),
                                      np.concatenate([sp["angles"] for sp in specs]),
                                      np.concatenate([sp["yaw"] for sp in specs]))
            row = 0
            for sp in specs:
                n = len(sp["times"])
                try:
                    made = self._compose(sp, posed.vertices[row:row + n], posed.keypoints[row:row + n])
                except (RetryPair, ValueError) as exc:
                    made = exc
                yield sp["index"], made
                row += n

    def _draw(self, seed: int, index: int, attempt: int) -> dict:
        """Everything drawn before the body model runs: kind, body, motion, instants."""
        s = self.s
        rng = np.random.default_rng([seed, index, attempt])
        kind = s.kinds[0] if len(s.kinds) == 1 else ("cross_view" if rng.random() < s.cross_view_fraction else "cross_pose")
        phenotypes = rng.random(6)
        clip = self.motion_bank.sample(rng) if self.motion_bank else sample_clip(rng)
        yaw = float(rng.uniform(0, 2 * np.pi))
        t1 = float(rng.uniform(0, clip_duration(clip)))
        gap = None
        if kind == "cross_pose":
            gap = float(rng.uniform(s.min_gap_s, s.max_gap_s))
            t2 = t1 - gap if (rng.random() < 0.5 and t1 - gap >= 0) else t1 + gap
            times = np.array([t1, t2])
        else:
            times = np.array([t1])
        n = len(times)
        return {"rng": rng, "seed": seed, "index": index, "kind": kind, "phenotypes": np.repeat(phenotypes[None], n, 0),
                "clip": clip, "yaw": np.full(n, yaw), "times": times, "gap": gap, "angles": clip.angles(times)}

    def _compose(self, spec: dict, verts: np.ndarray, kp3d: np.ndarray) -> PairRecord:
        """Appearance, cameras, rendering and metadata of a drawn pair whose meshes are posed."""
        s = self.s
        rng, kind, index, seed, clip, times = (spec[k] for k in ("rng", "kind", "index", "seed", "clip", "times"))
        phenotypes, yaw, gap = spec["phenotypes"][0], float(spec["yaw"][0]), spec["gap"]
        t1 = float(times[0])
        height = float(np.ptp(verts[0][:, 2]))
        motion = float(np.linalg.norm(kp3d[-1] - kp3d[0], axis=1).mean() / height) if kind == "cross_pose" else None
        if kind == "cross_pose" and motion < s.min_motion:
            raise RetryPair("poses too similar")

        texture, outfit = appearance.random_outfit_texture(rng, self.regions)
        ambient, lights = appearance.random_lighting(rng)
        all_pts = verts.reshape(-1, 3)
        cols = np.ascontiguousarray(all_pts.T)  # per-axis rows: numpy's axis-0 min/max of [N, 3] is ~25x slower
        centre = (cols.min(1) + cols.max(1)) / 2

        def draw_camera(azimuth: float, pts: np.ndarray) -> Camera:
            el = np.radians(rng.uniform(*s.elevation_deg))
            dist = rng.uniform(*s.distance_m)
            R, t = cam.look_at(cam.camera_center(centre, azimuth, el, dist), centre)
            return cam.fit_camera(R, t, pts, s.image_size, float(rng.uniform(*s.fill)))

        az1 = float(rng.uniform(0, 2 * np.pi))
        if kind == "cross_view":
            delta = np.radians(rng.uniform(s.min_azimuth_deg, s.max_azimuth_deg)) * (1 if rng.random() < 0.5 else -1)
            cams = [draw_camera(az1, verts[0]), draw_camera(az1 + delta, verts[0])]
            bgs = [self._background(rng), self._background(rng)]
            meshes, joints = [verts[0], verts[0]], [kp3d[0], kp3d[0]]
        else:
            c = draw_camera(az1, all_pts)
            cams = [c, c]
            bg = self._background(rng)
            bgs = [bg, bg]
            meshes, joints = [verts[0], verts[1]], [kp3d[0], kp3d[1]]

        surfaces = [self.body.surface(m) for m in ((meshes[0],) if kind == "cross_view" else meshes)]
        views = [(*surfaces[0], cams[0]), (*surfaces[-1], cams[1])]
        rendered = self.renderer.render(views, texture, ambient, lights)
        out = [self._finish(*rendered[i], cams[i], bgs[i][0], joints[i]) for i in range(2)]
        S = s.image_size
        frames = [int(round(t * FPS)) for t in (times if kind == "cross_pose" else [t1, t1])]
        meta = {
            "source": "synthetic", "kind": kind, "split": "train",
            "subject": f"body{index:09d}", "sequence": f"clip{index:09d}", "track": "0",
            "camera_target": "cam0", "camera_reference": "cam1" if kind == "cross_view" else "cam0",
            "frame_target": frames[0], "frame_reference": frames[1],
            "time_gap_s": round(gap, 6) if kind == "cross_pose" else None,
            # cross-pose: one camera, so no angle between two (null, not 0)
            "view_angle_deg": round(cam.view_angle_deg(cams[0], cams[1], centre), 4) if kind == "cross_view" else None,
            "azimuth_gap_deg": round(cam.azimuth_gap_deg(cams[0], cams[1], centre), 4) if kind == "cross_view" else None,
            "motion": round(motion, 6) if motion is not None else None,
            "silhouette_method": "render", "seed": seed,
            "crop_target_x0": 0.0, "crop_target_y0": 0.0, "crop_target_x1": float(S), "crop_target_y1": float(S),
            "crop_reference_x0": 0.0, "crop_reference_y0": 0.0, "crop_reference_x1": float(S), "crop_reference_y1": float(S),
            # extras (JSON only)
            "keypoints_target": out[0][3], "keypoints_reference": out[1][3], "keypoint_format": "coco17",
            "camera_target_params": cams[0].to_json(), "camera_reference_params": cams[1].to_json(),
            "joints3d_target": np.round(joints[0], 5).tolist(), "joints3d_reference": np.round(joints[1], 5).tolist(),
            "person_center": np.round(centre, 5).tolist(),
            "body": {"model": self.body.name, "phenotypes": np.round(phenotypes, 5).tolist(), "yaw": round(yaw, 5)},
            "motion_clip": {**clip.describe(), "t_target": round(float(times[0]), 5),
                            "t_reference": round(float(times[-1]), 5)},
            "appearance": outfit, "background": [bgs[0][1], bgs[1][1]],
            "lighting": {"ambient": np.round(ambient, 4).tolist(),
                         "lights": [{"direction": np.round(d, 4).tolist(), "rgb": np.round(c, 4).tolist(),
                                     "intensity": round(i, 4)} for d, c, i in lights]},
        }
        return PairRecord(out[0][0], out[1][0], out[0][1], out[1][1], meta, out[0][2], out[1][2])


class RetryPair(Exception):
    """The drawn pair is unusable (e.g. two nearly identical poses): draw again with a new attempt."""


def clip_duration(clip) -> float:
    return float(getattr(clip, "duration", 20.0))
