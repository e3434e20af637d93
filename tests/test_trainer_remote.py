"""``--shards`` on object storage: a real S3-compatible server (moto's, on 127.0.0.1: the session's
``s3_server`` from ``tests/conftest.py`` / ``tests/cluster.py``) and a plain HTTP server, real s3fs /
fsspec clients, the real ``trainer`` console script.

Shards are built locally with ``trainer_shards`` and uploaded (tars, ``manifest/``, ``stats/``);
the trainer then reads them only through their URLs.
"""

from __future__ import annotations

import functools
import http.server
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cluster import AWS_LEAKY_VARS, clear_fsspec_caches, closed_port
from manifests.sample import iter_tar_samples
from trainer import data
from trainer.config import TrainerError
from trainer.data import mix_plan, open_remote, read_shard, resolve_shards
from trainer_shards import build_shards

torch.set_num_threads(2)
TRAINER = str(Path(sys.executable).with_name("trainer"))
TINY = ["--model", "tiny", "--batch-size", "2", "--shuffle-buffer", "8", "--image-every", "1000"]


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def bucket(s3_server):
    """A fresh bucket on the session's S3-compatible server (``s3_server``: moto on 127.0.0.1, a
    ``cluster.S3Server``), with ``s3_server.env`` in ``os.environ`` for this whole module (so the
    in-process s3fs clients and every ``trainer`` subprocess use that server), other AWS/fsspec
    variables that could point elsewhere removed, and fsspec's filesystem instance caches cleared
    before and after. Module-scoped (the ``s3_env`` fixture is per test) so ``build`` uploads once."""
    with pytest.MonkeyPatch.context() as mp_env:
        for name in AWS_LEAKY_VARS:
            mp_env.delenv(name, raising=False)
        for name, value in s3_server.env.items():
            mp_env.setenv(name, value)
        clear_fsspec_caches()
        try:
            yield s3_server.bucket()
        finally:
            clear_fsspec_caches()


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A plain HTTP server (no range requests) over a folder: ``(folder, base URL)``."""
    folder = tmp_path_factory.mktemp("www")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def build(bucket, http_root, tmp_path_factory):
    """Two finished shards of 16 pairs: the local build, its copy at ``s3://BUCKET/prefix`` and over HTTP."""
    import fsspec

    local = build_shards(tmp_path_factory.mktemp("build") / "out", n_shards=2, per_shard=16)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.put(f"{local}/", f"{bucket}/prefix", recursive=True)
    assert sorted(fs.find(f"{bucket}/prefix")) == sorted(
        f"{bucket}/prefix/{p.relative_to(local).as_posix()}" for p in local.rglob("*") if p.is_file())
    shutil.copytree(local, http_root[0] / "out")
    return local, f"s3://{bucket}/prefix"


def run_trainer(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([TRAINER, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a run that failed on bad input: exit 2, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainer: error: "), proc.stderr[-3000:]
    return lines[0]


def _rows(shards) -> list:
    return shards.manifest.drop(columns="url").to_dict("records")


# --------------------------------------------------------------------------- resolving --shards


def test_remote_root_resolves_like_its_local_copy(build):
    local, url = build
    here, there = resolve_shards(str(local)), resolve_shards(url)
    assert there.urls == [f"{url}/{Path(u).name}" for u in here.urls]  # same shards, same order
    assert _rows(there) == _rows(here) and len(_rows(there)) == 32
    assert list(there.manifest["url"].unique()) == there.urls
    # the same shards as a brace pattern and as a '::' list: manifests found next to each tar
    braces = resolve_shards(f"{url}/synthetic-{{000000..000001}}.tar")
    assert braces.urls == there.urls and _rows(braces) == _rows(here)
    mixed = resolve_shards(f"{here.urls[0]}::{there.urls[1]}")
    assert mixed.urls == [here.urls[0], there.urls[1]] and _rows(mixed) == _rows(here)
    # file:// URLs are local paths (read with plain open)
    assert resolve_shards(f"file://{local}").urls == here.urls


def test_remote_tar_without_manifest_and_mix(build, bucket, s3_server):
    local, url = build
    shards = resolve_shards(url)
    plan = mix_plan(shards, "synthetic=1,cross_pose=1")
    assert plan.shard_weights == [pytest.approx(1 / 16)] * 2 and plan.accept["synthetic"] == {"cross_pose": 1.0,
                                                                                            "cross_view": 0.0}
    s3_server.client().put_object(Bucket=bucket, Key="loose/synthetic-000000.tar",
                                  Body=(local / "synthetic-000000.tar").read_bytes())
    alone = resolve_shards(f"s3://{bucket}/loose/synthetic-000000.tar")  # no manifest/ next to it
    assert alone.urls == [f"s3://{bucket}/loose/synthetic-000000.tar"] and alone.manifest is None
    with pytest.raises(TrainerError, match="--mix needs the shards' manifests"):
        mix_plan(alone, "synthetic=1")
    errors: list = []
    assert len(list(read_shard(alone.urls[0], errors.append))) == 16 and not errors


def test_http_tars_stream_with_their_manifests(build, http_root):
    local, _ = build
    base = f"{http_root[1]}/out"
    shards = resolve_shards(f"{base}/synthetic-{{000000..000001}}.tar")
    assert _rows(shards) == _rows(resolve_shards(str(local)))
    errors: list = []
    keys = [s["__key__"] for u in shards.urls for s in read_shard(u, errors.append)]
    assert not errors and keys == list(shards.manifest["key"])
    with pytest.raises(TrainerError, match=r"^shard not found: http://.*/out/missing-000000\.tar \(HTTP 404\)$"):
        resolve_shards(f"{base}/missing-000000.tar")


def test_remote_tar_is_streamed_not_downloaded_first(build):
    """The first sample comes after one small ranged GET, not after the whole tar; the server's
    responses (counted by a botocore hook on the worker's own client) add up to the tar, read once."""
    _, url = build
    tar = f"{url}/synthetic-000000.tar"
    fs, path = data._filesystem(tar, {})
    size = fs.size(path)
    got: list[int] = []

    def on_get(parsed=None, **_):
        got.append(int(parsed["ContentLength"]))

    fs.s3.meta.events.register("after-call.s3.GetObject", on_get)
    try:
        stream = open_remote(tar, block_size=16 << 10, read_ahead=1)
        samples = iter_tar_samples(stream)
        key, members = next(samples)
        first = sum(len(v) for v in members.values())
        time.sleep(0.2)  # let the read-ahead thread run as far as it can
        assert key == "synthetic-000000-000000" and size > 10 * first
        assert sum(got) <= first + 4 * (16 << 10) < size // 4, (got, first, size)
        assert len(list(samples)) == 15
        stream.read()  # the tar's end padding
        stream.close()
        assert sum(got) == stream.fetched == size and len(got) > 10  # every byte once, in ranges
    finally:
        fs.s3.meta.events.unregister("after-call.s3.GetObject", on_get)


def _count_in_child(url: str, queue) -> None:
    errors: list = []
    n = sum(1 for _ in read_shard(url, errors.append))
    queue.put((n, [str(e) for e in errors]))


def test_forked_process_opens_its_own_filesystem(build):
    """s3fs filesystems are not fork-safe: a process forked after the parent read a remote shard
    (its filesystem, event loop and sessions exist) still reads the shard, through its own."""
    _, url = build
    tar = f"{url}/synthetic-000001.tar"
    assert len(list(read_shard(tar, pytest.fail))) == 16  # the parent's filesystem is live
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_count_in_child, args=(tar, queue))
    child.start()
    try:
        n, errors = queue.get(timeout=60)
    finally:
        child.join(timeout=30)
    assert (n, errors) == (16, []) and child.exitcode == 0


# --------------------------------------------------------------------------- the trainer, end to end


def test_pretrain_and_eval_on_s3(build, s3_server, tmp_path):
    _, url = build
    out = tmp_path / "run"
    key, secret = s3_server.env["AWS_ACCESS_KEY_ID"], s3_server.env["AWS_SECRET_ACCESS_KEY"]
    proc = run_trainer("pretrain", "--shards", url, "--out", str(out), "--mix", "synthetic=1", "--steps", "3",
                       "--workers", "2", "--log-every", "1", "--storage-option", f"key={key}",
                       "--storage-option", f"secret={secret}", "--storage-option",
                       "config_kwargs.read_timeout=30", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"2 shards -> {out}" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["shards"] == 2 and config["pairs"] == 32 and config["config"]["shards"] == url
    assert config["config"]["storage_option"] == ["key=***", "secret=***", "config_kwargs.read_timeout=30"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["config"]["storage_option"][1] == "secret=***"
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    proc = run_trainer("eval", "--ckpt", str(out / "checkpoint.pt"), "--shards", url, "--workers", "0",
                       "--batch-size", "8", "--json-out", str(tmp_path / "eval.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["all"]["pairs"] == 32 and results["corrupt_skipped"] == 0


def _start_trainer(spec: str, out: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([TRAINER, "pretrain", "--shards", spec, "--out", str(out), "--steps", "2",
                             "--workers", "0", *extra, *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _finish(proc: subprocess.Popen, timeout: float = 90) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += "\n(timed out)"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_bad_remote_input_is_one_line_and_exit_2(build, bucket, s3_server, http_root, tmp_path):
    """Each bad --shards / --storage-option: one line, exit 2, before the run directory is touched,
    within seconds (an unreachable endpoint is not retried for minutes). The runs go in parallel."""
    local, url = build
    for rel in ("synthetic-000000.tar", "manifest/synthetic-000000.parquet"):  # no stats/: unfinished
        s3_server.client().put_object(Bucket=bucket, Key=f"unfinished/{rel}", Body=(local / rel).read_bytes())
    cases = {  # name: (--shards, environment, extra flags, expected text of the error line)
        "unknown protocol": ("nosuchproto://bkt/prefix", {}, [], "unknown protocol 'nosuchproto'"),
        "no bucket": ("s3://no-such-bucket/prefix", {}, [], "no such bucket"),
        "no credentials": (url, {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, [],
                           "access denied or no credentials (Unable to locate credentials)"),
        "unreachable endpoint": (url, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"}, [],
                                 "endpoint unreachable"),
        "no finished shards": (f"s3://{bucket}/unfinished", {}, [], f"no finished shards in s3://{bucket}/unfinished"),
        "missing remote tar": (f"{url}/synthetic-000007.tar", {}, [], f"shard not found: {url}/synthetic-000007.tar"),
        "http 404": (f"{http_root[1]}/out/missing-000000.tar", {}, [],
                     f"shard not found: {http_root[1]}/out/missing-000000.tar (HTTP 404)"),
        "bad storage option": (url, {}, ["--storage-option", "anon"], "takes KEY=VALUE (got 'anon')"),
    }
    start = time.monotonic()
    procs = {name: _start_trainer(spec, tmp_path / name, env, *extra) for name, (spec, env, extra, _) in cases.items()}
    results = {name: _finish(proc) for name, proc in procs.items()}
    assert time.monotonic() - start < 60
    for name, proc in results.items():
        err = one_line_error(proc)
        assert cases[name][3] in err, (name, err)
        assert not (tmp_path / name).exists(), name  # refused before the run directory was touched


def test_access_denied_is_one_line_and_exit_2(build, s3_server, tmp_path):
    """The server checks credentials (moto's IAM auth): the test's made-up access key is refused."""
    _, url = build
    s3_server.require_auth(True)
    try:
        proc = _finish(_start_trainer(url, tmp_path / "r", {}))
    finally:
        s3_server.require_auth(False)
    err = one_line_error(proc)
    assert f"cannot list --shards {url}: access denied or no credentials" in err, err
