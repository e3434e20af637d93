"""A library of keyframed human motions and a sampler of plausible, varied clips.

Each motion is a loop of keyframes (phase in [0, 1) -> joint angles) interpolated with a periodic
Catmull-Rom spline. A clip draws a motion, a mirror flag, an amplitude and speed, a static
posture offset and smooth low-frequency noise per joint (bounded), then clamps to joint limits.
``clip.angles(t)`` is a deterministic function of time, so two instants of one clip are two
moments of one motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pairgen.synthetic.rig import DOF_INDEX, DOF_NAMES, clamp, mirror

# Relaxed standing posture (anny's rest is an A-pose: arms ~40 degrees from the body).
REST = {"l_shoulder_abd": -0.5, "r_shoulder_abd": -0.5, "l_elbow": 0.15, "r_elbow": 0.15}


def _vec(d: dict) -> np.ndarray:
    v = np.zeros(len(DOF_NAMES))
    for k, val in {**REST, **d}.items():
        v[DOF_INDEX[k]] = val
    return v


def _gait(half: list[tuple[float, dict]]) -> list[tuple[float, np.ndarray]]:
    """Keys for phase [0, 0.5) plus their left/right mirror at phase + 0.5 (a symmetric gait)."""
    keys = [(p, _vec(d)) for p, d in half]
    return keys + [(p + 0.5, mirror(v)) for p, v in keys]


def _loop(keys: list[tuple[float, dict]]) -> list[tuple[float, np.ndarray]]:
    return [(p, _vec(d)) for p, d in keys]


ARMS_DOWN = {"l_shoulder_abd": -0.5, "r_shoulder_abd": -0.5}

MOTIONS: dict[str, tuple[float, list[tuple[float, np.ndarray]]]] = {
    # name: (period in seconds, keys)
    "walk": (1.1, _gait([
        (0.0, {"l_hip_flex": 0.45, "r_hip_flex": -0.25, "l_knee": 0.1, "r_knee": 0.35, "l_ankle": -0.1,
               "r_ankle": 0.25, "l_shoulder_flex": -0.35, "r_shoulder_flex": 0.35, "l_elbow": 0.25,
               "r_elbow": 0.5, "spine_twist": -0.08}),
        (0.25, {"l_hip_flex": 0.05, "r_hip_flex": 0.35, "l_knee": 0.15, "r_knee": 1.05, "r_ankle": -0.1,
                "spine_twist": 0.0}),
    ])),
    "run": (0.7, _gait([
        (0.0, {"l_hip_flex": 0.85, "r_hip_flex": -0.4, "l_knee": 0.5, "r_knee": 0.6, "r_ankle": 0.45,
               "l_shoulder_flex": -0.6, "r_shoulder_flex": 0.7, "l_elbow": 1.4, "r_elbow": 1.6,
               "spine_flex": 0.2, "spine_twist": -0.15}),
        (0.25, {"l_hip_flex": 0.3, "r_hip_flex": 0.5, "l_knee": 0.4, "r_knee": 1.9, "spine_flex": 0.2,
                "l_elbow": 1.5, "r_elbow": 1.5}),
    ])),
    "high_knees": (0.9, _gait([
        (0.0, {"l_hip_flex": 1.5, "l_knee": 1.8, "l_ankle": 0.4, "r_shoulder_flex": 1.0, "r_elbow": 1.5,
               "l_shoulder_flex": -0.3, "l_elbow": 1.2}),
        (0.25, {"l_knee": 0.2, "r_hip_flex": 0.3, "r_knee": 0.4}),
    ])),
    "jumping_jacks": (1.0, _loop([
        (0.0, {**ARMS_DOWN}),
        (0.5, {"l_shoulder_abd": 2.2, "r_shoulder_abd": 2.2, "l_hip_abd": 0.35, "r_hip_abd": 0.35,
               "l_elbow": 0.1, "r_elbow": 0.1, "l_knee": 0.15, "r_knee": 0.15}),
    ])),
    "squat": (2.6, _loop([
        (0.0, {}),
        (0.1, {}),
        (0.5, {"l_hip_flex": 1.6, "r_hip_flex": 1.6, "l_knee": 2.0, "r_knee": 2.0, "l_ankle": -0.4,
               "r_ankle": -0.4, "spine_flex": 0.45, "l_shoulder_flex": 1.45, "r_shoulder_flex": 1.45,
               "l_shoulder_abd": 0.0, "r_shoulder_abd": 0.0}),
        (0.6, {"l_hip_flex": 1.6, "r_hip_flex": 1.6, "l_knee": 2.0, "r_knee": 2.0, "l_ankle": -0.4,
               "r_ankle": -0.4, "spine_flex": 0.45, "l_shoulder_flex": 1.45, "r_shoulder_flex": 1.45,
               "l_shoulder_abd": 0.0, "r_shoulder_abd": 0.0}),
    ])),
    "sit": (4.0, _loop([
        (0.0, {}),
        (0.4, {"l_hip_flex": 1.5, "r_hip_flex": 1.5, "l_knee": 1.55, "r_knee": 1.55, "spine_flex": 0.1,
               "l_shoulder_flex": 0.5, "r_shoulder_flex": 0.5, "l_elbow": 0.7, "r_elbow": 0.7, "neck_flex": 0.2}),
        (0.6, {"l_hip_flex": 1.5, "r_hip_flex": 1.55, "l_knee": 1.5, "r_knee": 1.6, "spine_flex": 0.0,
               "l_shoulder_flex": 0.45, "r_shoulder_flex": 0.6, "l_elbow": 0.8, "r_elbow": 1.2,
               "neck_twist": 0.4}),
    ])),
    "reach_up": (2.4, _loop([
        (0.0, {}),
        (0.3, {"r_shoulder_flex": 2.5, "r_elbow": 0.1, "spine_bend": 0.15, "l_ankle": 0.3, "r_ankle": 0.3,
               "neck_flex": -0.4}),
        (0.5, {}),
        (0.8, {"l_shoulder_flex": 2.5, "l_elbow": 0.1, "spine_bend": -0.15, "l_ankle": 0.3, "r_ankle": 0.3,
               "neck_flex": -0.4}),
    ])),
    "reach_forward": (2.2, _loop([
        (0.0, {}),
        (0.5, {"l_shoulder_flex": 1.5, "r_shoulder_flex": 1.4, "l_shoulder_abd": 0.0, "r_shoulder_abd": 0.0,
               "l_elbow": 0.2, "r_elbow": 0.3, "spine_flex": 0.5, "l_hip_flex": 0.3, "r_hip_flex": 0.3,
               "neck_flex": -0.3}),
    ])),
    "wave": (1.2, _loop([
        (0.0, {"r_shoulder_abd": 2.0, "r_elbow": 0.5, "r_shoulder_twist": -0.3, "neck_twist": -0.3}),
        (0.5, {"r_shoulder_abd": 2.0, "r_elbow": 1.3, "r_shoulder_twist": -0.3, "neck_twist": -0.3,
               "r_wrist": 0.4}),
    ])),
    "dance_arms": (1.6, _loop([
        (0.0, {"l_shoulder_abd": 2.2, "r_shoulder_abd": 0.2, "r_elbow": 1.2, "spine_bend": 0.2,
               "l_hip_abd": 0.2, "l_knee": 0.3, "r_knee": 0.1}),
        (0.5, {"r_shoulder_abd": 2.2, "l_shoulder_abd": 0.2, "l_elbow": 1.2, "spine_bend": -0.2,
               "r_hip_abd": 0.2, "r_knee": 0.3, "l_knee": 0.1}),
    ])),
    "dance_step": (1.2, _gait([
        (0.0, {"l_hip_abd": 0.45, "l_knee": 0.35, "r_knee": 0.2, "spine_bend": -0.15, "spine_twist": 0.25,
               "l_shoulder_flex": 0.9, "l_elbow": 1.3, "r_shoulder_abd": 0.6, "r_elbow": 0.8}),
        (0.25, {"l_hip_flex": 0.9, "l_knee": 1.4, "r_knee": 0.3, "spine_twist": 0.0,
                "l_shoulder_abd": 0.8, "r_shoulder_abd": 0.8, "l_elbow": 1.0, "r_elbow": 1.0}),
    ])),
    "boxing": (0.9, _gait([
        (0.0, {"l_shoulder_flex": 0.9, "r_shoulder_flex": 0.9, "l_elbow": 2.1, "r_elbow": 2.1,
               "l_shoulder_abd": -0.2, "r_shoulder_abd": -0.2, "l_knee": 0.35, "r_knee": 0.35,
               "l_hip_flex": 0.3, "r_hip_flex": 0.15, "spine_flex": 0.15}),
        (0.2, {"l_shoulder_flex": 1.55, "l_elbow": 0.15, "r_shoulder_flex": 0.9, "r_elbow": 2.1,
               "l_shoulder_abd": 0.0, "r_shoulder_abd": -0.2, "spine_twist": -0.4, "l_knee": 0.35,
               "r_knee": 0.35, "l_hip_flex": 0.3, "spine_flex": 0.15}),
    ])),
    "kick": (1.6, _loop([
        (0.0, {}),
        (0.45, {"r_hip_flex": 1.6, "r_knee": 0.2, "l_knee": 0.2, "l_shoulder_abd": 0.7, "r_shoulder_abd": 0.6,
                "spine_flex": -0.15}),
        (0.65, {"r_hip_flex": 0.6, "r_knee": 1.3, "l_shoulder_abd": 0.3, "r_shoulder_abd": 0.3}),
    ])),
    "bend_pick": (3.2, _loop([
        (0.0, {}),
        (0.5, {"spine_flex": 1.2, "l_hip_flex": 0.9, "r_hip_flex": 0.9, "l_knee": 0.45, "r_knee": 0.45,
               "l_shoulder_flex": 1.2, "r_shoulder_flex": 1.0, "l_shoulder_abd": -0.2, "r_shoulder_abd": -0.2,
               "neck_flex": -0.3}),
    ])),
    "stretch_side": (3.0, _loop([
        (0.0, {"l_shoulder_abd": 2.3, "l_elbow": 0.4, "spine_bend": -0.45, "r_hip_abd": 0.1}),
        (0.5, {"r_shoulder_abd": 2.3, "r_elbow": 0.4, "spine_bend": 0.45, "l_hip_abd": 0.1}),
    ])),
    "lunge": (3.0, _loop([
        (0.0, {}),
        (0.5, {"l_hip_flex": 1.25, "l_knee": 1.4, "r_hip_flex": -0.35, "r_knee": 1.1, "r_ankle": 0.5,
               "l_shoulder_flex": 0.3, "r_shoulder_flex": 0.3, "spine_flex": 0.1}),
    ])),
    "idle": (5.0, _loop([
        (0.0, {"l_hip_abd": 0.08, "spine_bend": 0.06, "neck_twist": 0.5}),
        (0.5, {"r_hip_abd": 0.08, "spine_bend": -0.06, "neck_twist": -0.6, "l_elbow": 0.4}),
    ])),
    "phone": (3.0, _loop([
        (0.0, {"r_shoulder_flex": 0.5, "r_elbow": 2.2, "r_shoulder_abd": -0.3, "neck_flex": 0.5,
               "l_elbow": 0.3}),
        (0.5, {"r_shoulder_flex": 0.6, "r_elbow": 2.1, "r_shoulder_abd": -0.2, "neck_flex": 0.4,
               "neck_twist": 0.3, "l_hip_abd": 0.1, "l_knee": 0.2}),
    ])),
    "throw": (1.8, _loop([
        (0.0, {}),
        (0.35, {"r_shoulder_abd": 1.5, "r_elbow": 1.6, "r_shoulder_twist": 0.8, "spine_twist": 0.5,
                "l_shoulder_flex": 1.0, "l_hip_flex": 0.5, "l_knee": 0.3}),
        (0.55, {"r_shoulder_flex": 1.6, "r_elbow": 0.3, "spine_twist": -0.5, "spine_flex": 0.3,
                "l_knee": 0.5, "l_hip_flex": 0.5, "r_hip_flex": -0.3}),
    ])),
}
MOTION_NAMES = tuple(sorted(MOTIONS))


def _catmull_rom(keys: list[tuple[float, np.ndarray]], phase: np.ndarray) -> np.ndarray:
    """Periodic Catmull-Rom through keys (phases in [0, 1)); phase [T] -> angles [T, D]."""
    ps = np.array([p for p, _ in keys])
    vs = np.stack([v for _, v in keys])
    n = len(keys)
    phase = np.mod(phase, 1.0)
    i1 = np.searchsorted(ps, phase, side="right") - 1  # key at or before
    i1 = np.mod(i1, n)
    i2 = np.mod(i1 + 1, n)
    p1 = ps[i1]
    p2 = ps[i2] + (ps[i2] <= p1)  # wrap
    ph = np.where(phase < p1, phase + 1.0, phase)
    u = ((ph - p1) / (p2 - p1))[:, None]
    a, b, c, d = vs[np.mod(i1 - 1, n)], vs[i1], vs[i2], vs[np.mod(i1 + 2, n)]
    return 0.5 * (2 * b + (-a + c) * u + (2 * a - 5 * b + 4 * c - d) * u ** 2 + (-a + 3 * b - 3 * c + d) * u ** 3)


@dataclass
class Clip:
    """One drawn performance of a motion; ``angles(t)`` gives joint angles at times t (seconds)."""

    motion: str
    mirrored: bool
    amplitude: float
    speed: float
    phase0: float
    offset: np.ndarray  # [D] static posture offset
    noise_amp: np.ndarray  # [D, K]
    noise_freq: np.ndarray  # [D, K] Hz
    noise_phase: np.ndarray  # [D, K]

    def angles(self, t: np.ndarray) -> np.ndarray:
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        period, keys = MOTIONS[self.motion]
        phase = self.phase0 + t * self.speed / period
        base = _catmull_rom(keys, phase)
        rest = _vec({})
        a = rest + self.amplitude * (base - rest)
        if self.mirrored:
            a = mirror(a)
        noise = (self.noise_amp[None] * np.sin(2 * np.pi * self.noise_freq[None] * t[:, None, None]
                                               + self.noise_phase[None])).sum(-1)
        return clamp(a + self.offset + noise)

    def describe(self) -> dict:
        return {"motion": self.motion, "mirrored": self.mirrored, "amplitude": round(self.amplitude, 4),
                "speed": round(self.speed, 4), "phase0": round(self.phase0, 4)}


def sample_clip(rng: np.random.Generator, motions: tuple[str, ...] = MOTION_NAMES) -> Clip:
    """Draw a clip: motion, mirror, amplitude 0.75-1.1, speed 0.8-1.25, noise <= 0.12 rad per joint."""
    D, K = len(DOF_NAMES), 2
    return Clip(
        motion=str(motions[int(rng.integers(len(motions)))]),
        mirrored=bool(rng.random() < 0.5),
        amplitude=float(rng.uniform(0.75, 1.1)),
        speed=float(rng.uniform(0.8, 1.25)),
        phase0=float(rng.random()),
        offset=rng.uniform(-0.08, 0.08, D),
        noise_amp=rng.uniform(0, 0.06, (D, K)),
        noise_freq=rng.uniform(0.1, 0.6, (D, K)),
        noise_phase=rng.uniform(0, 2 * np.pi, (D, K)),
    )
