"""pairgen: cross-view and cross-pose human pair generation (see README.md)."""

from __future__ import annotations

import functools


def version() -> str:
    """The installed crocoman version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("crocoman")
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Version plus a short hash of the pairgen and manifests sources this process runs: two
    processes with the same digest make the same bytes (Ray workers are checked against the driver)."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256(version().encode())
    root = Path(__file__).resolve().parent
    for pkg in (root, root.parent / "manifests"):
        for f in sorted(pkg.rglob("*.py")):
            h.update(str(f.relative_to(pkg.parent)).encode())
            h.update(f.read_bytes())
    return f"{version()}+{h.hexdigest()[:12]}"
