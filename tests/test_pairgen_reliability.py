"""Faults a user can cause or meet, and that a re-run of the same build repairs (issue 10).

Each damage is made to a copy of one small synthetic build: ``pairgen verify`` must report it, a
re-run of the same build must repair it, and the repaired shards must equal the originals byte for
byte. Disk-full and read-only outputs use a real tmpfs in a user+mount namespace (``unshare``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from manifests import layout
from pairgen.build import BuildError, run_build
from pairgen.config import BuildConfig
from pairgen.verify import verify

PAIRGEN = str(Path(sys.executable).with_name("pairgen"))


def _config(out: Path, **kw) -> BuildConfig:
    return BuildConfig(**{"source": "synthetic", "out": str(out), "num_pairs": 12, "shard_size": 4, "seed": 3,
                          "local": True, **kw})


def _files(out: Path) -> dict[str, str]:
    """SHA-256 of every tar and manifest, by relative path."""
    files = sorted(out.glob("*.tar")) + sorted((out / layout.MANIFEST_DIR).glob("*.parquet"))
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "shards"
    summary = run_build(_config(out), progress=False)
    assert summary["pairs_built"] == 12 and summary["shards_built"] == 3
    assert verify(str(out))["ok"]
    return out, _files(out)


def _rewrite_tar(tar: Path, edit) -> None:
    """Rewrite ``tar`` with ``edit(members) -> members`` applied to its [(name, bytes)] list."""
    with tarfile.open(tar) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    tar.write_bytes(buf.getvalue())


def _flip_byte(tar: Path) -> None:
    data = bytearray(tar.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside a JPEG: same size, the tar still parses
    tar.write_bytes(bytes(data))


def _edit_json(tar: Path) -> None:
    def edit(members):
        out, done = [], False
        for name, data in members:
            if name.endswith(".json") and not done:  # the first sample's JSON only
                meta = json.loads(data)
                meta["subject"] = "someone-else"
                data, done = json.dumps(meta).encode(), True
            out.append((name, data))
        return out

    _rewrite_tar(tar, edit)


def _add_dotdot_member(tar: Path) -> None:
    _rewrite_tar(tar, lambda members: members[:1] + [("../escape.json", b"{}")] + members[1:])


DAMAGE = {
    "deleted tar": (lambda d: (d / "synthetic-000001.tar").unlink(), "tar missing"),
    "truncated tar": (lambda d: (d / "synthetic-000001.tar").write_bytes(
        (d / "synthetic-000001.tar").read_bytes()[:70000]), "bytes, its stats say"),
    "bit-flipped tar": (lambda d: _flip_byte(d / "synthetic-000001.tar"), "SHA-256 differs"),
    "deleted manifest": (lambda d: (d / "manifest" / "synthetic-000001.parquet").unlink(), "manifest missing"),
    "empty stats": (lambda d: (d / "stats" / "synthetic-000001.json").write_text(""), "unreadable stats"),
    "edited JSON": (lambda d: _edit_json(d / "synthetic-000001.tar"), "JSON disagrees with its manifest row"),
    "../ member": (lambda d: _add_dotdot_member(d / "synthetic-000001.tar"), "is not a plain <key>.<suffix>"),
    "stray shard": (lambda d: (shutil.copy(d / "synthetic-000001.tar", d / "synthetic-000007.tar"),
                               shutil.copy(d / "stats" / "synthetic-000001.json", d / "stats" / "synthetic-000007.json")),
                    "synthetic-000007: not in the synthetic build's plan"),
    "missing planned shard": (lambda d: [p.unlink() for p in (d / "synthetic-000002.tar",
                                                              d / "manifest" / "synthetic-000002.parquet",
                                                              d / "stats" / "synthetic-000002.json")],
                              "synthetic-000002: planned shard missing"),
    "leftover partial": (lambda d: (d / ".tmp").mkdir(exist_ok=True) or
                         (d / ".tmp" / "synthetic-000002.tar.999.partial").write_bytes(b"x"),
                         "leftover in-progress file"),
    "failures file": (lambda d: (d / "failures-synthetic.json").write_text('{"failed": [{"shard": "x"}]}'),
                      "failed in the last run"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_detects_damage_and_a_rerun_repairs_it(pristine, tmp_path, damage):
    src, hashes = pristine
    out = tmp_path / "out"
    shutil.copytree(src, out)  # copy2 keeps mtimes: the copy resumes without re-hashing
    make, expected = DAMAGE[damage]
    make(out)
    report = verify(str(out))
    assert not report["ok"]
    assert any(expected in p for p in report["problems"]), report["problems"]
    logs = []
    summary = run_build(_config(out), progress=False, log=logs.append)
    assert summary["shards_built"] <= 1, summary
    report = verify(str(out))
    assert report["ok"], report["problems"]
    assert _files(out) == hashes


def test_resume_rebuilds_a_damaged_finished_shard_from_the_cli(pristine, tmp_path):
    """The issue's reproduction: a deleted finished tar made the re-run say "already finished"."""
    src, hashes = pristine
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "synthetic-000001.tar").unlink()
    cmd = [PAIRGEN, "build", "--out", str(out), "--num-pairs", "12", "--shard-size", "4", "--seed", "3",
           "--local", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "rebuilding 1 damaged finished shard(s): synthetic-000001 (tar missing)" in r.stderr
    assert "2 already finished" in r.stdout and "1 rebuilt after damage" in r.stdout
    assert subprocess.run([PAIRGEN, "verify", str(out)], capture_output=True).returncode == 0
    assert _files(out) == hashes


def test_rehash_finds_damage_that_kept_size_and_mtime(pristine, tmp_path):
    src, hashes = pristine
    out = tmp_path / "out"
    shutil.copytree(src, out)
    tar = out / "synthetic-000000.tar"
    st = tar.stat()
    _flip_byte(tar)
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))  # silent corruption: same size, same mtime
    assert run_build(_config(out), progress=False)["shards_built"] == 0  # the cheap check trusts it
    assert not verify(str(out))["ok"]  # verify hashes everything
    summary = run_build(_config(out, rehash=True), progress=False, log=lambda m: None)
    assert summary["shards_repaired"] == ["synthetic-000000"]
    assert verify(str(out))["ok"] and _files(out) == hashes


def test_verify_reports_incomplete_builds(pristine, tmp_path):
    """A build killed between shards: verify compares against the plan, not the shards present."""
    src, _ = pristine
    out = tmp_path / "out"
    shutil.copytree(src, out)
    for p in (out / "stats" / "synthetic-000002.json", out / "manifest" / "synthetic-000002.parquet"):
        p.unlink()
    report = verify(str(out))
    assert not report["ok"] and report["planned_shards"] == 3 and report["planned_pairs"] == 12
    assert any("synthetic-000002: planned shard unfinished" in p for p in report["problems"])
    # no build config: not a complete build either
    (out / "build-synthetic.json").unlink()
    assert any("no build config" in p for p in verify(str(out))["problems"])


def test_verify_reports_stray_files_and_the_build_refuses_them(pristine, tmp_path):
    src, _ = pristine
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "notes.txt").write_text("mine")
    (out / "manifest" / "extra.csv").write_text("mine")
    problems = verify(str(out))["problems"]
    assert any("stray file notes.txt" in p for p in problems)
    assert any("stray file manifest/extra.csv" in p for p in problems)
    with pytest.raises(BuildError, match="notes.txt"):  # never deletes a file it did not write
        run_build(_config(out), progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_leftover_partial_config_does_not_block_the_resume(tmp_path):
    """Defect 3: a kill while the build config was written left `.build-<source>.json.<pid>.partial`."""
    out = tmp_path / "D"
    out.mkdir()
    (out / ".build-synthetic.json.1.partial").write_text("{")
    (out / ".failures-synthetic.json.7.partial").write_text("")
    r = subprocess.run([PAIRGEN, "build", "--out", str(out), "--num-pairs", "1", "--local", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".*.partial"))
    assert verify(str(out))["ok"]


def test_someone_elses_shard_like_file_is_not_overwritten(tmp_path):
    """Defect 4: a directory is ours only if it holds our build config (or is empty)."""
    out = tmp_path / "D"
    out.mkdir()
    (tmp_path / "somefile").write_text("precious")
    with tarfile.open(out / "synthetic-000000.tar", "w") as t:
        t.add(tmp_path / "somefile", arcname="somefile")
    before = (out / "synthetic-000000.tar").read_bytes()
    r = subprocess.run([PAIRGEN, "build", "--out", str(out), "--num-pairs", "1", "--local", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "holds no pairgen build config" in r.stderr
    assert (out / "synthetic-000000.tar").read_bytes() == before


def test_bad_retries_and_usage_errors_are_one_line(tmp_path):
    """Defect 11: --retries -1 crashed; argparse errors printed the whole usage."""
    for args, expected in ((["--retries", "-1"], "--retries must be >= 0"),
                           (["--num-pairs", "x"], "invalid int value: 'x' (see pairgen build --help)")):
        r = subprocess.run([PAIRGEN, "build", "--out", str(tmp_path / "x"), "--local", *args],
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert expected in r.stderr
        assert not (tmp_path / "x").exists()


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m none $d"],
                       capture_output=True)
    return r.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _unshare_ok(), reason="needs user+mount namespaces (unshare -rm) for a tmpfs")


@needs_tmpfs
def test_disk_full_stops_at_once_keeps_shards_and_resumes(tmp_path, pristine):
    """Defect 6: a full disk ended in a traceback after retrying every shard 3 times and left
    partial files that blocked the resume. Now: one line with the free space, exit 1, finished
    shards kept, nothing partial left; after more space a re-run completes the same bytes."""
    _, hashes = pristine
    out = tmp_path / "mnt"
    out.mkdir()
    script = textwrap.dedent(f"""
        set -u
        mount -t tmpfs -o size=450k none {out}
        {PAIRGEN} build --out {out} --num-pairs 12 --shard-size 4 --seed 3 --local --quiet --retries 2
        echo "rc1=$?"
        ls -a {out} {out}/.tmp {out}/stats
        mount -o remount,size=50m {out}
        {PAIRGEN} build --out {out} --num-pairs 12 --shard-size 4 --seed 3 --local --quiet
        echo "rc2=$?"
        {PAIRGEN} verify {out} >/dev/null && echo verify-ok
        sha256sum {out}/*.tar {out}/manifest/*.parquet
    """)
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    err_lines = [line for line in r.stderr.splitlines() if "pairgen: error" in line]
    assert "rc1=1" in r.stdout, r.stdout + r.stderr
    assert len(err_lines) == 1 and "No space left on device" in err_lines[0] and "MB free on" in err_lines[0]
    assert "Traceback" not in r.stderr
    listing = r.stdout.split("rc1=1", 1)[1].split("rc2=", 1)[0]
    assert ".partial" not in listing
    assert "synthetic-000000.json" in listing  # the first shard fitted and was kept
    assert "rc2=0" in r.stdout and "verify-ok" in r.stdout
    sums = {line.split()[1].split(f"{out}/", 1)[1]: line.split()[0]
            for line in r.stdout.splitlines() if f" {out}/" in line and line.split()[0].isalnum()}
    assert sums == hashes


@needs_tmpfs
def test_read_only_output_stops_with_one_line(tmp_path):
    out = tmp_path / "mnt"
    out.mkdir()
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=10m none {out}
        {PAIRGEN} build --out {out}/b --num-pairs 8 --shard-size 4 --seed 3 --local --quiet
        rm {out}/b/synthetic-000001.tar
        mount -o remount,ro {out}
        {PAIRGEN} build --out {out}/b --num-pairs 8 --shard-size 4 --seed 3 --local --quiet
        echo "rc=$?"
    """)
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert "rc=2" in r.stdout, r.stdout + r.stderr
    assert "not writable" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_kill_9_of_a_ray_build_leaves_no_ray_process(tmp_path):
    """Defect 11: after kill -9 of the driver, Ray's dashboard and runtime-env agents lived on."""
    import signal
    import time

    from pairgen import reaper

    out = tmp_path / "out"
    proc = subprocess.Popen([PAIRGEN, "build", "--out", str(out), "--num-pairs", "200", "--shard-size", "10",
                             "--workers", "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not list(out.glob("stats/*.json")):
        time.sleep(0.2)  # until the first shard is finished: Ray is up and its actors are working
    assert proc.poll() is None, "the build ended before it could be killed"
    procs = reaper._table()
    family = reaper.descendants(proc.pid, procs)
    names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:60] for pid in family if Path(f"/proc/{pid}").exists()}
    assert any(b"ray::" in n for n in names.values()), names  # agents and workers were running
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    alive = family
    deadline = time.time() + 15
    while alive and time.time() < deadline:
        time.sleep(0.5)
        procs = reaper._table()
        alive = {pid: s for pid, s in family.items() if procs.get(pid, (0, None))[1] == s}
    assert not alive, {pid: names.get(pid) for pid in alive}
    # the resume still completes the build
    r = subprocess.run([PAIRGEN, "build", "--out", str(out), "--num-pairs", "200", "--shard-size", "10",
                        "--local", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert verify(str(out))["ok"]


def test_unreadable_build_config_is_rewritten_and_shards_checked_against_their_settings(pristine, tmp_path):
    """A config emptied by a crash no longer blocks the resume: each shard's stats record the
    settings it was built with, so a shard of other settings is rebuilt, not trusted."""
    src, hashes = pristine
    out = tmp_path / "out"
    shutil.copytree(src, out)
    stats = out / "stats" / "synthetic-000000.json"
    s = json.loads(stats.read_text())
    s["identity"] = "0" * 16  # as if built with other settings
    stats.write_text(json.dumps(s))
    (out / "build-synthetic.json").write_text("")
    assert not verify(str(out))["ok"]
    logs = []
    summary = run_build(_config(out), progress=False, log=logs.append)
    assert any("unreadable" in m for m in logs)
    assert summary["shards_repaired"] == ["synthetic-000000"]
    assert verify(str(out))["ok"] and _files(out) == hashes


def test_a_second_build_into_the_same_out_is_refused_while_one_runs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = layout.lock_output(out)
    try:
        r = subprocess.run([PAIRGEN, "build", "--out", str(out), "--num-pairs", "1", "--local", "--quiet"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "another pairgen build is writing into it" in r.stderr
        assert f"pid {os.getpid()}" in r.stderr
    finally:
        holder.close()
    r = subprocess.run([PAIRGEN, "build", "--out", str(out), "--num-pairs", "1", "--local", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
