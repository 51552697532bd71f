"""Find every process of one test run, wherever it was re-parented: each run's environment
carries a unique marker that every descendant inherits; ``/proc/<pid>/environ`` shows it
(Linux only)."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping

import pytest

MARKER_ENV = "REFSTORE_TEST_RUN"

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="scans /proc for the run's processes"
)


def marked(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """``env`` plus a fresh run marker, and the marker."""
    marker = uuid.uuid4().hex
    return {**env, MARKER_ENV: marker}, marker


def processes_of(marker: str) -> list[int]:
    """Live processes (zombies hold no pipes and show no environment) carrying ``marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone meanwhile, or not ours
            continue
        if needle in env.split(b"\0"):
            found.append(int(name))
    return found


def describe(pid: int) -> str:
    """``pid``, its command line (shortened) and where its fds 0-2 point."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:110]
        return f"{pid} [{' '.join(stdio_of(pid))}] {cmd}"
    except OSError:
        return f"{pid} (gone)"


def stdio_of(pid: int) -> list[str]:
    """Where ``pid``'s fds 0, 1 and 2 point (``/dev/null``, ``pipe:[…]``, a file)."""
    out = []
    for fd in (0, 1, 2):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            out.append("closed")
    return out


def wait_until_gone(marker: str, within: float = 10.0) -> float:
    """Seconds until no process carries ``marker``; fails (after killing them, so a
    failing test leaves nothing either) if some remain after ``within`` seconds."""
    t0 = time.monotonic()
    while True:
        left = processes_of(marker)
        if not left:
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            report = "\n".join(describe(p) for p in left)
            kill_all(marker)
            raise AssertionError(
                f"{len(left)} process(es) outlived the run by {within} s:\n{report}"
            )
        time.sleep(0.02)


def kill_all(marker: str) -> None:
    """SIGKILL every process carrying ``marker`` (clean-up after a failed check)."""
    for pid in processes_of(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone meanwhile
            pass
