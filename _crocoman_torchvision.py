"""Make ``import torchvision`` (hence ``import timm``) work when torchvision's compiled ops do not
match the installed torch.

The torchvision wheel the registry serves is a CUDA build; next to a CPU torch its C extension
cannot load, and its Python code then fails at import with ``RuntimeError: operator torchvision::nms
does not exist`` (it registers fake kernels for ``nms``/``qnms``). ``ensure_torchvision_ops`` first
loads torchvision's own extension, as torchvision itself would; only if the ops are still missing
does it define the two schemas (no kernels), so the import succeeds and ``torchvision.ops.nms``
raises a clear error if called. Nothing in timm's ViT/EVA uses them.

tools/setup.sh runs ``write_pth`` so that every interpreter of the virtual environment calls
``install()`` at start-up: that only puts a finder on ``sys.meta_path`` (no torch import, a few
microseconds); the first time ``torchvision`` is looked up the finder removes itself, calls
``ensure_torchvision_ops()`` and lets the normal import go on. Where torchvision's extension loads
(a matching build, e.g. on a GPU machine) that is all it does.

A top-level module (not ``trainer._...``) on purpose: the start-up line must not import our
``trainer`` package, which would shadow a user's own ``trainer`` package in their working directory.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PTH_NAME = "crocoman-torchvision.pth"  # sorts after setuptools' ``__editable__.*.pth`` (which makes us importable)
# The .pth line: a no-op (no error message) when this module is not importable, e.g. after
# ``pip uninstall crocoman`` (the .pth is not part of the installed package's record).
PTH_LINE = ("import importlib.util as u; u.find_spec('_crocoman_torchvision') and "
            "__import__('_crocoman_torchvision').install()")

_LIBRARY = None  # torch.library.Library kept alive: dropping it would unregister the schemas


def _ops_present() -> bool:
    import torch

    return hasattr(torch.ops.torchvision, "nms")


def ensure_torchvision_ops() -> None:
    """Make ``torchvision::nms`` / ``qnms`` exist (torchvision's extension, else schemas only). Idempotent."""
    global _LIBRARY
    import torch

    if _LIBRARY is not None or _ops_present():
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.origin:
        for lib in sorted(Path(spec.origin).parent.glob("_C*.so")):
            try:
                torch.ops.load_library(str(lib))
            except (OSError, RuntimeError):
                pass  # mismatched build (e.g. CUDA torchvision, CPU torch): define the schemas below
            if _ops_present():
                return
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = library


class TorchvisionFinder:
    """Meta-path finder acting once: just before ``torchvision`` is found, ``ensure_torchvision_ops()``."""

    @classmethod
    def find_spec(cls, fullname: str, path=None, target=None):
        if fullname != "torchvision":
            return None
        uninstall()  # first: ensure_torchvision_ops looks torchvision up itself
        if importlib.util.find_spec("torch") is not None:  # without torch, torchvision fails on its own
            ensure_torchvision_ops()
        return None  # the normal finders load torchvision


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (unless torchvision is imported already). Idempotent."""
    if "torchvision" not in sys.modules and TorchvisionFinder not in sys.meta_path:
        sys.meta_path.insert(0, TorchvisionFinder)


def uninstall() -> None:
    while TorchvisionFinder in sys.meta_path:
        sys.meta_path.remove(TorchvisionFinder)


def write_pth(site_dir: str | Path) -> Path:
    """Write ``PTH_NAME`` (one line, ``PTH_LINE``) into ``site_dir`` so each interpreter calls ``install()``."""
    path = Path(site_dir) / PTH_NAME
    tmp = path.with_name(f".{PTH_NAME}.tmp")
    tmp.write_text(PTH_LINE + "\n")
    tmp.replace(path)
    return path
