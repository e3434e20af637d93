"""Ctrl-C and SIGTERM for ``pairgen build``: raise :class:`Interrupted` in the main thread, so the
build unwinds (planning processes and Ray workers stopped, staged files removed, the lock
released) and the CLI prints one line and exits 128 + the signal.

Installed whatever the inherited disposition (a shell's background job starts with SIGINT
ignored), and again after ``ray.init``, whose core worker puts its own SIGTERM handler in place
(it prints a stack and exits 1). A second signal while the build unwinds exits at once: Ray's
processes are then reaped by :mod:`pairgen.reaper` and a partial file is cleaned by the next run.
"""

from __future__ import annotations

import contextlib
import os
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_installed = False
_hits: list[int] = []


class Interrupted(KeyboardInterrupt):
    """The build was stopped by a signal (``signum``)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_held = [0]  # > 0 inside held(): a signal is recorded, raised when the section ends


def _handler(signum, frame):
    if _hits:
        os._exit(128 + signum)
    _hits.append(signum)
    if not _held[0]:
        raise Interrupted(signum)


@contextlib.contextmanager
def held():
    """A short section that a signal must not cut in two (e.g. starting a process): the signal is
    raised as :class:`Interrupted` when the section ends."""
    _held[0] += 1
    try:
        yield
    finally:
        _held[0] -= 1
    if not _held[0] and _hits and _installed:
        raise Interrupted(_hits[0])


def received() -> int | None:
    """The signal that interrupted the build (None if none did): a library may turn
    :class:`Interrupted` into a plain KeyboardInterrupt (``ray.get`` does)."""
    return _hits[0] if _hits else None


def install() -> None:
    """SIGINT / SIGTERM raise :class:`Interrupted` from now on (main thread only)."""
    global _installed
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    _installed = True


def reinstall() -> None:
    """Put the handlers back where a library replaced them (after ``ray.init``), if installed."""
    if _installed:
        for sig in SIGNALS:
            if signal.getsignal(sig) is not _handler:
                signal.signal(sig, _handler)
