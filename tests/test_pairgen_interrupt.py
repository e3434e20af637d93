"""Issue 13: Ctrl-C (SIGINT) or SIGTERM stops ``pairgen build`` within seconds in every phase (planning,
worker start-up, building; in-process and with Ray), with one line on stderr saying what was kept
and how to resume, exit 128 + the signal; the re-run of the same command then finishes, and the
output verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


PAIRGEN = str(Path(sys.executable).parent / "pairgen")
STOP_WITHIN_S = 20  # from the signal to the process's exit, on a loaded 2-core machine


def _env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYOPENGL_PLATFORM": "osmesa", "PYTHONUNBUFFERED": "1"}


class Build:
    """A ``pairgen build`` subprocess whose stderr is read as it comes."""

    def __init__(self, args: list[str], ignore_sigint: bool = False):
        # a shell's background job starts with SIGINT ignored: pairgen must stop on it all the same
        pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        self.proc = subprocess.Popen([PAIRGEN, "build", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env(), preexec_fn=pre)
        self.err: list[str] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if any(text in line for line in self.err):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen; stderr: {''.join(self.err)[-2000:]}")

    def stop(self, sig=signal.SIGINT) -> tuple[int, float, str]:
        t0 = time.time()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        took = time.time() - t0
        self.t.join(10)
        return rc, took, "".join(self.err)


def _check_stopped(rc: int, took: float, err: str, sig=signal.SIGINT) -> None:
    assert rc == 128 + sig, (rc, err[-3000:])
    assert took < STOP_WITHIN_S, took
    assert "Traceback" not in err, err[-3000:]
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith(f"pairgen: interrupted by {signal.Signals(sig).name}:") and "re-run the same command" in last


def _finishes_and_verifies(args: list[str], out: Path) -> None:
    r = subprocess.run([PAIRGEN, "build", *args], capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    v = subprocess.run([PAIRGEN, "verify", str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert v.returncode == 0, v.stdout[-3000:] + v.stderr[-2000:]


def test_ctrl_c_in_process_at_start_up_and_mid_build(tmp_path):
    out = tmp_path / "out"
    args = ["--source", "synthetic", "--local", "--out", str(out), "--num-pairs", "60", "--shard-size", "10",
            "--image-size", "128", "--quiet"]
    # start-up (imports, renderer, body model), with SIGINT ignored as in a shell's background job
    b = Build(args, ignore_sigint=True)
    time.sleep(1.5)
    _check_stopped(*b.stop())
    # mid-build: after the first shard is finished
    b = Build(args)
    while not list((out / "stats").glob("*.json")) if out.exists() else True:
        assert b.proc.poll() is None, "".join(b.err)
        time.sleep(0.05)
    rc, took, err = b.stop()
    _check_stopped(rc, took, err)
    kept = len(list((out / "stats").glob("*.json")))
    assert 1 <= kept < 6 and f"{kept} finished shard(s) kept in {out}" in err
    _finishes_and_verifies(args, out)


def test_sigterm_and_ctrl_c_with_ray_workers(tmp_path):
    out = tmp_path / "out"
    args = ["--source", "synthetic", "--workers", "2", "--out", str(out), "--num-pairs", "80", "--shard-size", "10",
            "--image-size", "128", "--quiet"]
    b = Build(args)
    b.wait_for("starting 2 Ray worker(s)")  # Ray and its workers starting
    time.sleep(1.0)
    _check_stopped(*b.stop())
    b = Build(args)
    b.wait_for("worker(s) ready")  # building
    time.sleep(2.0)
    _check_stopped(*b.stop(signal.SIGTERM), sig=signal.SIGTERM)
    _finishes_and_verifies(args + ["--local"], out)  # the same build (workers are not part of it), no third Ray start


def test_ctrl_c_while_planning_leaves_nothing_behind(penn_units, tmp_path):
    many_units = penn_units(96)  # planned by 2 processes
    out = tmp_path / "out"
    args = ["--source", "pennaction", "--root", str(many_units), "--workers", "2", "--out", str(out),
            "--num-pairs", "5000", "--shard-size", "40", "--quiet"]
    b = Build(args)
    end = time.time() + 120
    while not (out / ".tmp").is_dir() and time.time() < end:  # the plan is being written
        assert b.proc.poll() is None, "".join(b.err)
        time.sleep(0.02)
    time.sleep(0.5)
    family = _descendants(b.proc.pid)
    rc, took, err = b.stop()
    _check_stopped(rc, took, err)
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))  # nothing written yet: no OUT
    end = time.time() + 10
    while (alive := [p for p in family if _alive(p)]) and time.time() < end:
        time.sleep(0.2)
    assert not alive  # no planning process outlives the build


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state
