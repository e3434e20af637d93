"""Import timm when torchvision's compiled ops do not match the installed torch.

timm imports torchvision, whose Python code registers fake kernels for ``torchvision::nms``; when
torchvision's C extension cannot load (the registry's torchvision is a CUDA build; next to a CPU
torch, as tools/setup.sh installs it on a CPU machine) that fails with ``RuntimeError: operator
torchvision::nms does not exist``. The fix lives in the top-level module ``_crocoman_torchvision``
(``ensure_torchvision_ops``: load torchvision's extension, else define the two schemas, no kernels).

After tools/setup.sh a plain ``import timm`` / ``import torchvision`` works in the venv: setup writes
a one-line ``crocoman-torchvision.pth`` whose start-up hook runs ``ensure_torchvision_ops()`` the
first time torchvision is imported (docs/trainer.md, "timm and torchvision"). ``import_timm`` does the
same explicitly, for environments set up without that file. The trainer's model does not use timm;
only the export's checks and users loading ``timm_vit.safetensors`` do.
"""

from __future__ import annotations

from types import ModuleType

from _crocoman_torchvision import ensure_torchvision_ops

__all__ = ["ensure_torchvision_ops", "import_timm"]


def import_timm() -> ModuleType:
    """``import timm``, after making torchvision importable on this torch."""
    ensure_torchvision_ops()
    import timm

    return timm
