"""Off-screen rasteriser for textured bodies: colour, metric depth and an exact silhouette.

pyrender needs ``PYOPENGL_PLATFORM`` before OpenGL is imported: ``osmesa`` on CPU machines,
``egl`` where a GPU is present. :func:`configure_gl` picks it (``CROCOMAN_GL`` overrides) and
patches numpy-2's removed ``np.infty`` that pyrender still references.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


def configure_gl() -> str:
    """Select the OpenGL platform before pyrender is imported; returns it."""
    platform = os.environ.get("CROCOMAN_GL") or os.environ.get("PYOPENGL_PLATFORM") or "osmesa"
    os.environ["PYOPENGL_PLATFORM"] = platform
    if not hasattr(np, "infty"):
        np.infty = np.inf  # pyrender/mesh.py still uses it (numpy 2 removed the alias)
    return platform


@dataclass
class Camera:
    """Pinhole camera, OpenCV convention: x_cam = R @ x_world + t, pixels u = fx*x/z + cx."""

    R: np.ndarray  # [3, 3] world-to-camera rotation
    t: np.ndarray  # [3]
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        return -self.R.T @ self.t

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, 3] world points -> ([N, 2] pixels, [N] depth along the optical axis)."""
        pc = points @ self.R.T + self.t
        z = pc[:, 2]
        uv = np.stack([self.fx * pc[:, 0] / z + self.cx, self.fy * pc[:, 1] / z + self.cy], axis=1)
        return uv, z

    def to_json(self) -> dict:
        return {"R": self.R.tolist(), "t": self.t.tolist(), "K": self.K.tolist(),
                "width": self.width, "height": self.height}


class BodyRenderer:
    """pyrender-based reference renderer (PBR shading, 4x MSAA): the tests check the production
    renderer (:mod:`pairgen.synthetic.gl`) against it; ~4x slower on a CPU.

    ``mesh_faces``/``uv`` describe the UV-split topology once; each call passes new vertex
    positions and normals (already split per UV corner), a texture and the lights.
    """

    def __init__(self, size: int, faces: np.ndarray, uv: np.ndarray):
        configure_gl()
        import pyrender

        self._pyrender = pyrender
        self.size = int(size)
        self.faces = np.ascontiguousarray(faces, dtype=np.uint32)
        self.uv = np.ascontiguousarray(uv, dtype=np.float32)
        self.renderer = pyrender.OffscreenRenderer(self.size, self.size)

    def render(
        self,
        views: list[tuple[np.ndarray, np.ndarray, Camera]],
        texture: np.ndarray,
        ambient: np.ndarray,
        lights: list[tuple[np.ndarray, np.ndarray, float]],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Render each (vertices, normals, camera) view of one textured body under one lighting.

        Returns per view (colour [S,S,3] uint8 on black, depth [S,S] float32 metres, 0 = background).
        Views passing the same vertex array object share one mesh upload; the texture is uploaded
        once. ``lights`` holds (direction the light travels in world coordinates, rgb in [0,1],
        intensity).
        """
        pr = self._pyrender
        tex = pr.Texture(source=texture, source_channels="RGB",
                         sampler=pr.Sampler(magFilter=9729, minFilter=9729))  # GL_LINEAR
        material = pr.MetallicRoughnessMaterial(baseColorTexture=tex, metallicFactor=0.0,
                                                roughnessFactor=0.85, baseColorFactor=(1.0, 1.0, 1.0, 1.0))
        scene = pr.Scene(bg_color=(0.0, 0.0, 0.0, 0.0), ambient_light=tuple(float(a) for a in ambient))
        for direction, color, intensity in lights:
            scene.add(pr.DirectionalLight(color=tuple(float(c) for c in color), intensity=float(intensity)),
                      pose=_look_along(np.asarray(direction, dtype=np.float64)))
        results = []
        mesh_node, mesh_src, cam_node = None, None, None
        for vertices, normals, camera in views:
            if vertices is not mesh_src:
                if mesh_node is not None:
                    scene.remove_node(mesh_node)
                prim = pr.Primitive(positions=vertices.astype(np.float32), normals=normals.astype(np.float32),
                                    texcoord_0=self.uv, indices=self.faces, material=material, mode=4)
                mesh_node = scene.add(pr.Mesh(primitives=[prim]))
                mesh_src = vertices
            if cam_node is not None:
                scene.remove_node(cam_node)
            cam = pr.IntrinsicsCamera(fx=camera.fx, fy=camera.fy, cx=camera.cx, cy=camera.cy,
                                      znear=0.05, zfar=100.0)
            cam_node = scene.add(cam, pose=_opencv_to_gl_pose(camera))
            color, depth = self.renderer.render(scene)
            results.append((color[..., :3].copy(), depth.astype(np.float32)))
        return results

    def close(self) -> None:
        self.renderer.delete()


def _look_along(direction: np.ndarray) -> np.ndarray:
    """4x4 pose whose -Z axis points along ``direction`` (pyrender lights shine along -Z)."""
    d = direction / np.linalg.norm(direction)
    z = -d
    up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.95 else np.array([0.0, 1.0, 0.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = x, y, z
    return pose


def _opencv_to_gl_pose(camera: Camera) -> np.ndarray:
    """Camera-to-world pose in OpenGL convention (camera looks along -Z, +Y up) from OpenCV R, t."""
    c2w = np.eye(4)
    c2w[:3, :3] = camera.R.T @ np.diag([1.0, -1.0, -1.0])
    c2w[:3, 3] = camera.center
    return c2w
