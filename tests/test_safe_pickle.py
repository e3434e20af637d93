"""Untrusted pickles / npz files must not run code (issue 10, defect 8).

Every crafted file here really runs code under plain ``pickle`` / ``np.load(allow_pickle=True)``
(each payload test first proves that with the stock unpickler), and must be refused by pairgen with
a one-line error naming the file and the refused global, leaving no marker file behind.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import sys
import types

import numpy as np
import pytest

from pairgen import safe_pickle


# -- crafted payloads ---------------------------------------------------------------------------------

def _u(s: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _call(module: str, name: str, *args: str) -> bytes:
    """A protocol-4 pickle calling ``module.name(*args)`` (str args) through STACK_GLOBAL + REDUCE."""
    tup = {0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(args)]
    return b"\x80\x04" + _u(module) + _u(name) + b"\x93" + b"".join(_u(a) for a in args) + tup + b"R."


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _numpy_path_to_os_system() -> str | None:
    """A dotted attribute path from numpy to os.system (what stock find_class walks for protocol 4)."""
    for path in ("lib._npyio_impl.os.system", "lib.npyio.os.system", "lib.format.os.system", "_utils.os.system"):
        obj = np
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if obj is os.system:
            return path
    return None


def _payload(kind: str, marker) -> tuple[bytes, str]:
    """(pickle bytes that create ``marker`` when unpickled by plain pickle, the global that must be named)."""
    m = str(marker)
    if kind == "os.system":
        data = pickle.dumps({"keypoints2d": _Reduce(os.system, f"touch '{m}'")}, protocol=2)
        return data, f"{os.system.__module__}.system"
    if kind == "eval":
        return pickle.dumps([_Reduce(eval, f"open({m!r}, 'w').close()")], protocol=4), "builtins.eval"
    if kind == "exec-py2-names":  # a Python 2 spelling: fix_imports maps __builtin__ -> builtins
        return (b"\x80\x02c__builtin__\nexec\n" + b"X" + struct.pack("<I", len(f"open({m!r}, 'w').close()"))
                + f"open({m!r}, 'w').close()".encode() + b"\x85R."), "__builtin__.exec"
    if kind == "numpy.save":  # a numpy function that is not an array constructor writes a file
        return pickle.dumps({"a": _Reduce(np.save, m, np.zeros(1))}, protocol=2), "numpy.save"
    if kind == "numpy-dotted-path":  # numpy is allowed, but only exact names, never attribute paths
        path = _numpy_path_to_os_system()
        if path is None:
            pytest.skip("no attribute path from this numpy to os.system")
        return _call("numpy", path, f"touch '{m}'"), f"numpy.{path}"
    if kind == "numpy.load-of-a-second-file":  # numpy.load(allow_pickle=True) of an evil .npy next to it
        evil = marker.parent / f"{marker.name}.evil.npy"
        np.save(evil, np.array([_Reduce(os.system, f"touch '{m}'")], dtype=object), allow_pickle=True)
        return pickle.dumps(_Reduce(np.load, str(evil), None, True), protocol=2), "numpy.load"
    if kind == "subprocess":
        import subprocess

        return pickle.dumps(_Reduce(subprocess.call, ["touch", m]), protocol=3), "subprocess.call"
    raise ValueError(kind)


PAYLOADS = ["os.system", "eval", "exec-py2-names", "numpy.save", "numpy-dotted-path", "numpy.load-of-a-second-file",
            "subprocess"]


def _marker_made(marker) -> bool:
    return marker.exists() or marker.with_name(marker.name + ".npy").exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_code_running_pickles_are_refused(kind, tmp_path):
    marker = tmp_path / "pwned"
    data, named = _payload(kind, marker)
    # control: the payload is live (this is what pickle.load in the readers did before)
    try:
        pickle.loads(data, encoding="latin1")
    except Exception:
        pass
    assert _marker_made(marker), f"{kind}: the crafted pickle does not run code under plain pickle"
    for p in (marker, marker.with_name(marker.name + ".npy")):
        p.unlink(missing_ok=True)

    path = tmp_path / "gBR_sBM_cAll_d04_mBR1_ch02.pkl"
    path.write_bytes(data)
    for options in ({}, {"allow_sparse": True, "allow_chumpy": True}):
        with pytest.raises(safe_pickle.RefusedPickle) as info:
            safe_pickle.restricted_load(path, "keypoints2d pickle", **options)
        msg = str(info.value)
        assert "\n" not in msg
        assert msg.startswith(f"keypoints2d pickle {path.name}: refused to load: it references {named} ("), msg
        assert "allowed)" in msg
    assert not _marker_made(marker)


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("builtins", "open"), ("__builtin__", "eval"), ("os", "system"), ("posix", "system"), ("subprocess", "Popen"),
    ("numpy", "load"), ("numpy", "save"), ("numpy", "fromfile"), ("numpy.testing", "assert_equal"),
    ("numpy.core.multiarray", "frombuffer"), ("numpy._core.multiarray", "_reconstruct.__globals__"),
    ("numpy", "ndarray.tofile"), ("numpy", "core"), ("collections", "OrderedDict.fromkeys"), ("_codecs", "decode"),
    ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"), ("builtins", "object"),
    ("chumpy.ch", "Ch"), ("scipy.sparse", "csc_matrix"), ("scipy.sparse._csc", "csc_matrix"),
])
def test_allow_list_is_exact_names(module, name):
    """Only exact (module, name) pairs: no prefixes, no attribute paths, no model classes in data files."""
    data = b"\x80\x04" + _u(module) + _u(name) + b"\x93."
    with pytest.raises(safe_pickle.RefusedPickle, match=rf"refused to load: it references {module}\.{name} \("):
        safe_pickle.restricted_load(data, "keypoints3d pickle")
    assert f"{module}.{name}" not in safe_pickle.allowed_globals()


def test_allowed_callables_cannot_be_turned_into_gadgets(tmp_path):
    # _codecs.encode only turns str into latin-1 bytes (what protocol-2 pickles of bytes need)
    with pytest.raises(pickle.UnpicklingError, match="latin-1"):
        safe_pickle.restricted_load(_call("_codecs", "encode", "x", "rot13"), "keypoints2d pickle")
    assert safe_pickle.restricted_load(_call("_codecs", "encode", "\xe9", "latin1"), "keypoints2d pickle") == b"\xe9"
    # copyreg._reconstructor (model files only) builds nothing but the chumpy / sparse stand-ins
    bad = (b"\x80\x02ccopy_reg\n_reconstructor\ncbuiltins\nbytearray\nc__builtin__\nobject\nN\x87R.")
    with pytest.raises(pickle.UnpicklingError, match="_reconstructor is allowed only"):
        safe_pickle.restricted_load(bad, "SMPL model", allow_sparse=True, allow_chumpy=True)


def test_plain_data_and_arrays_load_in_every_protocol():
    import collections

    d = {"keypoints2d": np.arange(12.0).reshape(2, 3, 2).astype(np.float32), "det_scores": np.ones((2, 3)),
         "timestamps": np.arange(2, dtype=np.int64), "scalar": np.float64(0.5), "count": np.int32(3),
         "od": collections.OrderedDict(a=[1, 2]), "tags": {"a", "b"}, "frozen": frozenset({1}), "raw": b"\x00\xff",
         "z": 1 + 2j, "nested": [("x", None, True)], "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
         "rec": np.zeros(2, dtype=[("u", "<f4"), ("v", "<i2")]), "objects": np.array([1, "a", None], dtype=object),
         "ba": bytearray(b"q")}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        out = safe_pickle.restricted_load(pickle.dumps(d, protocol=proto), "keypoints2d pickle")
        assert out.keys() == d.keys(), proto
        for k, v in d.items():
            if isinstance(v, np.ndarray):
                assert out[k].dtype == v.dtype and np.array_equal(out[k], v), (proto, k)
            else:
                assert out[k] == v and type(out[k]) is type(v), (proto, k)


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b


def _py2_array(a: np.ndarray) -> bytes:
    """A float64 array as Python 2 + numpy 1.x pickled it (protocol 2, numpy.core names, str data)."""
    a = np.ascontiguousarray(a, "<f8")
    shape = b"".join(b"K" + bytes([n]) for n in a.shape) + {1: b"\x85", 2: b"\x86", 3: b"\x87"}[a.ndim]
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
            + b"(K\x01" + shape + b"cnumpy\ndtype\n" + _py2_str(b"f8") + b"K\x00K\x01\x87R"
            + b"(K\x03" + _py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
            + b"T" + struct.pack("<I", a.nbytes) + a.tobytes() + b"tb")


def test_python2_sequence_pickle_loads_and_a_crafted_one_is_a_bad_unit(tmp_path):
    """3DPW's Python-2 pickles (latin1) load; a crafted one is a BadUnit naming the refusal, runs nothing."""
    from pairgen.real.types import BadUnit
    from pairgen.sources.threedpw import load_pickle

    poses = np.arange(6.0).reshape(2, 3)
    good = tmp_path / "courtyard_basketball_00.pkl"
    good.write_bytes(b"\x80\x02}(" + _py2_str(b"poses") + _py2_array(poses) + _py2_str(b"genders") + b"]"
                     + _py2_str(b"m") + b"a" + _py2_str(b"sequence") + _py2_str(b"courtyard_\xe9") + b"u.")
    data = load_pickle(good)
    assert np.array_equal(data["poses"], poses) and data["genders"] == ["m"] and data["sequence"] == "courtyard_\xe9"

    marker = tmp_path / "pwned"
    evil = tmp_path / "courtyard_evil_00.pkl"
    evil.write_bytes(_payload("os.system", marker)[0])
    with pytest.raises(BadUnit, match=r"^sequence pickle courtyard_evil_00\.pkl: refused to load: it references "):
        load_pickle(evil)
    assert not marker.exists()


# -- AMASS npz ----------------------------------------------------------------------------------------

def test_amass_npz_needing_pickles_is_refused_and_skipped(tmp_path):
    from pairgen.synthetic.amass import MotionBank, load_amass
    from smpl_fixture import make_amass_files

    motions = make_amass_files(tmp_path / "amass", n=1)
    marker = tmp_path / "pwned"
    poses = np.empty(1, dtype=object)
    poses[0] = _Reduce(os.system, f"touch '{marker}'")
    evil = motions / "evil_poses.npz"
    np.savez(evil, poses=poses, mocap_framerate=60.0)  # savez pickles object arrays
    with np.load(evil, allow_pickle=True) as z:  # control: the file is live under allow_pickle=True
        z["poses"]
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError) as info:
        load_amass(evil)
    msg = str(info.value)
    assert msg == ("AMASS motion evil_poses.npz: refused to load: array 'poses' holds pickled Python objects "
                   "(only plain numeric arrays are allowed)"), msg
    # a bare pickle named .npz is refused too (np.load would otherwise unpickle it)
    (motions / "bare_poses.npz").write_bytes(_payload("os.system", marker)[0])
    with pytest.raises(ValueError, match=r"^AMASS motion bare_poses\.npz: refused to load"):
        load_amass(motions / "bare_poses.npz")
    # in a motion folder: skipped and reported, the good file still used, nothing ran
    bank = MotionBank.from_directory(str(motions))
    assert [f.name for f in bank.files] == ["walk0_poses.npz"]
    assert "refused to load" in bank.skipped[str(evil)]
    assert "refused to load" in bank.skipped[str(motions / "bare_poses.npz")]
    assert not marker.exists()


# -- SMPL / MANO model files: scipy sparse + chumpy, without chumpy installed ---------------------------

def _chumpy_standins(monkeypatch):
    """Classes that pickle like chumpy's (module names chumpy.ch etc., __dict__ minus caches as state)."""
    mods = {n: types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering", "chumpy.ch_ops")}

    class Ch:
        def __init__(self, **terms):
            self.__dict__.update(terms)
            self._dirty_vars = set(terms)
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = self._make_sparse = False
            self._parents, self._cache = object(), object()  # weakref dicts: dropped by __getstate__

        def __getstate__(self):
            d = dict(self.__dict__)
            del d["_parents"], d["_cache"]
            return d

    classes = {}
    for mod, name in (("chumpy.ch", "Ch"), ("chumpy.reordering", "Select"), ("chumpy.reordering", "transpose"),
                      ("chumpy.ch_ops", "add"), ("chumpy.ch", "MatVecMult")):
        cls = Ch if name == "Ch" else type(name, (Ch,), {})
        cls.__module__, cls.__qualname__ = mod, name
        setattr(mods[mod], name, cls)
        classes[name] = cls
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return classes


def _smpl_with_chumpy(plain: dict, ch: dict) -> dict:
    """An SMPL-format dict shaped like the official SMPL 1.0 / MANO releases."""
    import scipy.sparse as sp

    v = plain["v_template"]
    sd = plain["shapedirs"]
    base = ch["Ch"](x=np.concatenate([sd, np.full_like(sd, 7.0)], axis=2))  # MANO: Select over a wider Ch
    idx = np.arange(base.x.size).reshape(base.x.shape)[:, :, : sd.shape[2]].ravel()
    return {
        "v_template": ch["Ch"](x=v),
        "shapedirs": ch["Select"](a=base, idxs=idx, preferred_shape=sd.shape),
        "posedirs": ch["Ch"](x=plain["posedirs"]),
        "weights": ch["Ch"](x=plain["weights"]),
        "J_regressor": sp.csc_matrix(plain["J_regressor"]),
        "J_regressor_prior": sp.csr_matrix(plain["J_regressor"]),
        "J": ch["transpose"](a=ch["Ch"](x=(plain["J_regressor"] @ v).T), axes=None),
        "v_shaped": ch["add"](a=ch["Ch"](x=v), b=ch["Ch"](x=np.zeros_like(v))),
        "J_x": ch["MatVecMult"](mtx=sp.csc_matrix(plain["J_regressor"]), vec=ch["Ch"](x=v[:, 0])),  # smpl_webuser
        "kintree_table": plain["kintree_table"],
        "f": plain["f"].astype(np.uint32),
        "bs_style": "lbs", "bs_type": "lrotmin",
        "pose_training_info": {"maxiter": 10},
    }


@pytest.fixture(scope="module")
def smpl_file(tmp_path_factory, synthetic_worker):
    from smpl_fixture import make_smpl_file

    return make_smpl_file(tmp_path_factory.mktemp("safe_smpl") / "SMPL_NEUTRAL.pkl", synthetic_worker.generator.body)


@pytest.mark.parametrize("protocol", [0, 2])
def test_smpl_pickle_with_sparse_and_chumpy_loads_as_arrays_without_chumpy(smpl_file, tmp_path, monkeypatch,
                                                                           protocol):
    import importlib.util

    from pairgen.synthetic.smpl_body import SmplBody

    plain = pickle.loads(smpl_file.read_bytes())
    with monkeypatch.context() as m:
        ch = _chumpy_standins(m)
        official = tmp_path / "SMPL_NEUTRAL.pkl"
        official.write_bytes(pickle.dumps(_smpl_with_chumpy(plain, ch), protocol=protocol))
    assert "chumpy" not in sys.modules and importlib.util.find_spec("chumpy") is None
    with pytest.raises(ModuleNotFoundError):  # what smplx's plain pickle.load did with such a file
        pickle.loads(official.read_bytes(), encoding="latin1")

    data = safe_pickle.load_body_model_data(official)
    assert all(isinstance(data[k], np.ndarray) for k in data if k not in ("bs_style", "bs_type", "pose_training_info"))
    assert np.array_equal(data["v_template"], plain["v_template"])
    assert np.array_equal(data["shapedirs"], plain["shapedirs"])  # Select evaluated, not the wider base
    assert np.array_equal(data["posedirs"], plain["posedirs"]) and np.array_equal(data["weights"], plain["weights"])
    assert np.allclose(data["J_regressor"], plain["J_regressor"])
    assert np.allclose(data["J_regressor_prior"], plain["J_regressor"])
    assert np.allclose(data["J"], plain["J_regressor"] @ plain["v_template"])
    assert np.allclose(data["J_x"], plain["J_regressor"] @ plain["v_template"][:, 0])
    assert np.array_equal(data["v_shaped"], plain["v_template"])
    assert data["bs_style"] == "lbs" and data["pose_training_info"] == {"maxiter": 10}
    # a data pickle may not hold them (keypoints / sequence pickles: arrays and plain data only)
    with pytest.raises(safe_pickle.RefusedPickle, match=r"it references (copy_reg\._reconstructor|chumpy\.ch\.Ch) "):
        safe_pickle.restricted_load(official, "keypoints2d pickle")
    # the project's SMPL body on the official-style file matches the plain-array file
    a, b = SmplBody(str(official)), SmplBody(str(smpl_file))
    assert np.allclose(a.rest_vertices, b.rest_vertices) and np.array_equal(a.faces, b.faces)
    assert "chumpy" not in sys.modules


def test_crafted_smpl_model_is_refused_by_every_loader(smpl_file, tmp_path):
    """A model file that runs code: SmplBody, 3DPW's and HUMBI's loaders refuse it; nothing runs."""
    from pairgen.sources.humbi import load_faces
    from pairgen.sources.threedpw import ThreeDPWReader
    from pairgen.synthetic.smpl_body import SmplBody

    marker = tmp_path / "pwned"
    data = pickle.loads(smpl_file.read_bytes())
    data["weights"] = _Reduce(os.system, f"touch '{marker}'")
    models = tmp_path / "models"
    models.mkdir()
    bad = models / "SMPL_MALE.pkl"
    bad.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(ValueError, match=rf"SMPL model SMPL_MALE\.pkl: refused to load: it references "
                                         rf"{os.system.__module__}\.system \(only numpy arrays"):
        SmplBody(str(bad))
    with pytest.raises(ValueError, match="refused to load: it references"):
        load_faces(str(bad))
    with pytest.raises(ValueError, match="refused to load: it references"):
        ThreeDPWReader(str(tmp_path), {"smpl_model": str(models)})._model("male")
    assert not marker.exists()


def test_mano_model_folder_loads_through_the_restricted_unpickler(tmp_path, monkeypatch):
    """MANO_{RIGHT,LEFT}.pkl in a folder, with shapedirs a chumpy Select (as released), feed smplx.MANO."""
    import scipy.sparse as sp
    import smplx

    from pairgen.sources.interhand import _mano_layers

    rng = np.random.default_rng(0)
    V = 778
    plain = {"v_template": rng.normal(size=(V, 3)) * 0.05, "shapedirs": rng.normal(size=(V, 3, 10)) * 1e-3,
             "posedirs": np.zeros((V, 3, 135)), "J_regressor": np.full((16, V), 1.0 / V),
             "weights": np.full((V, 16), 1.0 / 16),
             "kintree_table": np.array([[4294967295] + [0] * 15, list(range(16))]),
             "f": rng.integers(0, V, size=(100, 3)), "hands_components": np.eye(45), "hands_mean": np.zeros(45)}
    with monkeypatch.context() as m:
        ch = _chumpy_standins(m)
        for hand in ("RIGHT", "LEFT"):
            d = dict(plain, shapedirs=ch["Select"](a=ch["Ch"](x=plain["shapedirs"]), idxs=np.arange(V * 30),
                                                  preferred_shape=(V, 3, 10)),
                     v_template=ch["Ch"](x=plain["v_template"]))
            d["J_regressor"] = sp.csc_matrix(plain["J_regressor"])
            (tmp_path / f"MANO_{hand}.pkl").write_bytes(pickle.dumps(d, protocol=2))
    assert "chumpy" not in sys.modules
    struct = safe_pickle.body_model_struct(tmp_path, "mano", is_rhand=False)
    assert isinstance(struct.shapedirs, np.ndarray) and np.array_equal(struct.shapedirs, plain["shapedirs"])
    layer = smplx.MANO(str(tmp_path), is_rhand=False, use_pca=False, data_struct=struct)
    assert np.allclose(layer.v_template.numpy(), plain["v_template"], atol=1e-6)
    # InterHand's --mano-model loader (a folder, or a file inside it) reads both hands the same way
    layers = _mano_layers(str(tmp_path / "MANO_RIGHT.pkl"))
    assert set(layers) == {"right", "left"}
    assert np.allclose(layers["right"].v_template.numpy(), plain["v_template"], atol=1e-6)
    assert np.allclose(layers["right"].shapedirs.numpy(), plain["shapedirs"], atol=1e-6)
    assert "chumpy" not in sys.modules


def test_crafted_mano_model_is_refused(tmp_path):
    from pairgen.real.types import BadUnit
    from pairgen.sources.interhand import _mano_layers

    marker = tmp_path / "pwned"
    for hand in ("RIGHT", "LEFT"):
        evil = {"hands_mean": _Reduce(os.system, f"touch '{marker}'")}
        (tmp_path / f"MANO_{hand}.pkl").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(BadUnit, match=r"^--mano-model: MANO model MANO_RIGHT\.pkl: refused to load: it references "):
        _mano_layers(str(tmp_path))
    assert not marker.exists()


# -- a whole AIST++ build with one crafted keypoints2d pickle ------------------------------------------

EVIL_SEQ = "gMH_sBM_cAll_d22_mMH0_ch01"


def test_aist_build_skips_a_crafted_keypoints_pickle(smpl_file, synthetic_worker, tmp_path):
    from fixtures_aist import DEFAULT_SEQS, add_sequence_copy, make_aist_fixture
    from pairgen.cli import main
    from source_checks import read_manifest, skipped_totals

    truth = make_aist_fixture(tmp_path / "aist", synthetic_worker.generator.body, smpl_file,
                              seqs=DEFAULT_SEQS[:1], n_frames=20, keep_masks=False)
    first = next(iter(truth["seqs"]))
    add_sequence_copy(truth, first, EVIL_SEQ)
    marker = tmp_path / "pwned"
    data, named = _payload("os.system", marker)
    (truth["annotations"] / "keypoints2d" / f"{EVIL_SEQ}.pkl").write_bytes(data)
    out = tmp_path / "out"
    rc = main(["build", "--source", "aist", "--root", str(truth["root"]), "--out", str(out), "--local", "--quiet",
               "--num-pairs", "8", "--shard-size", "50", "--min-gap-s", "0.05", "--max-gap-s", "0.3",
               "--silhouette", "keypoints"])
    assert rc == 0
    df = read_manifest(out)
    assert len(df) > 0 and EVIL_SEQ not in set(df["sequence"]) and first in set(df["sequence"])
    named_units = {u["unit"]: u["reason"] for u in skipped_totals(out)["skipped_units"]}
    assert named_units.get(EVIL_SEQ) == (f"bad unit: keypoints2d pickle {EVIL_SEQ}.pkl: refused to load: it references "
                                         f"{named} (only numpy arrays and plain data are allowed)"), named_units
    assert not marker.exists()
    shutil.rmtree(out)
