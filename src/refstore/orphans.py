"""Helper processes die with the sync that started them and never hold its output.

A sync can be killed by anything, SIGKILL included (the OOM killer, node preemption, a
supervisor's timeout), and then runs no clean-up of its own. Every process it started must
go by itself, and none may keep the sync's stdout/stderr open: a supervisor reading them
(``subprocess.run(..., capture_output=True)``) waits for the last writer to close them.

Left alone, CPython 3.12's helpers hold each other up: a ``ProcessPoolExecutor`` worker
waits forever on its call queue (it holds the queue's write end itself); the forkserver
exits only when every holder of its "alive" pipe (the sync *and* the workers) is gone; the
resource tracker only when every holder of its pipe (the sync and the workers) is gone.
So the workers are the knot: once they die, the forkserver and the tracker follow within
milliseconds. Two guards make the workers die, each enough alone:

* **Parent watch (portable: Linux and macOS).** A worker's
  ``multiprocessing.parent_process()`` is the sync itself (not the forkserver that forked
  it), and its ``sentinel`` is the read end of a pipe whose write end only the sync holds:
  it reads EOF the moment the sync dies, however it died. :func:`watch_parent`, the pool's
  worker initializer, waits on it in a daemon thread and ``os._exit``s.
* **``PR_SET_PDEATHSIG`` (Linux).** The kernel SIGKILLs the forkserver when the sync dies
  (set by :mod:`refstore._forkserver_init`, the forkserver's first preload) and each worker
  when the forkserver dies: this reaches a worker stuck in C code that holds the GIL, where
  the watch thread cannot run. The signal follows the *thread* that spawned the process, so
  it is only asked for when the forkserver is started from the main thread.

Output: :func:`start_pool_helpers` starts the tracker and the forkserver ourselves, before
the pool would, with fds 0-2 pointed at ``/dev/null`` for the milliseconds of the spawn
(CPython spawns both with the parent's fds 0-2 and passes the tracker fd 2 explicitly);
workers are forked by the forkserver and inherit ``/dev/null``. Worker output was never
read (results and exceptions travel back pickled). Dask's local workers are spawned by
distributed's nannies, which already make them exit when their parent dies
(``parent_alive_pipe``); :func:`dask_setup`, run in each as a preload, points their fds 0-2
at ``/dev/null`` and adds ``PR_SET_PDEATHSIG``.

Limits: a forkserver already running in the process before refstore's first pool (started by
other code, with other preloads) is reused as it is; on macOS a worker stuck in a C call that
holds the GIL exits when the call returns.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "FORKSERVER_PARENT_ENV",
    "ORPHAN_EXIT",
    "PDEATHSIG_ENV",
    "dask_setup",
    "detached_stdio",
    "set_pdeathsig",
    "start_pool_helpers",
    "start_resource_tracker",
    "use_pdeathsig",
    "watch_parent",
]

# "0" turns PR_SET_PDEATHSIG off, so tests can show the portable watch alone suffices
# (as on macOS, which has no such call).
PDEATHSIG_ENV = "REFSTORE_PDEATHSIG"
# Set only while the forkserver is spawned: "<its parent's pid> <1 if PDEATHSIG, else 0>".
FORKSERVER_PARENT_ENV = "REFSTORE_FORKSERVER_PARENT"
# Exit status of a worker that found its sync gone (nobody is left to read it; it shows
# in tests and in `strace`).
ORPHAN_EXIT = 75
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# One helper start at a time: fds 0-2 are process-wide.
_spawn_lock = threading.Lock()


def use_pdeathsig(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether to ask the kernel for ``PR_SET_PDEATHSIG`` (Linux, unless turned off)."""
    return sys.platform.startswith("linux") and environ.get(PDEATHSIG_ENV, "1") != "0"


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent thread dies (Linux).

    Returns
    -------
    bool
        Whether the kernel accepted it (False off Linux or without a usable libc).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # a libc without prctl: the parent watch remains
        return False


@contextmanager
def detached_stdio() -> Iterator[None]:
    """Point fds 0-2 at ``/dev/null`` while helper processes are spawned, then restore them.

    Processes started inside inherit ``/dev/null`` instead of this process's pipes. Output
    written by other threads during the window is lost, so keep it to a spawn.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    saved: list[int | None] = []
    try:
        for fd in (0, 1, 2):
            try:
                saved.append(os.dup(fd))
            except OSError:  # closed: leave it closed afterwards
                saved.append(None)
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, old in zip((0, 1, 2), saved, strict=False):
            if old is None:
                os.close(fd)
            else:
                os.dup2(old, fd)
                os.close(old)
        os.close(devnull)


def start_pool_helpers(preload: Sequence[str], *, environ: Mapping[str, str] = os.environ) -> None:
    """Start the resource tracker and the forkserver detached from this process's output.

    Call before creating a ``forkserver`` pool; the pool then reuses both. ``preload`` is
    imported once in the forkserver (after :mod:`refstore._forkserver_init`).
    """
    import multiprocessing.forkserver as forkserver

    forkserver.set_forkserver_preload(["refstore._forkserver_init", *preload])
    # PDEATHSIG follows the spawning thread: from a worker thread that ends before the
    # process, it would kill a forkserver still in use.
    tie = use_pdeathsig(environ) and threading.current_thread() is threading.main_thread()
    with _spawn_lock, detached_stdio():
        os.environ[FORKSERVER_PARENT_ENV] = f"{os.getpid()} {int(tie)}"
        try:
            forkserver.ensure_running()  # starts the resource tracker first
        finally:
            os.environ.pop(FORKSERVER_PARENT_ENV, None)


def start_resource_tracker() -> None:
    """Start the resource tracker detached from this process's output (for dask's spawns)."""
    from multiprocessing import resource_tracker

    with _spawn_lock, detached_stdio():
        resource_tracker.ensure_running()


def watch_parent(pdeathsig: bool = True) -> None:
    """Pool worker initializer: exit as soon as the sync that started the pool is gone.

    Parameters
    ----------
    pdeathsig
        Also ask the kernel (Linux) for SIGKILL when the forkserver, this worker's parent,
        dies.
    """
    import multiprocessing

    if pdeathsig:
        set_pdeathsig()
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    threading.Thread(
        target=_exit_when_closed, args=(parent.sentinel,), name="refstore-parent-watch", daemon=True
    ).start()


def _exit_when_closed(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])  # readable only at EOF: the sync closed its end, or died
    os._exit(ORPHAN_EXIT)


def dask_setup(worker: Any) -> None:
    """Distributed preload hook, run in each local dask worker process as it starts.

    Distributed already ends a nanny-spawned worker whose parent dies; this drops the
    sync's stdio (inherited at spawn) and adds the kernel's guarantee on Linux.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    if use_pdeathsig():
        set_pdeathsig()
