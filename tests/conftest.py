"""Shared fixtures: one small synthetic build per test session (anny is built once per process)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def synthetic_build(tmp_path_factory):
    """A 24-pair synthetic build (3 shards of 8, both kinds), built in-process."""
    from pairgen.build import run_build
    from pairgen.config import BuildConfig

    out = tmp_path_factory.mktemp("synthetic") / "shards"
    cfg = BuildConfig(source="synthetic", out=str(out), num_pairs=24, shard_size=8, seed=7, local=True)
    summary = run_build(cfg, progress=False)
    assert summary["pairs_built"] == 24 and not summary["failures"]
    return out, cfg


@pytest.fixture(scope="session")
def synthetic_worker():
    """The in-process synthetic worker (body model + renderer), shared by geometry tests."""
    from pairgen.config import BuildConfig
    from pairgen.sources.synthetic import SyntheticWorker

    return SyntheticWorker(BuildConfig(seed=7))
