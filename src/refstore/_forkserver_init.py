"""First preload of refstore's multiprocessing forkserver: tie its life to the sync.

Imported once in the forkserver, which CPython spawns with ``-c``; importing it anywhere
else does nothing (``FORKSERVER_PARENT_ENV`` names the forkserver's parent only while
:func:`refstore.orphans.start_pool_helpers` spawns it). See :mod:`refstore.orphans`.
"""

from __future__ import annotations

import os

from refstore.orphans import FORKSERVER_PARENT_ENV, set_pdeathsig


def _tie_to_parent() -> None:
    parent = os.getppid()
    if os.environ.get(FORKSERVER_PARENT_ENV) != str(parent):
        return  # not a forkserver refstore started from a main thread
    set_pdeathsig()
    if os.getppid() != parent:  # the sync died before the kernel took note: go now
        os._exit(0)


_tie_to_parent()
