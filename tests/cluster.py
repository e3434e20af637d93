"""Real infrastructure for tests of the scale-out work: an S3-compatible server (moto) and a
two-node Ray cluster on this machine. No mocks: s3fs, pyarrow, boto3 and Ray talk to real servers
over 127.0.0.1 / the machine's address.

Used by the fixtures ``s3_server``, ``s3_env``, ``ray_two_nodes`` and ``ray_two_nodes_private_tmp``
in ``tests/conftest.py``; the context managers can also be used directly by a test that needs a
cluster of its own (e.g. one it is going to break).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

# -- S3 (moto) -----------------------------------------------------------------------------------------

#: Environment variables that could point an AWS client at real credentials or another endpoint;
#: removed wherever the test S3 environment is installed.
AWS_LEAKY_VARS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "FSSPEC_S3", "FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3_KEY", "FSSPEC_S3_SECRET",
)


def clear_fsspec_caches() -> None:
    """Forget every cached fsspec filesystem instance. fsspec caches instances per class (keyed by
    the constructor's arguments, not by the environment), and ``AbstractFileSystem.clear_instance_cache()``
    clears only the base class's cache, not ``S3FileSystem``'s: clear each class."""
    import fsspec

    classes = {fsspec.AbstractFileSystem}
    try:
        import s3fs

        classes.add(s3fs.S3FileSystem)
    except ImportError:
        pass
    for name in list(fsspec.registry):
        try:
            classes.add(fsspec.get_filesystem_class(name))
        except Exception:  # noqa: BLE001 - a backend whose library is not installed
            pass
    for cls in classes:
        cls.clear_instance_cache()


def closed_port() -> int:
    """A TCP port on 127.0.0.1 on which nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3-compatible server in a thread of this process, on 127.0.0.1 and a free port.

    ``endpoint``: ``http://127.0.0.1:PORT``. ``env``: the variables that point boto3, s3fs,
    pyarrow (and so pandas) at it, with dummy credentials and empty AWS config files (so no real
    credentials or profile on the machine are ever used). ``bucket()`` creates a fresh bucket.
    """

    def __init__(self, scratch_dir: str | os.PathLike | None = None):
        t0 = time.monotonic()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.start_s = time.monotonic() - t0
        self.stop_s: float | None = None
        self.endpoint = f"http://{host}:{port}"
        self._own_scratch = scratch_dir is None
        self.scratch = str(scratch_dir) if scratch_dir is not None else tempfile.mkdtemp(prefix="s3env-")
        os.makedirs(self.scratch, exist_ok=True)
        empty = os.path.join(self.scratch, "empty-aws-config")
        open(empty, "w").close()
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing-key",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_SHARED_CREDENTIALS_FILE": empty,
            "AWS_CONFIG_FILE": empty,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        """A boto3 S3 client for this server (independent of the process environment)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket (default: a fresh unique name) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def require_auth(self, on: bool) -> None:
        """Make the server check credentials (unknown access keys refused; moto's default is to accept
        any) or stop checking. Server-wide: a test that turns it on must turn it off (try/finally).
        Keys that work while it is on: those of ``moto.core.DEFAULT_ACCOUNT_ID``'s IAM users, none here."""
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """``{key: size}`` of the objects under ``prefix`` (straight from the server, no fsspec cache)."""
        out: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", ())})
        return out

    def stop(self) -> None:
        t0 = time.monotonic()
        self._server.stop()
        self.stop_s = time.monotonic() - t0
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


# -- processes ----------------------------------------------------------------------------------------

def _ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        out[int(d)] = int(stat[stat.rfind(")") + 2:].split()[1])
    return out


def descendants(roots) -> set[int]:
    """``roots`` and all their live descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


def alive(pids) -> dict[int, str]:
    """``{pid: command}`` of those ``pids`` that are still running (zombies count as gone), via ``ps``."""
    pids = sorted(set(pids))
    if not pids:
        return {}
    res = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-p", ",".join(map(str, pids))],
                         capture_output=True, text=True)
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and not parts[1].startswith("Z"):
            out[int(parts[0])] = parts[2][:120] if len(parts) > 2 else ""
    return out


def wait_gone(pids, timeout: float = 10.0) -> dict[int, str]:
    """Wait until none of ``pids`` runs; return those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive(left)
    return left


# -- Ray ----------------------------------------------------------------------------------------------

@dataclass
class RayCluster:
    """A running multi-node Ray cluster on this machine.

    ``address``: the GCS address (``IP:PORT``) for ``ray.init(address=...)`` / ``--ray-address``.
    ``node_ids``: hex node ids, head first. ``env``: an environment for subprocess drivers
    (``os.environ`` now, plus ``RAY_AUTH_MODE=disabled``). ``node_env``: variables the nodes (and so
    every Ray worker) were started with. ``temp_root``: the cluster's private Ray temp dir (sessions,
    logs, sockets, its ``ray_current_cluster`` address file). ``private_dir``: for the private-tmp
    variant, the directory the second node does not share with the driver.
    """

    address: str
    node_ids: list[str]
    temp_root: str
    node_env: dict = field(default_factory=dict)
    private_dir: str | None = None
    namespaced_node: dict | None = None  # private-tmp variant: what the second node reported at start
    start_s: float = 0.0
    stop_s: float | None = None
    _root_pids: list[int] = field(default_factory=list, repr=False)

    @property
    def env(self) -> dict:
        return {**os.environ, "RAY_AUTH_MODE": "disabled",
                "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "osmesa")}

    @property
    def session_dir(self) -> str:
        return os.path.realpath(os.path.join(self.temp_root, "ray", "session_latest"))

    def pids(self) -> set[int]:
        """Every live process of the cluster: GCS, raylets, agents, monitors and Ray workers."""
        return set(alive(descendants(self._root_pids)))

    def run_driver(self, code: str, *args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        """Run ``python -c code ADDRESS *args`` as a separate driver process; returns its result."""
        return subprocess.run([sys.executable, "-c", code, self.address, *map(str, args)], env=self.env,
                              capture_output=True, text=True, timeout=timeout, **kw)


@contextmanager
def _environ(values: dict):
    """Set ``values`` in ``os.environ`` for the block (processes Ray spawns inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# The second node of the private-tmp variant: run in its own mount namespace, with a tmpfs over the
# private directory, joined to the head like ``Cluster.add_node`` does; stops when stdin closes or on
# SIGTERM. Prints one JSON line with its node id once it is up.
_NAMESPACED_NODE = r"""
import json, os, signal, sys, threading
import ray, ray._private.node, ray._private.parameter, ray._private.services
gcs, private_dir, temp_dir = sys.argv[1:4]
params = ray._private.parameter.RayParams(
    gcs_address=gcs, num_cpus=1, num_gpus=0, object_store_memory=150 * 1024 * 1024, min_worker_port=0,
    max_worker_port=0, include_log_monitor=False, node_manager_port=0, dashboard_agent_listen_port=None,
    temp_dir=temp_dir)
node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
ray._private.services.wait_for_node(node.gcs_address, node.plasma_store_socket_name, 30)
print(json.dumps({"node_id": node.node_id, "sees_private": sorted(os.listdir(private_dir))}), flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
stop.wait()
node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
"""


@contextmanager
def two_node_ray(node_env: dict | None = None, private_dir: str | os.PathLike | None = None,
                 leak_timeout: float = 15.0):
    """A two-node Ray cluster on this machine (1 CPU each), torn down on exit with proof that none of
    its processes is left (RuntimeError naming the survivors otherwise, after killing them by pid).

    - Uses ``ray.cluster_utils.Cluster`` (in-process node management, Ray 2.60): subprocess drivers
      connect to ``address`` fine.
    - Private Ray temp dir (``RAY_TMPDIR`` while nodes start and stop): the cluster's sessions and its
      ``ray_current_cluster`` address file stay out of ``/tmp/ray``, so an address-less ``ray.init()``
      elsewhere on the machine (another test's local build) never joins this cluster by accident,
      and teardown never deletes another cluster's address file. No dashboard (fixed port 8265) and
      random dashboard-agent ports, so concurrent clusters on the machine do not collide.
    - ``node_env`` is set in the nodes' environment (inherited by every Ray worker), as a real
      cluster's nodes carry their own configuration (e.g. S3 credentials/endpoint).
    - ``private_dir``: the second node runs in its own mount namespace (``unshare -m``) with an empty
      tmpfs over ``private_dir``: files the driver writes there are invisible to that node (a
      multi-node cluster without a shared filesystem). Needs root or unprivileged user namespaces.
    """
    from ray.cluster_utils import Cluster

    temp_root = tempfile.mkdtemp(prefix="rayt-", dir="/tmp")  # short: Unix socket paths must stay < 108 bytes
    start_env = {"RAY_TMPDIR": temp_root, "RAY_AUTH_MODE": "disabled", **(node_env or {})}
    t0 = time.monotonic()
    cluster = None
    ns_proc = None
    info = None
    rc = None
    try:
        with _environ(start_env):
            cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                              head_node_args={"num_cpus": 1, "include_dashboard": False, "no_monitor": True,
                                              "dashboard_agent_listen_port": None})
            if private_dir is None:
                cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
                node_ids = [n.node_id for n in cluster.list_all_nodes()]
            else:
                private_dir = os.path.abspath(private_dir)
                if os.path.commonpath([private_dir, temp_root]) == private_dir:
                    raise ValueError(f"private_dir {private_dir} must not contain the Ray temp dir {temp_root}")
                os.makedirs(private_dir, exist_ok=True)
                unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
                script = 'mount --make-rprivate / 2>/dev/null; mount -t tmpfs none "$1" && shift && exec "$@"'
                err_log = os.path.join(temp_root, "namespaced-node.err")  # a file: a full pipe would block it
                with open(err_log, "w") as err:
                    ns_proc = subprocess.Popen(
                        [*unshare, "sh", "-c", script, "sh", private_dir, sys.executable, "-c", _NAMESPACED_NODE,
                         cluster.address, private_dir, os.path.join(temp_root, "ray")],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                        start_new_session=True)
                line = ns_proc.stdout.readline()
                if not line:
                    with open(err_log) as f:
                        raise RuntimeError(f"the namespaced Ray node did not start: {f.read()[-2000:]}")
                info = json.loads(line)
                node_ids = [cluster.head_node.node_id, info["node_id"]]
                _wait_alive_nodes(cluster, 2)
        roots = _node_pids(cluster)
        if ns_proc is not None:
            roots.append(ns_proc.pid)
        rc = RayCluster(address=cluster.address, node_ids=node_ids, temp_root=temp_root,
                        node_env=dict(node_env or {}), private_dir=str(private_dir) if private_dir else None,
                        namespaced_node=info, start_s=time.monotonic() - t0, _root_pids=roots)
        yield rc
    finally:
        t1 = time.monotonic()
        pids = descendants(rc._root_pids if rc is not None else _node_pids(cluster) if cluster is not None else [])
        if ns_proc is not None:
            pids |= descendants([ns_proc.pid])
            try:
                ns_proc.stdin.close()  # asks the namespaced node to stop its processes
                ns_proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(ns_proc.pid, signal.SIGKILL)  # its own session, started above
                except ProcessLookupError:
                    pass
                ns_proc.wait()
        if cluster is not None:
            with _environ({"RAY_TMPDIR": temp_root}):
                cluster.shutdown()
        left = wait_gone(pids, leak_timeout)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if rc is not None:
            rc.stop_s = time.monotonic() - t1
        shutil.rmtree(temp_root, ignore_errors=True)
        if left:
            raise RuntimeError(f"Ray processes left after shutdown (now killed): {left}")


def private_mounts_supported() -> str | None:
    """None if a process can be started in its own mount namespace with a tmpfs over a directory
    (``unshare -m`` as root, ``unshare -rm`` otherwise); else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    d = tempfile.mkdtemp(prefix="nsprobe-")
    try:
        cmd = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
        res = subprocess.run([*cmd, "sh", "-c", 'mount -t tmpfs none "$1" && touch "$1/x"', "sh", d],
                             capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            return f"{' '.join(cmd)} + mount -t tmpfs failed: {res.stderr.strip()[-300:]}"
        if os.listdir(d):
            return "the tmpfs mount leaked out of the namespace"
        return None
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _node_pids(cluster) -> list[int]:
    """The pids of the processes ``cluster`` started itself (GCS, raylets, agents' parents, monitors)."""
    return [p.process.pid for n in cluster.list_all_nodes() for ps in n.all_processes.values() for p in ps]


def _wait_alive_nodes(cluster, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(cluster.global_state._live_node_ids()) >= n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {n} Ray nodes alive after {timeout:.0f} s")
