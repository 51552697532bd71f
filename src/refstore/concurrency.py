"""Pure rules for many writers on one repository (optimistic concurrency).

Each writer plans a batch against the tip of ``main`` it reconciled its ledger to and
commits on top of exactly that tip. A writer that loses the race (another commit landed
first) reconciles its ledger from the new commits' metadata, keeps only the granules
the winner did not place (:func:`still_to_place`), waits a jittered, growing delay
(:func:`backoff`) and places the rest again. No I/O here: :mod:`refstore.sync` wires it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from refstore.models import Granule, LedgerRow

__all__ = ["Remaining", "backoff", "still_to_place"]

BASE_DELAY = 0.2  # seconds before the first retry (before jitter)
MAX_DELAY = 5.0  # cap of the delay between two attempts


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left of a batch after another writer's commits were reconciled."""

    keys: tuple[str, ...]  # still to place, in the batch's order
    placed_by_others: tuple[str, ...]  # already in the store at the revision we read
    replacing: Mapping[str, str]  # key -> revision the store serves, to be replaced


def still_to_place(granules: Iterable[Granule], rows: Mapping[str, LedgerRow]) -> Remaining:
    """Split a batch by what the (reconciled) ledger says the store holds.

    - in the store at the revision this writer read → placed by another writer: dropped;
    - in the store at another revision → put in place of it (a replacement);
    - not in the store → still to place.
    """
    keys: list[str] = []
    placed: list[str] = []
    replacing: dict[str, str] = {}
    for g in granules:
        row = rows.get(g.key)
        if row is None or not row.in_store:
            keys.append(g.key)
        elif (row.placed_revision or row.revision) == g.revision:
            placed.append(g.key)
        else:
            keys.append(g.key)
            replacing[g.key] = row.placed_revision or row.revision
    return Remaining(tuple(keys), tuple(placed), replacing)


def backoff(
    attempt: int,
    rng: random.Random,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` ≥ 1 lost so far).

    "Full jitter": uniform in ``[0, min(cap, base * 2**(attempt-1))]``, plus a
    floor of a tenth of the base, so writers that lost together do not retry together.
    """
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return base / 10 + rng.uniform(0, ceiling)
