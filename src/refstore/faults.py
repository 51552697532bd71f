"""Fault injection for the crash-safety tests: ``REFSTORE_FAULT=<step>`` SIGKILLs the
process at that step boundary. Read only from the environment of a test subprocess;
unset in normal use, where :func:`checkpoint` costs one dictionary lookup.

Steps: ``after-discovery``, ``after-virtualization``, ``mid-write`` (references written
into the Icechunk session, not committed), ``after-commit`` (before the ledger update),
``during-export`` (new export written, not yet published), ``during-incremental-export``
(an append's refs written into a new export version, not yet published).
"""

from __future__ import annotations

import os
import signal

__all__ = ["STEPS", "checkpoint"]

STEPS = (
    "after-discovery",
    "after-virtualization",
    "mid-write",
    "after-commit",
    "during-export",
    "during-incremental-export",
)


def checkpoint(step: str) -> None:
    """Die here, hard, if the test asked for it."""
    if os.environ.get("REFSTORE_FAULT") == step:
        os.kill(os.getpid(), signal.SIGKILL)
