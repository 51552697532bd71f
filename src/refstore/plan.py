"""Pure planning: what a sync must do, from what was discovered and what the ledger holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from refstore.models import Granule, LedgerRow, Status, SyncPlan

__all__ = ["batches", "plan_sync"]


def plan_sync(
    discovered: Iterable[Granule], rows: Mapping[str, LedgerRow], *, complete: bool = True
) -> SyncPlan:
    """Diff discovered granules against the ledger.

    - not in the ledger → ``new``;
    - known but with another revision → ``revised`` (also retries a quarantined granule
      that was replaced upstream);
    - known, same revision, not committed and not quarantined (a run died before its
      commit) → ``new`` again;
    - committed or quarantined with the same revision → left alone;
    - committed but no longer discovered → ``missing`` (reported, never dropped);
    - an empty revision means the source could not tell it now (a HEAD request failed):
      a known granule keeps the ledger's revision, so a transient fault neither revises
      nor re-appends it; an unknown one is new (and quarantined if it cannot be read).

    ``complete=False`` means ``discovered`` lists only what changed since the last run
    (an incremental source): nothing is ``missing`` then, and granules the ledger
    recorded but never committed nor quarantined are planned again from their rows
    (the listing will not repeat them).

    The result does not depend on the order of ``discovered``; a key discovered twice
    keeps its last revision.
    """
    seen: dict[str, Granule] = {}
    for g in discovered:
        seen[g.key] = g
    new: list[Granule] = []
    revised: list[Granule] = []
    unchanged = quarantined = 0
    for key in sorted(seen):
        g = seen[key]
        row = rows.get(key)
        if row is not None and not g.revision:
            g = Granule(g.key, g.url, row.revision, g.size, g.modified)
        if row is None:
            new.append(g)
        elif row.revision != g.revision:
            revised.append(g)
        elif row.status is Status.COMMITTED:
            unchanged += 1
        elif row.status is Status.QUARANTINED:
            quarantined += 1
        else:
            new.append(g)
    if not complete:
        settled = (Status.COMMITTED, Status.QUARANTINED)
        new += [
            Granule(r.key, r.url, r.revision)
            for k, r in sorted(rows.items())
            if k not in seen and r.status not in settled and r.url
        ]
    missing = tuple(
        sorted(
            k
            for k, r in rows.items()
            if complete and k not in seen and r.status is Status.COMMITTED
        )
    )
    return SyncPlan(
        new=tuple(new),
        revised=tuple(revised),
        unchanged=unchanged,
        quarantined=quarantined,
        missing=missing,
    )


def batches[T](items: Iterable[T], size: int) -> Iterable[list[T]]:
    """Split ``items`` into lists of at most ``size``, in order."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
