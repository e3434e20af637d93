"""Compiled per-vertex passes of the synthetic source: skinning, sparse regression, render normals.

numpy spends most of these passes on temporaries and fancy-indexing; here each is one loop
compiled for the CPU by warp (which anny already depends on; JIT-compiled once, cached on disk
under ``WARP_CACHE_PATH``). Sums run in the same order as the reference numpy/torch code, so
:class:`SplitSurface` gives the same bits as :func:`pairgen.synthetic.body.vertex_normals` and
:class:`Skinning` the same bits as anny's own skinning kernel (before the yaw). Where warp cannot compile, the classes
fall back to numpy (:func:`kernels` returns None there).
"""

from __future__ import annotations

import numpy as np

_K = None  # namespace of compiled kernels, or False when warp is unusable here


class _Kernels:
    pass


def kernels():
    """The compiled kernels (compiled on first call), or None where warp cannot run."""
    global _K
    if _K is None:
        try:
            _K = _compile()
        except Exception:  # no warp, or no CPU code generation on this platform  # noqa: BLE001
            _K = False
    return _K or None


def _compile() -> _Kernels:
    from pairgen.synthetic.body import _quiet_warp

    _quiet_warp()
    import warp as wp

    wp.init()
    k = _Kernels()
    k.wp = wp

    @wp.kernel
    def face_normals(v: wp.array(dtype=wp.vec3), faces: wp.array(dtype=wp.vec3i), out: wp.array(dtype=wp.vec3)):
        f = wp.tid()
        c = faces[f]
        p0 = v[c[0]]
        a = v[c[1]] - p0
        b = v[c[2]] - p0
        out[f] = wp.vec3(a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])

    @wp.kernel
    def split_vertices(v: wp.array(dtype=wp.vec3), fn: wp.array(dtype=wp.vec3), split: wp.array(dtype=wp.int32),
                       start: wp.array(dtype=wp.int32), adjacent: wp.array(dtype=wp.int32),
                       positions: wp.array(dtype=wp.vec3), normals: wp.array(dtype=wp.vec3)):
        s = wp.tid()
        m = split[s]
        n = wp.vec3(0.0, 0.0, 0.0)
        for j in range(start[m], start[m + 1]):
            n += fn[adjacent[j]]
        positions[s] = v[m]
        normals[s] = n / (wp.sqrt(wp.dot(n, n)) + 1e-12)

    @wp.kernel
    def skin_yaw(rest: wp.array2d(dtype=wp.vec3), body: wp.array(dtype=wp.int32),
                 transforms: wp.array2d(dtype=wp.mat44), yaw: wp.array(dtype=wp.mat33),
                 start: wp.array(dtype=wp.int32), bone: wp.array(dtype=wp.int32), weight: wp.array(dtype=wp.float32),
                 out: wp.array2d(dtype=wp.vec3)):
        v = wp.tid()  # one thread per vertex, looping over the instances (far fewer threads)
        j0 = start[v]
        j1 = start[v + 1]
        for b in range(body.shape[0]):
            p = rest[body[b], v]
            r = wp.vec3(0.0, 0.0, 0.0)
            for j in range(j0, j1):
                r += weight[j] * wp.transform_point(transforms[b, bone[j]], p)
            out[b, v] = yaw[b] * r

    @wp.kernel
    def regress(v: wp.array2d(dtype=wp.vec3), start: wp.array(dtype=wp.int32), index: wp.array(dtype=wp.int32),
                weight: wp.array(dtype=wp.float32), out: wp.array2d(dtype=wp.vec3)):
        b, r = wp.tid()
        acc = wp.vec3(0.0, 0.0, 0.0)
        for j in range(start[r], start[r + 1]):
            acc += weight[j] * v[b, index[j]]
        out[b, r] = acc

    k.face_normals, k.split_vertices, k.skin_yaw, k.regress = face_normals, split_vertices, skin_yaw, regress
    wp.load_module(device="cpu")  # compile now: a broken toolchain falls back here, not mid-build
    return k


def _csr(mask: np.ndarray, columns: np.ndarray, values: np.ndarray):
    """(start [R+1], column [nnz], value [nnz]) of the entries where ``mask`` [R, K] holds, row by
    row in slot order (int32, int32, float32: what the kernels index with)."""
    start = np.zeros(len(mask) + 1, np.int32)
    np.cumsum(mask.sum(1), out=start[1:])
    return start, columns[mask].astype(np.int32), values[mask].astype(np.float32)


def _arr(k, a, dtype):
    return k.wp.array(a, dtype=dtype, device="cpu", copy=False)


class SplitSurface:
    """``surface(vertices [V, 3]) -> (positions [Vs, 3], normals [Vs, 3])`` float32 for one topology:
    ``faces`` [F, 3] indices into the V mesh vertices, ``split_index`` [Vs] the mesh vertex of each
    render vertex. Equal to ``(vertices[split_index], vertex_normals(vertices, faces)[split_index])``:
    face normals, then per split vertex the sum of its vertex's adjacent face normals (in face
    order, as the sparse product sums them), normalised.
    """

    def __init__(self, faces: np.ndarray, split_index: np.ndarray, n_vertices: int, compiled: bool = True):
        self.faces = np.ascontiguousarray(faces, np.int64)
        self.split_index = np.ascontiguousarray(split_index, np.int64)
        self.n_vertices = int(n_vertices)
        self._k = kernels() if compiled else None
        if self._k is None:
            return
        wp = self._k.wp
        flat = self.faces.reshape(-1)
        order = np.argsort(flat, kind="stable")  # corners grouped by vertex, faces in increasing order
        start = np.zeros(self.n_vertices + 1, np.int32)
        np.cumsum(np.bincount(flat, minlength=self.n_vertices), out=start[1:])
        self._faces = wp.array(self.faces.astype(np.int32), dtype=wp.vec3i, device="cpu")
        self._split = wp.array(self.split_index.astype(np.int32), dtype=wp.int32, device="cpu")
        self._start = wp.array(start, dtype=wp.int32, device="cpu")
        self._adjacent = wp.array((order // 3).astype(np.int32), dtype=wp.int32, device="cpu")
        self._fn = wp.empty(len(self.faces), dtype=wp.vec3, device="cpu")

    @property
    def compiled(self) -> bool:
        return self._k is not None

    def __call__(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = np.ascontiguousarray(vertices, np.float32)
        if v.shape != (self.n_vertices, 3):
            raise ValueError(f"expected {self.n_vertices}x3 vertices, got {v.shape}")
        k = self._k
        if k is None:
            from pairgen.synthetic.body import vertex_normals

            return v[self.split_index], vertex_normals(v, self.faces, self.split_index)
        wp = k.wp
        positions = np.empty((len(self.split_index), 3), np.float32)
        normals = np.empty_like(positions)
        vw = _arr(k, v, wp.vec3)
        wp.launch(k.face_normals, dim=len(self.faces), inputs=[vw, self._faces, self._fn], device="cpu")
        wp.launch(k.split_vertices, dim=len(self.split_index),
                  inputs=[vw, self._fn, self._split, self._start, self._adjacent,
                          _arr(k, positions, wp.vec3), _arr(k, normals, wp.vec3)], device="cpu")
        return positions, normals


class Skinning:
    """Linear blend skinning with sparse weights, then a per-instance rotation:
    ``out[b, v] = yaw[b] @ sum_j w[v, j] * (T[b, bone[v, j]] @ [rest[body[b], v], 1])[:3]``.

    ``weights``/``bones`` [V, K]: each vertex's bone weights and indices (zero weights are skipped;
    the others are summed in slot order, as anny's dense-slot kernel sums them). ``rest`` holds one
    shape per distinct body; ``body`` [B] picks each instance's shape, so a body posed twice is
    shaped once.
    """

    def __init__(self, weights: np.ndarray, bones: np.ndarray):
        w = np.asarray(weights, np.float32)
        b = np.asarray(bones, np.int64)
        self.slot_weights, self.slot_bones = w, b
        self.n_vertices = len(w)
        self.start, self.bone, self.weight = _csr(w != 0, b, w)
        self._k = kernels()

    def __call__(self, rest: np.ndarray, body: np.ndarray, transforms: np.ndarray, yaw: np.ndarray) -> np.ndarray:
        """rest [U, V, 3], body [B] in 0..U-1, transforms [B, J, 4, 4], yaw [B, 3, 3] -> [B, V, 3] float32."""
        rest = np.ascontiguousarray(rest, np.float32)
        transforms = np.ascontiguousarray(transforms, np.float32)
        yaw = np.ascontiguousarray(yaw, np.float32)
        body = np.ascontiguousarray(body, np.int32)
        B, V = len(body), self.n_vertices
        k = self._k
        if k is None:  # dense slots (zero weights included): same sums, more work
            p = np.concatenate([rest, np.ones((*rest.shape[:2], 1), np.float32)], 2)
            out = np.stack([np.einsum("vk,vkij,vj->vi", self.slot_weights, transforms[i][self.slot_bones][:, :, :3],
                                      p[body[i]]) for i in range(B)])
            return (out @ yaw.transpose(0, 2, 1)).astype(np.float32)
        wp = k.wp
        out = np.empty((B, V, 3), np.float32)
        wp.launch(k.skin_yaw, dim=V, device="cpu", inputs=[
            _arr(k, rest, wp.vec3), _arr(k, body, wp.int32), _arr(k, transforms, wp.mat44), _arr(k, yaw, wp.mat33),
            _arr(k, self.start, wp.int32), _arr(k, self.bone, wp.int32), _arr(k, self.weight, wp.float32),
            _arr(k, out, wp.vec3)])
        return out


class SparseRegressor:
    """``regressor(vertices [B, V, 3]) -> [B, R, 3]``: rows of a [R, V] weight matrix applied to
    every instance, visiting only each row's non-zero weights (in vertex order)."""

    def __init__(self, weights: np.ndarray):
        w = np.asarray(weights, np.float32)
        self.dense = w
        self.start, self.index, self.weight = _csr(w != 0, np.broadcast_to(np.arange(w.shape[1]), w.shape), w)
        self._k = kernels()

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(vertices, np.float32)
        k = self._k
        if k is None:
            return np.einsum("rv,bvd->brd", self.dense, v)
        wp = k.wp
        out = np.empty((len(v), len(self.dense), 3), np.float32)
        wp.launch(k.regress, dim=(len(v), len(self.dense)), device="cpu", inputs=[
            _arr(k, v, wp.vec3), _arr(k, self.start, wp.int32), _arr(k, self.index, wp.int32),
            _arr(k, self.weight, wp.float32), _arr(k, out, wp.vec3)])
        return out
