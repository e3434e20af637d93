"""Restricted unpickling of dataset and body-model files that pairgen did not write.

A pickle is a program: ``pickle.load`` imports and calls whatever the file names, so a crafted
keypoints or model file runs code. :func:`restricted_load` unpickles with an exact allow list of globals and
refuses every other one with a one-line :class:`RefusedPickle` naming the file and the global:

- always: numpy arrays, dtypes and scalars (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``,
  ``_frombuffer``; the ``numpy.core`` spelling of numpy 1.x pickles and the ``numpy._core`` one
  of numpy 2.x), ``collections.OrderedDict``, ``set``, ``frozenset``, ``complex``, ``bytearray``,
  and ``_codecs.encode`` for latin-1 only (how protocol-2 pickles written by Python 3 store bytes);
- ``allow_sparse``: scipy CSC/CSR matrices (``scipy.sparse.csc`` / ``scipy.sparse._csc`` and the
  csr spellings), rebuilt from their index arrays by their constructor;
- ``allow_chumpy``: the chumpy objects of the older official SMPL / MANO releases. chumpy need
  not be installed: each such object is captured by a stand-in (its pickled ``__dict__``) and,
  once the file is read, replaced by the numpy array it evaluates to (``Ch`` -> its ``x``;
  ``Select``, ``transpose``, ``Reshape``, ``add``, ``subtract``, ``multiply``, ``dot`` and
  ``MatVecMult`` are evaluated on their operands as chumpy's ``compute_r`` does).

Names are matched exactly (module and attribute), never by module prefix and never through
dotted attribute paths, so e.g. ``numpy.load`` or ``numpy.testing...`` stay out of reach.

:func:`load_body_model_data` reads an SMPL / MANO model file (``.pkl`` through :func:`restricted_load` with
sparse matrices and chumpy allowed, ``.npz`` with ``allow_pickle=False``) into a dict of plain
numpy arrays, and :func:`body_model_struct` wraps it for smplx's ``data_struct=`` argument, so
smplx never unpickles the file itself.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

PLAIN = "only numpy arrays and plain data are allowed"
MODEL = "only numpy arrays, plain data, scipy sparse matrices and chumpy arrays are allowed"


class RefusedPickle(pickle.UnpicklingError, ValueError):
    """A file that would need more than arrays and plain data to unpickle (one-line message)."""


# -- what may be referenced -------------------------------------------------------------------------

def _numpy_attr(submodule: str, name: str) -> Callable[[], Any]:
    """numpy's private pickle helpers live in numpy._core (2.x) or numpy.core (1.x)."""

    def resolve():
        import importlib

        try:
            mod = importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:  # numpy 1.x
            mod = importlib.import_module(f"numpy.core.{submodule}")
        return getattr(mod, name)

    return resolve


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles of bytes use it: str -> bytes in latin-1, nothing else."""
    if type(obj) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode is allowed only to turn a str into latin-1 bytes")
    return obj.encode("latin-1")


_PLAIN_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("builtins", "complex"): lambda: complex,
    ("builtins", "bytearray"): lambda: bytearray,
}
for _core in ("numpy.core", "numpy._core"):
    _PLAIN_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
    _PLAIN_GLOBALS[(f"{_core}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")
    _PLAIN_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")


class _StandIn:
    """A captured object of a class that must not be imported: its pickled state, evaluated later."""

    kind = ""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.kind}: unexpected pickled state ({type(state).__name__})")
        object.__setattr__(self, "state", state)


def _stand_in(kind: str) -> type:
    return type(kind.rsplit(".", 1)[1], (_StandIn,), {"kind": kind, "__module__": __name__})


def _safe_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` of protocol 0/1 pickles, only for the stand-ins: ``object.__new__``."""
    if not (isinstance(cls, type) and issubclass(cls, _StandIn) and base is object and state is None):
        raise pickle.UnpicklingError("copyreg._reconstructor is allowed only for sparse matrices and chumpy objects")
    return object.__new__(cls)


# scipy < 1.8 pickles name scipy.sparse.csc / .csr, later ones scipy.sparse._csc / ._csr (+ the *_array classes)
SPARSE_CLASSES = [(f"scipy.sparse.{mod}", f"{fmt}_matrix") for fmt in ("csc", "csr") for mod in (fmt, f"_{fmt}")]
SPARSE_CLASSES += [(f"scipy.sparse._{fmt}", f"{fmt}_array") for fmt in ("csc", "csr")]
CHUMPY_CLASSES = ("chumpy.ch.Ch", "chumpy.ch.MatVecMult", "chumpy.reordering.Select", "chumpy.reordering.transpose",
                  "chumpy.reordering.Reshape", "chumpy.ch_ops.add", "chumpy.ch_ops.subtract",
                  "chumpy.ch_ops.multiply", "chumpy.ch_ops.dot")
_SPARSE_STAND_INS = {key: _stand_in(f"{key[0]}.{key[1]}") for key in SPARSE_CLASSES}
_CHUMPY_STAND_INS = {tuple(k.rsplit(".", 1)): _stand_in(k) for k in CHUMPY_CLASSES}
_RECONSTRUCTOR = {("copyreg", "_reconstructor"): lambda: _safe_reconstructor, ("builtins", "object"): lambda: object}


def allowed_globals(*, allow_sparse: bool = False, allow_chumpy: bool = False) -> list[str]:
    """The exact ``module.name`` globals :func:`restricted_load` accepts with these options (documentation, tests)."""
    names = {f"{m}.{n}" for m, n in _PLAIN_GLOBALS}
    if allow_sparse:
        names |= {f"{m}.{n}" for m, n in SPARSE_CLASSES}
    if allow_chumpy:
        names |= set(CHUMPY_CLASSES)
    if allow_sparse or allow_chumpy:
        names |= {f"{m}.{n}" for m, n in _RECONSTRUCTOR}
    return sorted(names)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, label: str, encoding: str, allow_sparse: bool, allow_chumpy: bool):
        super().__init__(file, encoding=encoding)
        self._label = label
        self._allowed: dict[tuple[str, str], Callable[[], Any]] = dict(_PLAIN_GLOBALS)
        if allow_sparse:
            self._allowed.update({k: (lambda c=c: c) for k, c in _SPARSE_STAND_INS.items()})
        if allow_chumpy:
            self._allowed.update({k: (lambda c=c: c) for k, c in _CHUMPY_STAND_INS.items()})
        if allow_sparse or allow_chumpy:
            self._allowed.update(_RECONSTRUCTOR)
        self._why = MODEL if (allow_sparse or allow_chumpy) else PLAIN

    def find_class(self, module: str, name: str):
        key = (module, name)
        # Python 2 pickles spell builtins "__builtin__", copyreg "copy_reg" (what pickle's fix_imports maps)
        key = _compat_pickle.NAME_MAPPING.get(key, key)
        key = (_compat_pickle.IMPORT_MAPPING.get(key[0], key[0]), key[1])
        resolve = self._allowed.get(key)
        if resolve is None:
            raise RefusedPickle(f"{self._label}: refused to load: it references {module}.{name} ({self._why})")
        return resolve()

    def persistent_load(self, pid):
        raise RefusedPickle(f"{self._label}: refused to load: it references a persistent id ({self._why})")


# -- evaluation of the stand-ins ---------------------------------------------------------------------

def _sparse_matrix(obj: _StandIn):
    import scipy.sparse

    s = obj.state
    shape = s.get("_shape", s.get("shape"))
    fmt, kind = type(obj).__name__.split("_")
    cls = getattr(scipy.sparse, f"{fmt}_{kind}")
    arrays = [np.asarray(s[k]) for k in ("data", "indices", "indptr")]
    if any(a.dtype == object for a in arrays) or shape is None:
        raise ValueError(f"malformed {fmt} sparse matrix")
    return cls(tuple(arrays), shape=tuple(int(n) for n in shape))


def _dense(x) -> np.ndarray:
    if hasattr(x, "toarray") and "scipy.sparse" in type(x).__module__:
        return x.toarray()
    return np.asarray(x)


def _chumpy_value(obj: _StandIn, memo: dict[int, Any], active: set[int]) -> np.ndarray:
    if id(obj) in memo:
        return memo[id(obj)]
    if id(obj) in active:
        raise ValueError(f"chumpy {obj.kind} refers to itself")
    active.add(id(obj))
    s = obj.state

    def v(key):
        if key not in s:
            raise ValueError(f"chumpy {obj.kind} has no '{key}'")
        return _value(s[key], memo, active)

    name = obj.kind.rsplit(".", 1)[1]
    if name == "Ch":
        out = _dense(v("x"))
    elif name == "Select":
        out = _dense(v("a")).ravel()[np.asarray(v("idxs"))]
        if "preferred_shape" in s:
            out = out.reshape(tuple(v("preferred_shape")))
    elif name == "transpose":
        axes = _value(s.get("axes"), memo, active)
        out = np.ascontiguousarray(np.transpose(_dense(v("a")), None if axes is None else tuple(axes)))
    elif name == "Reshape":
        out = _dense(v("a")).reshape(v("newshape"))
    elif name == "MatVecMult":
        mtx, vec = v("mtx"), _dense(v("vec"))
        if "scipy.sparse" not in type(mtx).__module__:
            mtx = np.asarray(mtx)
        out = np.asarray(mtx @ vec.reshape(-1, 1)).ravel()
        if vec.ndim > 1 and vec.shape[1] > 1:
            out = out.reshape(-1, vec.shape[1])
    else:
        op = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "dot": np.dot}[name]
        out = np.asarray(op(_dense(v("a")), _dense(v("b"))))
    if out.dtype == object:
        raise ValueError(f"chumpy {obj.kind} does not evaluate to a numeric array")
    active.discard(id(obj))
    memo[id(obj)] = out
    return out


def _value(x, memo: dict[int, Any], active: set[int]):
    """``x`` with every stand-in inside dicts, lists and tuples replaced by what it stands for."""
    if isinstance(x, _StandIn):
        if id(x) not in memo:
            if x.kind.startswith("scipy."):
                memo[id(x)] = _sparse_matrix(x)
            else:
                _chumpy_value(x, memo, active)
        return memo[id(x)]
    if isinstance(x, dict):
        for k in list(x):
            x[k] = _value(x[k], memo, active)
        return x
    if isinstance(x, list):
        x[:] = [_value(e, memo, active) for e in x]
        return x
    if isinstance(x, tuple):
        return tuple(_value(e, memo, active) for e in x)
    return x


# -- public API --------------------------------------------------------------------------------------

def restricted_load(source: str | Path | bytes | BinaryIO, what: str, *, encoding: str = "latin1", allow_sparse: bool = False,
         allow_chumpy: bool = False, name: str | None = None):
    """Unpickle ``source`` (a path, the bytes of a pickle, or a binary file) allowing only arrays and
    plain data (plus sparse matrices / chumpy arrays when asked); chumpy objects come back as numpy
    arrays. ``what`` names the kind of file in errors ("keypoints2d pickle"), ``name`` the file (by
    default its file name). A refused global raises :class:`RefusedPickle`: ``"<what> <name>:
    refused to load: it references os.system (only numpy arrays and plain data are allowed)"``;
    damaged files raise what the unpickler raises (``UnpicklingError``, ``EOFError``, ...).
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return restricted_load(f, what, encoding=encoding, allow_sparse=allow_sparse, allow_chumpy=allow_chumpy,
                        name=name or Path(source).name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    if name is None:
        file_name = getattr(source, "name", None)
        name = Path(file_name).name if isinstance(file_name, str) else "<data>"
    label = f"{what} {name}"
    data = _RestrictedUnpickler(source, label=label, encoding=encoding, allow_sparse=allow_sparse,
                                allow_chumpy=allow_chumpy).load()
    if allow_sparse or allow_chumpy:
        try:
            data = _value(data, {}, set())
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, ImportError, RecursionError) as exc:
            raise ValueError(f"{label}: {type(exc).__name__}: {exc}") from None
    return data


def load_npz(path: str | Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` read with ``allow_pickle=False``; an array that holds pickled
    Python objects raises :class:`RefusedPickle` naming the file and the array."""
    path = Path(path)
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            out[key] = npz_array(z, key, path, what)
    return out


def npz_array(z, key: str, path: str | Path, what: str) -> np.ndarray:
    """``z[key]`` of an npz opened with ``allow_pickle=False``, refusing object arrays with a one-line error."""
    try:
        return z[key]
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise RefusedPickle(f"{what} {Path(path).name}: refused to load: array '{key}' holds pickled Python "
                            "objects (only plain numeric arrays are allowed)") from None


def body_model_file(path: str | Path, kind: str = "smpl", *, gender: str = "neutral", is_rhand: bool = True) -> Path:
    """The model file smplx would read for ``path``: the file itself, or in a folder
    ``SMPL_<GENDER>.pkl`` / ``MANO_<RIGHT|LEFT>.pkl`` (as smplx names them)."""
    p = Path(path)
    if not p.is_dir():
        return p
    if kind == "mano":
        return p / f"MANO_{'RIGHT' if is_rhand else 'LEFT'}.pkl"
    return p / f"SMPL_{gender.upper()}.pkl"


def load_body_model_data(path: str | Path, kind: str = "smpl", *, gender: str = "neutral",
                         is_rhand: bool = True) -> dict[str, Any]:
    """An SMPL / MANO model file (or a folder holding it, see :func:`body_model_file`) as a dict of
    plain numpy arrays (plus its strings and small dicts): ``.pkl`` through the restricted unpickler
    with scipy sparse matrices and chumpy arrays allowed (densified / evaluated), ``.npz`` without
    pickles. Raises :class:`RefusedPickle` for a file that references anything else,
    FileNotFoundError, or the unpickler's error for a damaged file."""
    p = body_model_file(path, kind, gender=gender, is_rhand=is_rhand)
    what = f"{kind.upper()} model"
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p}: no such file")
    if p.suffix == ".npz":
        data = load_npz(p, what)
    else:
        data = restricted_load(p, what, encoding="latin1", allow_sparse=True, allow_chumpy=True)
    if not isinstance(data, dict):
        raise ValueError(f"{what} {p.name}: a {type(data).__name__}, not a dict of arrays")
    out = {}
    for key, value in data.items():
        out[str(key)] = _dense(value) if "scipy.sparse" in type(value).__module__ else value
    return out


def body_model_struct(path: str | Path, kind: str = "smpl", **kwargs):
    """:func:`load_body_model_data` as the ``smplx.utils.Struct`` that smplx's SMPL / MANO take as
    ``data_struct=`` (so smplx does not unpickle the file with plain ``pickle``)."""
    from smplx.utils import Struct

    return Struct(**load_body_model_data(path, kind, **kwargs))
