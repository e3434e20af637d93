"""pairgen on a two-node Ray cluster writing to object storage, and the trainer reading it back
(issue 11). Real components: moto's S3 server on 127.0.0.1 (talked to through s3fs, as AWS would be)
and a two-node Ray cluster on this machine, both started by fixtures (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PAIRGEN = str(Path(sys.executable).with_name("pairgen"))
TRAINER = str(Path(sys.executable).with_name("trainer"))


def _objects(s3, bucket: str, prefix: str) -> dict[str, str]:
    """{key below prefix: SHA-256 of its bytes}, straight from the server."""
    client = s3.client()
    found = {}
    for key in s3.objects(bucket, prefix):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        found[key[len(prefix):]] = hashlib.sha256(body).hexdigest()
    return found


def _build(out: str, *extra: str) -> list[str]:
    return [PAIRGEN, "build", "--out", out, "--num-pairs", "60", "--shard-size", "6", "--seed", "5", "--quiet",
            *extra]


def test_two_node_build_into_s3_survives_kill_9_and_trains(ray_two_nodes, s3_env, tmp_path):
    s3, env = s3_env, {**ray_two_nodes.env, **s3_env.env}
    bucket = s3.bucket()
    # the reference: the same build, uninterrupted, in this process's machine (one worker)
    ref = subprocess.run(_build(f"s3://{bucket}/ref", "--local"), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    # on the cluster: --workers defaults to the cluster's 2 CPUs, one per node; killed mid-build
    cmd = _build(f"s3://{bucket}/run", "--ray-address", ray_two_nodes.address)
    log = tmp_path / "driver.log"
    with open(log, "w") as f:
        driver = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while driver.poll() is None and time.time() < deadline:
        if sum(k.startswith("run/stats/") for k in s3.objects(bucket, "run/")) >= 2:
            break
        time.sleep(0.3)
    assert driver.poll() is None, log.read_text()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    text = log.read_text()
    assert "2 worker(s) ready on 2 node(s)" in text, text
    partial = s3.objects(bucket, "run/")
    assert 2 <= sum(k.startswith("run/stats/") for k in partial) < 10, sorted(partial)
    verify = subprocess.run([PAIRGEN, "verify", f"s3://{bucket}/run"], env=env, capture_output=True, text=True)
    assert verify.returncode == 1 and "planned shard" in verify.stdout
    # the same command again completes the build; every object equals the uninterrupted build's
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout
    assert _objects(s3, bucket, "run/") == _objects(s3, bucket, "ref/")
    verify = subprocess.run([PAIRGEN, "verify", f"s3://{bucket}/run"], env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert '"planned_pairs": 60' in verify.stdout
    stats = subprocess.run([PAIRGEN, "stats", f"s3://{bucket}/run"], env=env, capture_output=True, text=True)
    assert stats.returncode == 0 and stats.stdout.startswith("60 pairs in 10 shards"), stats.stdout + stats.stderr
    sheet = tmp_path / "sheet.png"
    preview = subprocess.run([PAIRGEN, "preview", f"s3://{bucket}/run", "--out", str(sheet), "--num", "4"],
                             env=env, capture_output=True, text=True)
    assert preview.returncode == 0 and sheet.stat().st_size > 10_000, preview.stderr
    # the trainer streams the bucket, with --mix read from the manifests next to the shards
    run_dir = tmp_path / "train"
    train = subprocess.run([TRAINER, "pretrain", "--shards", f"s3://{bucket}/run", "--mix", "synthetic=1",
                            "--model", "tiny", "--steps", "2", "--batch-size", "4", "--workers", "0",
                            "--out", str(run_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    import torch

    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2
    # and every batch came from the bucket: the run's config names the remote shards
    assert f"s3://{bucket}/run" in (run_dir / "config.json").read_text()


def test_local_out_not_shared_by_every_node_is_refused(ray_two_nodes_private_tmp):
    """A local --out on a cluster whose second node does not see the driver's directory: one line,
    exit 2, before any shard is built."""
    cluster = ray_two_nodes_private_tmp
    out = Path(cluster.private_dir) / "out"
    r = subprocess.run([PAIRGEN, "build", "--out", str(out), "--num-pairs", "4", "--shard-size", "2",
                        "--ray-address", cluster.address, "--quiet"], env=cluster.env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "do not see" in err[0] and "s3://" in err[0], r.stderr
    assert not list(out.glob("*.tar")) and not list(out.glob("stats/*"))


@pytest.mark.parametrize("case", ["no such bucket", "unknown protocol", "unreachable endpoint", "no credentials"])
def test_bad_object_storage_is_one_line_before_anything_is_written(s3_env, tmp_path, case):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out, extra = "s3://no-such-bucket-here/x", []
    if case == "unknown protocol":
        out = "foo://bucket/x"
    elif case == "unreachable endpoint":
        from cluster import closed_port

        out = f"s3://{s3_env.bucket()}/x"
        extra = ["--storage-option", f"endpoint_url=http://127.0.0.1:{closed_port()}",
                 "--storage-option", "config_kwargs.connect_timeout=1",
                 "--storage-option", "config_kwargs.retries.max_attempts=1"]
    elif case == "no credentials":
        out = f"s3://{s3_env.bucket()}/x"
        env.pop("AWS_ACCESS_KEY_ID")
        env.pop("AWS_SECRET_ACCESS_KEY")
    t0 = time.time()
    r = subprocess.run([PAIRGEN, "build", "--out", out, "--num-pairs", "2", "--local", "--quiet", *extra],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("pairgen: error: --out"), r.stderr
    expected = {"no such bucket": "no such bucket", "unknown protocol": "Protocol not known",
                "unreachable endpoint": "endpoint unreachable", "no credentials": "credentials"}[case]
    assert expected in r.stderr, r.stderr
    assert time.time() - t0 < 60
    if case in ("unreachable endpoint", "no credentials"):
        assert not s3_env.objects(out.split("/")[2], "")  # nothing was written


def test_workers_running_other_code_are_refused(tmp_path):
    """Every worker must run the driver's crocoman: nodes that import another copy of the code (one
    changed line) make the build stop with one line naming the host, before any shard is built."""
    import shutil

    from cluster import two_node_ray

    repo = Path(__file__).resolve().parent.parent
    other = tmp_path / "other-checkout"
    for pkg in ("pairgen", "manifests"):
        shutil.copytree(repo / pkg, other / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "pairgen" / "writer.py", "a") as f:
        f.write("\n# another version\n")
    out = tmp_path / "out"
    with two_node_ray(node_env={"PYTHONPATH": str(other)}) as cluster:
        r = subprocess.run([PAIRGEN, "build", "--out", str(out), "--num-pairs", "2", "--shard-size", "1",
                            "--ray-address", cluster.address, "--quiet"], env=cluster.env, capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)  # Ray puts the driver's cwd first on workers' sys.path
    assert r.returncode == 2, r.stdout + r.stderr
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "runs crocoman" in err[0] and "this driver" in err[0], r.stderr
    assert not list(out.glob("*.tar"))


def test_real_source_plans_as_ray_tasks_on_the_cluster(ray_two_nodes, penn_units, tmp_path):
    """Issue 12: with --ray-address, a real source's units are loaded and mined as Ray tasks on the
    cluster's nodes (not on the driver's cores alone); the plan is the one a --local build makes."""
    import pyarrow.parquet as pq

    from pairgen.real.source import PLAN_BATCH

    base = penn_units(3 * PLAN_BATCH)  # 3 batches: planned in parallel
    common = ["--source", "pennaction", "--root", str(base), "--num-pairs", "96", "--shard-size", "32", "--seed", "4",
              "--quiet"]
    cluster = subprocess.run([PAIRGEN, "build", *common, "--out", str(tmp_path / "c"), "--ray-address",
                              ray_two_nodes.address], capture_output=True, text=True, env=ray_two_nodes.env, timeout=600)
    assert cluster.returncode == 0, cluster.stderr[-3000:]
    assert f"planning {3 * PLAN_BATCH} units in 3 Ray tasks on the cluster (2 CPUs)" in cluster.stderr
    local = subprocess.run([PAIRGEN, "build", *common, "--out", str(tmp_path / "l"), "--local"],
                           capture_output=True, text=True, env=ray_two_nodes.env, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]

    def plan(out):
        t = pq.read_table(out / "plan-pennaction.parquet", columns=["index", "planned", "digest", "payload"])
        return sorted(zip(*(t.column(c).to_pylist() for c in t.column_names)))

    assert plan(tmp_path / "c") == plan(tmp_path / "l")
    sums = [{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / o).glob("*.tar")} for o in "cl"]
    assert sums[0] == sums[1] and len(sums[0]) == 3
