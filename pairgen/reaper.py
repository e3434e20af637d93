"""Nothing of a local Ray cluster outlives its build driver.

When the driver is killed outright (``kill -9``, the OOM killer) it cannot shut Ray down; Ray's
head processes die with it, but the agents and workers the raylet started were seen to live on
for a minute or two. The driver starts this watcher next to the local cluster::

    python -m pairgen.reaper DRIVER_PID

It records the driver's descendants (pid and start time) every half second and, once the driver
is gone, kills those still alive. A driver that ends normally shuts Ray down and stops the watcher.
Linux only (it reads /proc); elsewhere it exits at once. Never used with ``--ray-address``: that
cluster is the user's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process."""
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ... starttime (22nd)
        procs[int(d.name)] = (int(fields[1]), int(fields[19]))
    return procs


def descendants(root: int, procs: dict[int, tuple[int, int]]) -> dict[int, int]:
    """pid -> start time of every descendant of ``root``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = procs[pid][1]
        todo.extend(children.get(pid, []))
    return found


def watch(driver: int) -> int:
    me = os.getpid()
    procs = _table()
    if driver not in procs:
        return 0
    driver_start = procs[driver][1]
    seen: dict[int, int] = {}
    while True:
        procs = _table()
        if procs.get(driver, (0, None))[1] != driver_start:
            break  # gone (or the pid was reused by another process)
        seen.update(descendants(driver, procs))
        for pid in list(seen):  # forget what ended
            if pid not in procs or procs[pid][1] != seen[pid]:
                del seen[pid]
        seen.pop(me, None)
        time.sleep(POLL_S)
    time.sleep(POLL_S)  # let Ray's own fate-sharing go first
    procs = _table()
    for pid, start in seen.items():
        if pid != me and procs.get(pid, (0, None))[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return 0


def start() -> subprocess.Popen | None:
    """Start a watcher of this process (None where /proc is missing)."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "pairgen.reaper", str(os.getpid())], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1])))
