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


@pytest.fixture(scope="session")
def penn_units(tmp_path_factory, synthetic_worker):
    """``penn_units(n)``: a Penn Action root of ``n`` videos (copies of the fixture's 4 label files,
    frames shared by symlinks), for tests of planning many units. The fixture is made once per session."""
    import shutil

    from fixtures_pennaction import make_pennaction_fixture

    penn = make_pennaction_fixture(tmp_path_factory.mktemp("penn-units"), synthetic_worker.generator.body)
    originals = sorted((penn["root"] / "labels").glob("*.mat"))

    def make(n: int):
        base = tmp_path_factory.mktemp(f"penn{n}") / "Penn_Action"
        (base / "labels").mkdir(parents=True)
        (base / "frames").mkdir()
        for i in range(n):
            src = originals[i % len(originals)]
            shutil.copy(src, base / "labels" / f"{i + 1:04d}.mat")
            (base / "frames" / f"{i + 1:04d}").symlink_to(penn["root"] / "frames" / src.stem)
        return base

    return make


# -- Scale-out test infrastructure (issue 11): a real S3-compatible server and real Ray clusters on this
# machine; helpers in tests/cluster.py. Timings measured on the 2-core dev box (shared, so expect spread).


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server (``ThreadedMotoServer``, a thread of the test process) on
    127.0.0.1 and a free port, one per session; stopped at teardown. Start ~0.5 s (mostly importing
    moto), stop ~0.3-0.5 s; each s3fs/boto3 client a test creates costs ~0.3 s more.

    Yields a :class:`cluster.S3Server`: ``endpoint`` (``http://127.0.0.1:PORT``), ``env`` (dummy
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION=us-east-1, AWS_ENDPOINT_URL=endpoint,
    AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE pointing at an empty file, AWS_EC2_METADATA_DISABLED),
    ``bucket(name=None) -> str`` (creates a bucket, a fresh unique name by default: use one per test,
    the server's state lives for the whole session), ``client()`` (boto3), ``objects(bucket, prefix)``
    (``{key: size}`` straight from the server) and ``require_auth(on)`` (refuse unknown keys; moto
    accepts any key by default; server-wide, so switch it back off in a ``finally``). It does not
    touch ``os.environ``: use ``s3_env``.
    """
    from cluster import S3Server

    srv = S3Server(tmp_path_factory.mktemp("s3env"))
    yield srv
    srv.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """``s3_server.env`` set in this process's environment for one test (so s3fs/pandas/pyarrow in
    process and any subprocess inheriting ``os.environ`` use the moto server), with other AWS/fsspec
    variables that could point elsewhere removed, and every fsspec filesystem instance cache cleared
    before and after (fsspec caches instances per class by constructor arguments, not by environment).
    Yields ``s3_server``. Cost: negligible once ``s3_server`` runs."""
    from cluster import AWS_LEAKY_VARS, clear_fsspec_caches

    for key in AWS_LEAKY_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    clear_fsspec_caches()
    yield s3_server
    clear_fsspec_caches()


@pytest.fixture(scope="session")
def ray_two_nodes(s3_server):
    """A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: head + one node, 1 CPU
    each, no dashboard), one per session. Start ~5-7.5 s; stop ~0.1 s idle, ~1.1-1.4 s with Ray
    workers alive (2 shared cores, load 1-4).

    Yields a :class:`cluster.RayCluster`: ``address`` (``IP:PORT``, for ``--ray-address`` /
    ``ray.init(address=...)``), ``node_ids`` (hex, head first), ``env`` (``os.environ`` + RAY_AUTH_MODE=disabled
    + PYOPENGL_PLATFORM, for subprocess drivers such as the pairgen CLI), ``run_driver(code, *args)``
    (``python -c code ADDRESS *args``), ``pids()`` and ``node_env``. Subprocess drivers are proven to work.
    The nodes (so every Ray worker) are started with ``s3_server.env``, as a real cluster's nodes carry
    their own S3 configuration; an ``--out s3://...`` build needs nothing more (no ``s3_env`` needed in
    the workers). The cluster uses a private Ray temp dir, so an address-less ``ray.init()`` elsewhere
    never joins it. Teardown fails (RuntimeError naming them) if any of its processes survive shutdown.
    Shared by the session: do not kill its nodes (use ``cluster.two_node_ray()`` for a private one).
    """
    from cluster import two_node_ray

    with two_node_ray(node_env=s3_server.env) as ray_cluster:
        yield ray_cluster


@pytest.fixture(scope="session")
def ray_two_nodes_private_tmp(s3_server, tmp_path_factory):
    """Like ``ray_two_nodes``, but the second node runs in its own mount namespace (``unshare -m``)
    with an empty tmpfs over ``.private_dir``: a local ``--out`` under ``private_dir`` written by the
    driver (or the head node) is NOT seen by that node, as on a multi-node cluster without a shared
    filesystem. ``.namespaced_node`` = ``{"node_id", "sees_private"}`` as reported by that node at start.
    Use a fresh subfolder of ``private_dir`` per test. Start ~8-10 s, stop ~0.4-1.5 s. Skipped where mount
    namespaces are not available (needs root, or unprivileged user namespaces for ``unshare -rm``)."""
    from cluster import private_mounts_supported, two_node_ray

    why = private_mounts_supported()
    if why:
        pytest.skip(f"no private mount namespace here: {why}")
    private_dir = tmp_path_factory.mktemp("private-out")
    with two_node_ray(node_env=s3_server.env, private_dir=private_dir) as ray_cluster:
        yield ray_cluster
