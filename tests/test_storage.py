"""manifests.storage.Store on local disk and on a real S3-compatible server (moto, see the
``s3_server``/``s3_env`` fixtures), every behaviour on both; and the test infrastructure itself
(the moto server reaching subprocesses, the two-node Ray clusters and their clean teardown)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from manifests import layout
from manifests.storage import StorageError, Store, describe_error, is_url, parse_options


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A fresh, empty build root: a local directory, or a prefix in a fresh bucket on the moto server."""
    if request.param == "local":
        yield Store(tmp_path / "out")
        return
    srv = request.getfixturevalue("s3_env")
    store = Store(f"s3://{srv.bucket()}/builds/run1")
    yield store
    shutil.rmtree(store.scratch(layout.TMP_DIR), ignore_errors=True)  # Store never removes its upload folder


def _objects(store: Store) -> dict[str, int]:
    """What is really stored under the root, ``{relative path: size}``, bypassing Store and fsspec."""
    if store.local:
        out = {}
        for d, _, files in os.walk(store.root):
            for f in files:
                p = os.path.join(d, f)
                out[os.path.relpath(p, store.root).replace(os.sep, "/")] = os.path.getsize(p)
        return out
    import boto3

    bucket, _, prefix = store.root.partition("/")
    client = boto3.client("s3")  # s3_env points it at the moto server
    keys = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys.update({o["Key"][len(prefix) + 1:]: o["Size"] for o in page.get("Contents", ())})
    return keys


# -- round trip ---------------------------------------------------------------------------------------

def test_round_trip(store):
    assert store.listdir() == [] and not store.exists("a/b.bin") and store.stat("a/b.bin") is None
    t0 = time.time()
    store.makedirs("a")
    store.write_bytes("a/b.bin", b"hello")
    assert store.read_bytes("a/b.bin") == b"hello" and store.read_text("a/b.bin") == "hello"
    assert store.exists("a/b.bin") and store.exists("a") and store.isdir("a") and not store.isdir("a/b.bin")
    st = store.stat("a/b.bin")
    assert st["size"] == 5 and abs(st["mtime"] - t0) < 120  # S3 LastModified has 1 s resolution
    with store.open("a/b.bin") as f:
        assert f.read() == b"hello"

    store.write_bytes("a/b.bin", b"replaced!")  # overwrite
    assert store.read_bytes("a/b.bin") == b"replaced!" and store.stat("a/b.bin")["size"] == 9
    with store.open("c.txt", "wb") as f:
        f.write(b"x" * 1000)
    assert store.read_bytes("c.txt") == b"x" * 1000 and store.stat("c.txt")["size"] == 1000

    scratch = store.scratch(layout.TMP_DIR)
    src = os.path.join(scratch, "upload.bin")
    with open(src, "wb") as f:
        f.write(b"\0\1\2" * 100)
    store.put_file("d/e/upload.bin", src)
    assert not os.path.exists(src)
    assert store.read_bytes("d/e/upload.bin") == b"\0\1\2" * 100

    assert store.listdir() == sorted(["a", "c.txt", "d"] + ([layout.TMP_DIR] if store.local else []))
    assert store.listdir("a") == ["b.bin"] and store.listdir("d") == ["e"] and store.listdir("d/e") == ["upload.bin"]
    assert _objects(store) == {"a/b.bin": 9, "c.txt": 1000, "d/e/upload.bin": 300}  # no partial/probe leftovers

    store.remove("a/b.bin")
    store.remove("a/b.bin")  # removing a missing file is not an error
    store.remove("never/was")
    assert not store.exists("a/b.bin") and store.stat("a/b.bin") is None and store.listdir("a") == []
    with pytest.raises(FileNotFoundError):
        store.read_bytes("a/b.bin")


def test_listdir_of_missing_prefix_or_file_is_empty(store):
    assert store.listdir("nope") == [] and store.listdir("nope/deeper") == []
    store.write_bytes("ab/x", b"1")
    store.write_bytes("a/y", b"2")
    store.write_bytes("file", b"3")
    assert store.listdir("a") == ["y"]  # not confused by the sibling prefix "ab"
    assert store.listdir("ab") == ["x"]
    assert store.listdir("file") == []  # a file is not a folder
    assert store.listdir("a/y") == []


def test_names_and_urls(store, tmp_path):
    if store.local:
        assert store.url == store.root == str(tmp_path / "out") and store.url_of("x/y.tar") == str(tmp_path / "out/x/y.tar")
        assert Store(f"file://{tmp_path}/out").root == store.root
        assert store.free_space().endswith(f"free on {tmp_path}")
    else:
        assert store.url.startswith("s3://") and store.url_of("x/y.tar") == store.url + "/x/y.tar"
        assert Store(store.url + "/").root == store.root  # a trailing slash changes nothing
        assert store.free_space() == "object storage"
    assert store.path() == store.root and repr(store) == f"Store({store.url!r})"
    assert is_url(store.url) != store.local and layout.as_store(store) is store


def test_s3_bucket_root(s3_env):
    """A whole bucket as the root (``s3://bucket``, no prefix)."""
    bucket = s3_env.bucket()
    store = Store(f"s3://{bucket}")
    store.check_writable()
    store.write_bytes("stats/x-000000.json", b"{}")
    assert store.listdir() == ["stats"] and store.listdir("stats") == ["x-000000.json"]
    assert s3_env.objects(bucket) == {"stats/x-000000.json": 2}


# -- atomic writes ------------------------------------------------------------------------------------

class _Poller(threading.Thread):
    """Lists ``folder`` (and stats what it finds) as fast as it can until stopped; records every name
    that is not one of ``finals`` and every final name seen with a size other than its final size."""

    def __init__(self, store: Store, folder: str, finals: dict[str, int]):
        super().__init__(daemon=True)
        self.store, self.folder, self.finals = store, folder, finals
        self.stop = threading.Event()
        self.bad: list = []
        self.polls = 0
        self.seen: set[str] = set()

    def run(self):
        while not self.stop.is_set():
            for name in self.store.listdir(self.folder):
                self.seen.add(name)
                if name not in self.finals:
                    self.bad.append(("name", name))
                    continue
                st = self.store.stat(f"{self.folder}/{name}")
                if st is not None and st["size"] != self.finals[name]:
                    self.bad.append(("size", name, st["size"]))
            self.polls += 1


def test_put_file_is_atomic(store):
    size = 8 << 20
    names = [f"synthetic-{i:06d}.parquet" for i in range(3)]
    scratch = store.scratch(layout.TMP_DIR)
    if store.local:
        assert scratch == os.path.join(store.root, layout.TMP_DIR)  # same filesystem: rename is possible
    else:
        assert not scratch.startswith(store.root)  # a private local folder
    poller = _Poller(store, layout.MANIFEST_DIR, dict.fromkeys(names, size))
    poller.start()
    try:
        for i, name in enumerate(names):
            src = os.path.join(scratch, f"{name}.{os.getpid()}")
            with open(src, "wb") as f:
                for _ in range(size >> 20):
                    f.write(bytes([i]) * (1 << 20))
            inode = os.stat(src).st_ino
            store.put_file(layout.manifest_rel(name.removesuffix(".parquet")), src)
            assert not os.path.exists(src)  # the scratch file is gone: moved (local) or uploaded and deleted
            if store.local:  # a rename, not a copy: the same inode now has the final name
                assert os.stat(store.path(layout.MANIFEST_DIR + "/" + name)).st_ino == inode
            time.sleep(0.05)
    finally:
        poller.stop.set()
        poller.join(10)
    assert poller.polls > 3 and poller.seen == set(names)
    assert poller.bad == []  # never a name that is not final, never a final name with partial content
    assert os.listdir(scratch) == []
    assert _objects(store) == {f"{layout.MANIFEST_DIR}/{n}": size for n in names}
    assert store.read_bytes(layout.manifest_rel("synthetic-000002"))[:4] == b"\2" * 4


def test_write_bytes_leaves_no_partial_file(store):
    for i in range(5):
        store.write_bytes(layout.config_rel("synthetic"), json.dumps({"i": i}).encode())
    assert json.loads(store.read_text(layout.config_rel("synthetic"))) == {"i": 4}
    assert store.listdir() == ["build-synthetic.json"] and list(_objects(store)) == ["build-synthetic.json"]


# -- layout on both -----------------------------------------------------------------------------------

def _fake_build(store: Store) -> None:
    for name in ("synthetic-000000", "synthetic-000001", "aist-000003"):
        store.write_bytes(layout.tar_rel(name), name.encode())
        store.write_bytes(layout.manifest_rel(name), b"parquet")
    for name in ("synthetic-000000", "synthetic-000001"):  # aist-000003: no stats, so not finished
        store.write_bytes(layout.stats_rel(name), b"{}")
    store.write_bytes(f"{layout.STATS_DIR}/notes.txt", b"not a shard")
    store.write_bytes(f"{layout.STATS_DIR}/Bad-000001.json", b"{}")  # upper case: not a shard name
    for rel in (layout.config_rel("synthetic"), layout.config_rel("aist"), layout.plan_rel("synthetic"),
                layout.failures_rel("aist"), "build-notes.txt"):
        store.write_bytes(rel, b"{}")


def test_layout_functions(store):
    assert layout.finished_shards(store) == [] and layout.shard_urls(store) == [] and layout.build_configs(store) == []
    _fake_build(store)
    for out in (store, store.url):  # a Store, or the URL / path itself
        assert layout.finished_shards(out) == ["synthetic-000000", "synthetic-000001"]
        assert layout.build_configs(out) == ["aist", "synthetic"]
        urls = layout.shard_urls(out)
        assert urls == [store.url_of("synthetic-000000.tar"), store.url_of("synthetic-000001.tar")]
    if store.local:
        assert urls[0] == os.path.join(store.root, "synthetic-000000.tar")
    else:
        assert urls[0] == f"s3://{store.root}/synthetic-000000.tar"
    import fsspec

    for url, name in zip(urls, ("synthetic-000000", "synthetic-000001")):
        with fsspec.open(url, "rb") as f:  # how readers outside the project (webdataset) open them
            assert f.read() == name.encode()
    sub = Store(store.url_of("missing-subfolder"))  # a root that does not exist (yet)
    assert layout.finished_shards(sub) == [] and layout.build_configs(sub) == [] and sub.listdir() == []


def test_layout_with_storage_options_only(s3_server, monkeypatch):
    """No AWS environment at all: endpoint and credentials given as storage options (``--storage-option``)."""
    from cluster import AWS_LEAKY_VARS, clear_fsspec_caches

    for key in (*s3_server.env, *AWS_LEAKY_VARS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", s3_server.env["AWS_SHARED_CREDENTIALS_FILE"])
    monkeypatch.setenv("AWS_CONFIG_FILE", s3_server.env["AWS_CONFIG_FILE"])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    clear_fsspec_caches()
    bucket = s3_server.bucket()
    opts = parse_options([f"client_kwargs.endpoint_url={s3_server.endpoint}", "client_kwargs.region_name=us-east-1",
                          "key=testing-key", "secret=testing-secret"])
    store = Store(f"s3://{bucket}/p", opts)
    store.check_writable()
    _fake_build(store)
    assert layout.finished_shards(f"s3://{bucket}/p", opts) == ["synthetic-000000", "synthetic-000001"]
    assert layout.build_configs(f"s3://{bucket}/p", opts) == ["aist", "synthetic"]
    assert layout.shard_urls(f"s3://{bucket}/p", opts)[0] == f"s3://{bucket}/p/synthetic-000000.tar"
    assert s3_server.objects(bucket, "p/stats/") == {"p/stats/synthetic-000000.json": 2, "p/stats/synthetic-000001.json": 2,
                                                     "p/stats/notes.txt": 11, "p/stats/Bad-000001.json": 2}
    clear_fsspec_caches()


# -- pandas reads a manifest folder -------------------------------------------------------------------

def _write_manifests(store: Store) -> "pandas.DataFrame":
    import pandas as pd

    frames = []
    for i in range(3):
        df = pd.DataFrame({"key": [f"{i:06d}-{j:03d}" for j in range(5)], "shard": i, "kind": ["cross_view", "cross_pose"][i % 2]})
        frames.append(df)
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        if i == 2:  # one through put_file, as pairgen writes them
            src = os.path.join(store.scratch(layout.TMP_DIR), "m.parquet")
            with open(src, "wb") as f:
                f.write(buf.getvalue())
            store.put_file(layout.manifest_rel(layout.shard_name("synthetic", i)), src)
            if not store.local:
                shutil.rmtree(os.path.dirname(src))  # Store never removes its private upload folder
        else:
            store.write_bytes(layout.manifest_rel(layout.shard_name("synthetic", i)), buf.getvalue())
    store.write_bytes(layout.stats_rel("synthetic-000000"), b"{}")  # a sibling folder: not read
    return pd.concat(frames, ignore_index=True)


def test_pandas_reads_manifest_folder(store):
    import pandas as pd

    want = _write_manifests(store)
    url = store.url_of(layout.MANIFEST_DIR)  # "s3://bucket/prefix/manifest", or a local path
    got = pd.read_parquet(url).sort_values("key", ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_pandas_reads_manifest_folder_with_storage_options(s3_env):
    """``storage_options`` make pandas go through fsspec/s3fs instead of pyarrow's own S3 client."""
    import pandas as pd

    bucket = s3_env.bucket()
    want = _write_manifests(Store(f"s3://{bucket}/prefix"))
    got = pd.read_parquet(f"s3://{bucket}/prefix/manifest",
                          storage_options={"client_kwargs": {"endpoint_url": s3_env.endpoint}})
    pd.testing.assert_frame_equal(got.sort_values("key", ignore_index=True), want, check_dtype=False)


# -- check_writable -----------------------------------------------------------------------------------

def _one_line_error(store_or_url, options=None) -> str:
    with pytest.raises(StorageError) as info:
        (store_or_url if isinstance(store_or_url, Store) else Store(store_or_url, options)).check_writable()
    msg = str(info.value)
    assert "\n" not in msg and 0 < len(msg) < 400, msg
    return msg


def test_check_writable_succeeds_and_leaves_nothing(store):
    store.check_writable()
    assert _objects(store) == {} and store.listdir() == []


def test_check_writable_unknown_protocol():
    msg = _one_line_error("foo://x")
    assert msg.startswith("foo://x: ") and "foo" in msg[8:]


def test_check_writable_missing_bucket(s3_env):
    name = f"missing-{uuid.uuid4().hex[:8]}"
    msg = _one_line_error(f"s3://{name}/prefix")
    assert msg.startswith(f"s3://{name}/prefix: cannot write there (no such bucket")


def test_check_writable_missing_credentials(s3_env, monkeypatch):
    """No key in the environment, empty AWS config/credential files, no instance metadata: botocore
    finds no credentials and s3fs does NOT fall back to anonymous access. moto rejects an anonymous
    (unsigned) write too, so even an explicit ``anon=True`` fails here."""
    from cluster import clear_fsspec_caches

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    clear_fsspec_caches()
    bucket = s3_env.bucket()
    msg = _one_line_error(f"s3://{bucket}/p")
    assert "cannot write there (access denied or no credentials (Unable to locate credentials))" in msg
    assert s3_env.objects(bucket) == {}
    # Explicit anonymous access: moto accepts an unsigned PUT (and LIST) but refuses the unsigned
    # DELETE (and GET/HEAD), so the check fails saying so; its probe object stays, under a name
    # pairgen owns (a resumed build removes it, verify reports it as a leftover, not a stray file).
    msg = _one_line_error(f"s3://{bucket}/p", {"anon": True})
    assert "can write but not delete there" in msg and "Forbidden" in msg
    left = set(s3_env.objects(bucket))
    assert len(left) <= 1 and all(k.startswith("p/.probe-") for k in left)
    from manifests import layout

    assert all(layout.is_ours(k.split("/", 1)[1]) for k in left)


def test_check_writable_wrong_credentials(s3_env):
    bucket = s3_env.bucket()  # while the server accepts any key
    s3_env.require_auth(True)
    try:
        msg = _one_line_error(f"s3://{bucket}/p")
    finally:
        s3_env.require_auth(False)
    assert "cannot write there (access denied or no credentials (" in msg
    assert s3_env.objects(bucket) == {}


def test_check_writable_unreachable_endpoint(s3_env, monkeypatch):
    from cluster import clear_fsspec_caches, closed_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    clear_fsspec_caches()
    t0 = time.monotonic()
    msg = _one_line_error("s3://bkt/p", {"config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}})
    assert time.monotonic() - t0 < 5
    assert "cannot write there (endpoint unreachable (Could not connect to the endpoint URL" in msg


@pytest.mark.parametrize("exc, want", [
    (FileNotFoundError("The specified bucket does not exist"), "no such bucket"),
    (PermissionError("Forbidden"), "access denied or no credentials"),
    (OSError("Could not connect to the endpoint URL: http://x"), "endpoint unreachable"),
    (ValueError("something\nelse"), "ValueError: something else"),
])
def test_describe_error(exc, want):
    assert describe_error(exc).startswith(want) and "\n" not in describe_error(exc)


# -- parse_options ------------------------------------------------------------------------------------

def test_parse_options():
    assert parse_options(None) == {} and parse_options([]) == {}
    got = parse_options([
        "client_kwargs.endpoint_url=http://127.0.0.1:9000", "client_kwargs.region_name=eu-west-1",
        "config_kwargs.retries.max_attempts=1", "config_kwargs.connect_timeout=2.5", "anon=false",
        "use_ssl=true", "token=null", "s3_additional_kwargs={\"ACL\": \"private\"}", "tags=[1, 2]",
        "key=\"12345\"", "secret=a=b=c", "profile=my profile", " padded = x"])
    assert got == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2.5},
        "anon": False, "use_ssl": True, "token": None, "s3_additional_kwargs": {"ACL": "private"},
        "tags": [1, 2], "key": "12345", "secret": "a=b=c", "profile": "my profile", "padded": " x"}
    assert parse_options(["key=12345"]) == {"key": 12345}  # JSON wins: quote a numeric string ("12345")
    for bad in ("novalue", "=x", " =x"):
        with pytest.raises(StorageError, match="KEY=VALUE"):
            parse_options([bad])
    assert parse_options(["a.b=1", "a=2"]) == {"a": 2}  # the last one wins
    with pytest.raises(StorageError, match="'a' is already set to a value, not a group"):
        parse_options(["a=1", "a.b=2"])  # was a TypeError traceback


# -- the infrastructure itself ------------------------------------------------------------------------

def test_s3_env_reaches_subprocesses(s3_env):
    bucket = s3_env.bucket()
    Store(f"s3://{bucket}/p").write_bytes("hello.txt", b"from the test process")
    code = ("import sys; from manifests.storage import Store; s = Store(sys.argv[1]); "
            "print(s.read_text('hello.txt')); s.write_bytes('back.txt', b'from a subprocess')")
    res = subprocess.run([sys.executable, "-c", code, f"s3://{bucket}/p"], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "from the test process"
    assert Store(f"s3://{bucket}/p").read_bytes("back.txt") == b"from a subprocess"


# A driver in its own process, as the pairgen CLI with --ray-address: one actor pinned to each node
# reports its node, pid, what it sees and writes an object to S3 with the node's own configuration.
_DRIVER = r"""
import json, os, sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], logging_level="WARNING", runtime_env={"env_vars": {"FROM_DRIVER": "yes"}})
bucket, check_dir, wait = sys.argv[2], sys.argv[3], sys.argv[4] == "wait"

@ray.remote(num_cpus=1)
class Probe:
    def report(self, bucket, check_dir):
        from manifests.storage import Store
        node = ray.get_runtime_context().get_node_id()
        Store(f"s3://{bucket}/nodes").write_bytes(f"{node}.txt", node.encode())
        return {"node": node, "pid": os.getpid(), "from_driver": os.environ.get("FROM_DRIVER"),
                "sees": os.path.exists(os.path.join(check_dir, "marker")) if check_dir != "-" else None}

alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
probes = [Probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in alive]
print(json.dumps(ray.get([p.report.remote(bucket, check_dir) for p in probes])), flush=True)
if wait:
    sys.stdin.read()  # keep the actors alive until told
"""


def _check_reports(reports, cluster, srv, bucket):
    assert sorted(r["node"] for r in reports) == sorted(cluster.node_ids) and len(set(cluster.node_ids)) == 2
    assert all(r["from_driver"] == "yes" for r in reports)  # the driver's runtime_env reaches both nodes
    # every worker reached the S3 server with the nodes' own configuration
    assert srv.objects(bucket, "nodes/") == {f"nodes/{n}.txt": len(n) for n in cluster.node_ids}


def test_two_node_ray_leaves_no_process(s3_server):
    """The cluster the fixtures use, torn down while a driver still holds actors on both nodes:
    afterwards ``ps`` finds none of its processes (GCS, raylets, agents, monitors, workers)."""
    from cluster import alive, two_node_ray

    bucket = s3_server.bucket()
    with two_node_ray(node_env=s3_server.env) as c:  # exactly what the ray_two_nodes fixture runs
        assert c.address.rsplit(":", 1)[1].isdigit() and len(c.node_ids) == 2
        assert c.env["RAY_AUTH_MODE"] == "disabled" and c.node_env["AWS_ENDPOINT_URL"] == s3_server.endpoint
        assert "RAY_TMPDIR" not in os.environ  # set only while nodes start and stop
        default_file = "/tmp/ray/ray_current_cluster"  # never advertised machine-wide
        assert not os.path.exists(default_file) or open(default_file).read().strip() != c.address
        assert open(os.path.join(c.temp_root, "ray", "ray_current_cluster")).read().strip() == c.address
        driver = subprocess.Popen([sys.executable, "-c", _DRIVER, c.address, bucket, "-", "wait"], env=c.env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = driver.stdout.readline()
            assert line, driver.stderr.read()[-3000:] if driver.poll() is not None else "driver said nothing"
            reports = json.loads(line)
            _check_reports(reports, c, s3_server, bucket)
            pids = c.pids()
            actor_pids = {r["pid"] for r in reports}
            assert actor_pids <= pids and len(pids) >= 8, pids  # GCS, 2 raylets, agents, monitors, 2 actors
            session_dir = c.session_dir
            assert os.path.isdir(session_dir) and session_dir.startswith(c.temp_root)
        except BaseException:
            driver.kill()
            raise
    # after teardown (the driver is still connected)
    assert alive(pids) == {}, alive(pids)
    ps = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout
    assert c.temp_root not in ps and session_dir not in ps
    assert not os.path.exists(c.temp_root)
    assert c.start_s > 0 and c.stop_s is not None
    driver.stdin.close()
    driver.kill()  # ours; its cluster is gone
    driver.wait(30)


def test_ray_two_nodes_private_tmp(ray_two_nodes_private_tmp, s3_server):
    c = ray_two_nodes_private_tmp
    out = os.path.join(c.private_dir, uuid.uuid4().hex[:8])
    os.makedirs(out)
    open(os.path.join(out, "marker"), "w").close()
    assert c.namespaced_node["node_id"] == c.node_ids[1] and c.namespaced_node["sees_private"] == []
    bucket = s3_server.bucket()
    res = c.run_driver(_DRIVER, bucket, out, "exit")
    assert res.returncode == 0, res.stderr[-3000:]
    reports = json.loads(res.stdout.strip().splitlines()[-1])
    _check_reports(reports, c, s3_server, bucket)
    sees = {r["node"]: r["sees"] for r in reports}
    assert sees == {c.node_ids[0]: True, c.node_ids[1]: False}  # the head shares the driver's disk, node 2 does not
