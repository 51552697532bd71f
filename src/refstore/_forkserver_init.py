"""First preload of refstore's multiprocessing forkserver: tie its life to the sync.

Imported once in the forkserver, which CPython spawns with ``-c``; importing it anywhere
else does nothing (``FORKSERVER_PARENT_ENV`` is set only while
:func:`refstore.orphans.start_pool_helpers` spawns the forkserver, and names its parent).
See :mod:`refstore.orphans`.
"""

from __future__ import annotations

import atexit
import os

from refstore.orphans import FORKSERVER_PARENT_ENV, set_pdeathsig


def _tie_to_parent() -> None:
    parent = os.getppid()
    pid, _, tie = os.environ.get(FORKSERVER_PARENT_ENV, "").partition(" ")
    if pid != str(parent):
        return  # not a forkserver refstore started (or its parent is already gone)
    # The forkserver leaves its loop when the sync and all workers are gone; tearing down
    # the preloaded libraries then takes seconds on a busy machine, for nothing to save.
    atexit.register(os._exit, 0)
    if tie == "1":
        set_pdeathsig()
        if os.getppid() != parent:  # the sync died before the kernel took note: go now
            os._exit(0)


_tie_to_parent()
