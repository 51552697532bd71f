"""When to look for a granule's ``<url>.dmrpp``: what the earlier looks found, remembered.

With ``[source] dmrpp = "auto"``, a granule whose source names no sidecar has
``<url>.dmrpp`` looked for: one GET, and a 404 round trip per granule where the DAAC
publishes none (30 ms each from outside the region; ``scripts/bench.py``, RB). After
:data:`ABSENT_AFTER` granules in a row without one, the collection is taken to publish
none: only one granule in :data:`REPROBE_EVERY` is looked for, so a DAAC that starts
publishing sidecars is noticed; one found sidecar brings the looks back for every
granule. A sidecar the source names (CMR ``RelatedUrls``) is always fetched and does not
count. Pure logic: :func:`phase` says which granules to look for next, :func:`remember`
learns from what came back; :class:`Memory` is kept in the ledger between syncs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from refstore.models import Failure, Granule

__all__ = ["ABSENT_AFTER", "REPROBE_EVERY", "Memory", "phase", "remember", "virtualize_looking"]

ABSENT_AFTER = 3
REPROBE_EVERY = 100
_FOUND, _ABSENT = "found", "absent"  # refstore.virtualize.FOUND / ABSENT, without its imports


@dataclass(frozen=True, slots=True)
class Memory:
    """What looking for ``<url>.dmrpp`` found so far in this collection."""

    misses: int = 0  # granules in a row without a sidecar
    found: bool = False  # a sidecar was found at least once
    skipped: int = 0  # granules not looked for since the last look

    @property
    def absent(self) -> bool:
        """Whether the collection is taken to publish no sidecars."""
        return self.misses >= ABSENT_AFTER

    def to_json(self) -> str:
        return json.dumps({"misses": self.misses, "found": self.found, "skipped": self.skipped})

    @classmethod
    def from_json(cls, text: str | None) -> Memory:
        """The memory from the ledger's text; a fresh one if there is none or it is unreadable."""
        try:
            d = json.loads(text or "{}")
            return cls(
                int(d.get("misses", 0)), bool(d.get("found", False)), int(d.get("skipped", 0))
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


def phase(memory: Memory, named: Sequence[bool]) -> tuple[list[bool], int]:
    """Which of the next granules to look for, and how many granules this phase covers.

    ``named[i]`` is whether granule ``i`` has a sidecar named by its source. While the
    outcome is open (fewer than :data:`ABSENT_AFTER` misses and no sidecar found since)
    a phase covers only as many unnamed granules as could settle it, so that a
    collection without sidecars pays :data:`ABSENT_AFTER` misses, not one per granule.
    """
    if memory.absent:  # up to and including the next re-look, whose outcome decides on
        looks, skipped = [], memory.skipped
        for has_name in named:
            look = has_name or skipped + 1 >= REPROBE_EVERY
            looks.append(look)
            if look and not has_name:
                break
            skipped += not look
        return looks, len(looks)
    if memory.found and memory.misses == 0:
        return [True] * len(named), len(named)
    room, n = ABSENT_AFTER - memory.misses, 0
    while n < len(named) and room > 0:
        room -= not named[n]
        n += 1
    return [True] * n, n


def remember(memory: Memory, named: Sequence[bool], probes: Sequence[str | None]) -> Memory:
    """``memory`` after granules whose sidecars were (or were not) looked for, in order.

    ``probes[i]`` is :data:`refstore.virtualize.FOUND`, ``ABSENT`` or None (not looked
    for, or the granule failed before it was known).
    """
    for has_name, probe in zip(named, probes, strict=True):
        if has_name:
            continue
        if probe == _FOUND:
            memory = Memory(misses=0, found=True, skipped=0)
        elif probe == _ABSENT:
            memory = replace(memory, misses=memory.misses + 1, skipped=0)
        elif memory.absent:
            memory = replace(memory, skipped=memory.skipped + 1)
    return memory


def virtualize_looking(
    granules: Sequence[Granule],
    memory: Memory,
    run: Callable[[Sequence[Granule], bool, bool], list[Any]],
) -> tuple[list[Any], Memory]:
    """Virtualize ``granules`` by phases, looking for sidecars as :func:`phase` says.

    ``run(granules, look, expected)`` virtualizes with ``dmrpp = "auto"`` (``look``) or
    ``"never"`` and returns results in order; ``expected`` says sidecars were found in
    this collection so far (none missing since). Results come back in the order of
    ``granules``.
    """
    out: list[Any] = [None] * len(granules)
    start = 0
    while start < len(granules):
        rest = granules[start:]
        named = [g.sidecar is not None for g in rest]
        looks, n = phase(memory, named)
        expected = memory.found and memory.misses == 0
        for look in (True, False):
            idx = [start + i for i in range(n) if looks[i] == look]
            if idx:
                done = run([granules[i] for i in idx], look, expected)
                for i, r in zip(idx, done, strict=True):
                    out[i] = r
        done = out[start : start + n]
        probes = [None if isinstance(r, Failure) else getattr(r, "probe", None) for r in done]
        memory = remember(memory, named[:n], probes)
        start += n
    return out, memory
