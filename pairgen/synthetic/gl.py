"""A lean OpenGL 3.3 body rasteriser: one shader, persistent buffers, no multisampling.

Why not pyrender's scene renderer: per call it rebuilds scene, mesh and texture objects, runs a
PBR shader and resolves a 4x multisampled framebuffer; on a CPU (Mesa llvmpipe) that is most
of the cost of a pair. Here the topology and UVs are uploaded once, each view updates positions
and normals with ``glBufferSubData``, the texture with ``glTexSubImage2D``, and reads colour and
depth back. The context comes from pyrender's platform layer (OSMesa on CPU, EGL on a GPU).

Projection follows OpenCV intrinsics exactly (pixel centres at integer coordinates); depth is
linearised to metres along the optical axis; background depth is 0.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from pairgen.synthetic.render import Camera, configure_gl

NEAR, FAR = 0.1, 60.0
MAX_LIGHTS = 4

_VERTEX = """
#version 330 core
layout(location = 0) in vec3 pos;
layout(location = 1) in vec3 nrm;
layout(location = 2) in vec2 uv;
uniform mat3 R;
uniform vec3 t;
uniform vec4 intr;      // fx, fy, cx, cy (OpenCV)
uniform vec2 size;      // width, height
uniform vec2 nearfar;
out vec3 v_n;
out vec2 v_uv;
void main() {
    vec3 pc = R * pos + t;
    float n = nearfar.x, f = nearfar.y;
    float xc = 2.0 * intr.x / size.x * pc.x + (2.0 * (intr.z + 0.5) / size.x - 1.0) * pc.z;
    float yc = -2.0 * intr.y / size.y * pc.y + (1.0 - 2.0 * (intr.w + 0.5) / size.y) * pc.z;
    float zc = (f + n) / (f - n) * pc.z - 2.0 * f * n / (f - n);
    gl_Position = vec4(xc, yc, zc, pc.z);
    v_n = nrm;
    v_uv = uv;
}
"""

_FRAGMENT = """
#version 330 core
in vec3 v_n;
in vec2 v_uv;
uniform sampler2D tex;
uniform vec3 ambient;
uniform int n_lights;
uniform vec3 light_dir[4];   // direction the light travels (world)
uniform vec3 light_rgb[4];   // colour * intensity / pi (Lambert)
out vec4 colour;
void main() {
    vec3 n = normalize(v_n);
    vec3 albedo = texture(tex, v_uv).rgb;
    vec3 light = ambient;
    for (int i = 0; i < n_lights; ++i) light += light_rgb[i] * max(dot(n, -light_dir[i]), 0.0);
    colour = vec4(clamp(albedo * light, 0.0, 1.0), 1.0);
}
"""


def _make_platform(width: int, height: int):
    platform = configure_gl()
    if platform == "egl":
        from pyrender.platforms import egl

        device = egl.get_device_by_index(int(os.environ.get("EGL_DEVICE_ID", "0")))
        return egl.EGLPlatform(width, height, device=device)
    from pyrender.platforms.osmesa import OSMesaPlatform

    return OSMesaPlatform(width, height)


class GLBodyRenderer:
    """Renders (vertices, normals, camera) views of one textured mesh topology."""

    def __init__(self, size: int, faces: np.ndarray, uv: np.ndarray, texture_size: int = 256,
                 height: int | None = None):
        """``size`` is the image width (and height, unless ``height`` is given)."""
        self.size = self.width = int(size)
        self.height = int(height or size)
        self.texture_size = int(texture_size)
        self.n_vertices = len(uv)
        self.n_indices = int(faces.size)
        self.platform = _make_platform(self.width, self.height)
        self.platform.init_context()
        self.platform.make_current()
        from OpenGL import GL as gl

        self.gl = gl
        self.program = self._program()
        self.vao = gl.glGenVertexArrays(1)
        gl.glBindVertexArray(self.vao)
        self.vbo_pos, self.vbo_nrm, self.vbo_uv, self.ebo = gl.glGenBuffers(4)
        nbytes = self.n_vertices * 3 * 4
        for loc, vbo in ((0, self.vbo_pos), (1, self.vbo_nrm)):
            gl.glBindBuffer(gl.GL_ARRAY_BUFFER, vbo)
            gl.glBufferData(gl.GL_ARRAY_BUFFER, nbytes, None, gl.GL_DYNAMIC_DRAW)
            gl.glEnableVertexAttribArray(loc)
            gl.glVertexAttribPointer(loc, 3, gl.GL_FLOAT, gl.GL_FALSE, 0, ctypes.c_void_p(0))
        gl.glBindBuffer(gl.GL_ARRAY_BUFFER, self.vbo_uv)
        uv = np.ascontiguousarray(uv, dtype=np.float32)
        gl.glBufferData(gl.GL_ARRAY_BUFFER, uv.nbytes, uv, gl.GL_STATIC_DRAW)
        gl.glEnableVertexAttribArray(2)
        gl.glVertexAttribPointer(2, 2, gl.GL_FLOAT, gl.GL_FALSE, 0, ctypes.c_void_p(0))
        idx = np.ascontiguousarray(faces, dtype=np.uint32).reshape(-1)
        gl.glBindBuffer(gl.GL_ELEMENT_ARRAY_BUFFER, self.ebo)
        gl.glBufferData(gl.GL_ELEMENT_ARRAY_BUFFER, idx.nbytes, idx, gl.GL_STATIC_DRAW)

        self.tex = gl.glGenTextures(1)
        gl.glBindTexture(gl.GL_TEXTURE_2D, self.tex)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MIN_FILTER, gl.GL_LINEAR)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MAG_FILTER, gl.GL_LINEAR)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_WRAP_S, gl.GL_CLAMP_TO_EDGE)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_WRAP_T, gl.GL_CLAMP_TO_EDGE)
        gl.glPixelStorei(gl.GL_UNPACK_ALIGNMENT, 1)
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
        gl.glTexImage2D(gl.GL_TEXTURE_2D, 0, gl.GL_RGB8, self.texture_size, self.texture_size, 0,
                        gl.GL_RGB, gl.GL_UNSIGNED_BYTE, None)

        self.fbo = gl.glGenFramebuffers(1)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        self.rb_colour, self.rb_depth = gl.glGenRenderbuffers(2)
        gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, self.rb_colour)
        gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, gl.GL_RGBA8, self.width, self.height)
        gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_RENDERBUFFER, self.rb_colour)
        gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, self.rb_depth)
        gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, gl.GL_DEPTH_COMPONENT24, self.width, self.height)
        gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, gl.GL_DEPTH_ATTACHMENT, gl.GL_RENDERBUFFER, self.rb_depth)
        if gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER) != gl.GL_FRAMEBUFFER_COMPLETE:
            raise RuntimeError("OpenGL framebuffer incomplete")
        gl.glViewport(0, 0, self.width, self.height)
        gl.glEnable(gl.GL_DEPTH_TEST)
        gl.glDisable(gl.GL_CULL_FACE)
        gl.glClearColor(0.0, 0.0, 0.0, 0.0)
        self._uniforms = {n: gl.glGetUniformLocation(self.program, n) for n in (
            "R", "t", "intr", "size", "nearfar", "tex", "ambient", "n_lights", "light_dir", "light_rgb")}
        gl.glUseProgram(self.program)
        gl.glUniform1i(self._uniforms["tex"], 0)
        gl.glUniform2f(self._uniforms["size"], float(self.width), float(self.height))
        gl.glUniform2f(self._uniforms["nearfar"], NEAR, FAR)

    def _program(self):
        gl = self.gl

        def compile_(src, kind):
            sh = gl.glCreateShader(kind)
            gl.glShaderSource(sh, src)
            gl.glCompileShader(sh)
            if not gl.glGetShaderiv(sh, gl.GL_COMPILE_STATUS):
                raise RuntimeError(gl.glGetShaderInfoLog(sh).decode())
            return sh

        prog = gl.glCreateProgram()
        for src, kind in ((_VERTEX, gl.GL_VERTEX_SHADER), (_FRAGMENT, gl.GL_FRAGMENT_SHADER)):
            gl.glAttachShader(prog, compile_(src, kind))
        gl.glLinkProgram(prog)
        if not gl.glGetProgramiv(prog, gl.GL_LINK_STATUS):
            raise RuntimeError(gl.glGetProgramInfoLog(prog).decode())
        return prog

    def render(self, views, texture: np.ndarray, ambient, lights) -> list[tuple[np.ndarray, np.ndarray]]:
        """Same contract as :meth:`pairgen.synthetic.render.BodyRenderer.render`."""
        gl = self.gl
        self.platform.make_current()
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        gl.glUseProgram(self.program)
        gl.glBindVertexArray(self.vao)
        gl.glActiveTexture(gl.GL_TEXTURE0)
        gl.glBindTexture(gl.GL_TEXTURE_2D, self.tex)
        if texture.shape != (self.texture_size, self.texture_size, 3):
            raise ValueError(f"texture must be {self.texture_size}x{self.texture_size}x3")
        # Texture rows are painted top row = v 1 (as pyrender uploads them): upload bottom row first.
        tex = np.ascontiguousarray(texture[::-1], dtype=np.uint8)
        gl.glTexSubImage2D(gl.GL_TEXTURE_2D, 0, 0, 0, self.texture_size, self.texture_size, gl.GL_RGB,
                           gl.GL_UNSIGNED_BYTE, tex.ctypes.data_as(ctypes.c_void_p))
        lights = list(lights)[:MAX_LIGHTS]
        u = self._uniforms
        gl.glUniform3f(u["ambient"], *(float(a) for a in ambient))
        gl.glUniform1i(u["n_lights"], len(lights))
        if lights:
            dirs = np.array([d / np.linalg.norm(d) for d, _, _ in lights], np.float32)
            rgbs = np.array([np.asarray(c) * i / np.pi for _, c, i in lights], np.float32)
            gl.glUniform3fv(u["light_dir"], len(lights), dirs)
            gl.glUniform3fv(u["light_rgb"], len(lights), rgbs)
        results, last = [], None
        for vertices, normals, camera in views:
            if vertices is not last:
                for vbo, arr in ((self.vbo_pos, vertices), (self.vbo_nrm, normals)):
                    a = np.ascontiguousarray(arr, dtype=np.float32)
                    if a.shape != (self.n_vertices, 3):
                        raise ValueError(f"expected {self.n_vertices}x3 vertex data, got {a.shape}")
                    gl.glBindBuffer(gl.GL_ARRAY_BUFFER, vbo)
                    gl.glBufferSubData(gl.GL_ARRAY_BUFFER, 0, a.nbytes, a.ctypes.data_as(ctypes.c_void_p))
                last = vertices
            results.append(self._draw(camera))
        return results

    def _draw(self, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
        gl = self.gl
        u = self._uniforms
        gl.glUniformMatrix3fv(u["R"], 1, gl.GL_TRUE, np.asarray(camera.R, np.float32))
        gl.glUniform3f(u["t"], *(float(x) for x in camera.t))
        gl.glUniform4f(u["intr"], float(camera.fx), float(camera.fy), float(camera.cx), float(camera.cy))
        gl.glClear(gl.GL_COLOR_BUFFER_BIT | gl.GL_DEPTH_BUFFER_BIT)
        gl.glDrawElements(gl.GL_TRIANGLES, self.n_indices, gl.GL_UNSIGNED_INT, ctypes.c_void_p(0))
        W, H = self.width, self.height
        colour = np.empty((H, W, 3), np.uint8)
        d = np.empty((H, W), np.float32)
        gl.glReadPixels(0, 0, W, H, gl.GL_RGB, gl.GL_UNSIGNED_BYTE, colour.ctypes.data_as(ctypes.c_void_p))
        gl.glReadPixels(0, 0, W, H, gl.GL_DEPTH_COMPONENT, gl.GL_FLOAT, d.ctypes.data_as(ctypes.c_void_p))
        colour = colour[::-1].copy()
        d = d[::-1]
        z_ndc = 2.0 * d - 1.0
        depth = (2.0 * FAR * NEAR / ((FAR + NEAR) - z_ndc * (FAR - NEAR))).astype(np.float32)
        depth[d >= 1.0] = 0.0
        return colour, depth

    def close(self) -> None:
        self.platform.make_current()
        self.platform.delete_context()
