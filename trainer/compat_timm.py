"""Import timm when torchvision's compiled ops do not match the installed torch.

timm imports torchvision, whose Python code registers fake kernels for ``torchvision::nms``;
when torchvision's C extension cannot load (e.g. a CUDA torchvision wheel next to a CPU torch,
as installed by tools/setup.sh), that registration fails with
``RuntimeError: operator torchvision::nms does not exist``. ``import_timm`` first tries to load
the extension; only if the op is still missing does it define the two schemas (no kernels), so
the import succeeds. Nothing in timm's ViT uses them. The trainer's model does not use timm at
all; only the export check does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

_LIBRARY: torch.library.Library | None = None  # kept alive: dropping it would unregister the schemas


def _torchvision_ops_present() -> bool:
    return hasattr(torch.ops.torchvision, "nms")


def ensure_torchvision_ops() -> None:
    """Make ``torchvision::nms`` / ``qnms`` exist (loading torchvision's extension, else schemas only). Idempotent."""
    global _LIBRARY
    if _LIBRARY is not None or _torchvision_ops_present():
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.origin:
        for lib in sorted(Path(spec.origin).parent.glob("_C*.so")):
            try:
                torch.ops.load_library(str(lib))
            except (OSError, RuntimeError):
                pass  # mismatched build: fall back to defining the schemas below
            if _torchvision_ops_present():
                return
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def import_timm() -> ModuleType:
    """``import timm``, after making torchvision importable on this torch."""
    ensure_torchvision_ops()
    import timm

    return timm
