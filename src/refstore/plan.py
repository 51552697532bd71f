"""Pure planning: what a sync must do, from what was discovered and what the ledger holds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from refstore.models import Failure, Granule, LedgerRow, Status, SyncPlan

__all__ = ["WAITING", "batches", "common_failure", "dataset_fingerprint", "plan_sync"]


# Recorded instead of a settings fingerprint for a granule that is fine itself but waits
# for another one (see :class:`refstore.models.Failure`): every sync tries it again.
WAITING = "waiting"


def dataset_fingerprint(
    concat_dim: str,
    group: str = "",
    loadable_variables: Iterable[str] | None = None,
    drop_variables: Iterable[str] = (),
    concat_from: str = "auto",
) -> str:
    """A stable hash of the settings that decide whether a granule can be read at all.

    Recorded with every quarantine: when it changes (a fixed concat dim, group or
    variable list, concat_from), the granules quarantined under the old settings are tried again.
    """
    spec = {
        "concat_dim": concat_dim,
        "group": group,
        "loadable_variables": None if loadable_variables is None else sorted(loadable_variables),
        "drop_variables": sorted(drop_variables),
    }
    if concat_from != "auto":  # absent by default: fingerprints of older runs still match
        spec["concat_from"] = concat_from
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def plan_sync(
    discovered: Iterable[Granule],
    rows: Mapping[str, LedgerRow],
    *,
    complete: bool = True,
    fingerprint: str | None = None,
) -> SyncPlan:
    """Diff discovered granules against the ledger (the transitions of
    :mod:`refstore.lifecycle` that discovery triggers).

    - not in the ledger → ``new``;
    - known but with another revision → ``revised`` (also retries a quarantined granule
      that was replaced upstream);
    - in the store, and the source is back to the revision the store serves while a
      newer one was pending or quarantined → ``reverted`` (nothing to read or commit);
    - known, same revision, not settled (a run died before its commit) → ``new`` again;
    - quarantined under another ``fingerprint`` (the dataset settings changed) →
      ``new`` again and listed in ``requeued``;
    - committed or quarantined with the same revision → left alone;
    - in the store but no longer discovered → ``missing`` (reported, never dropped);
    - an empty revision means the source could not tell it now (a HEAD request failed):
      a known granule keeps the ledger's revision, so a transient fault neither revises
      nor re-appends it; an unknown one is new (and quarantined if it cannot be read).

    Every granule to read whose key is in the store (its placement, whatever its
    status) is listed in ``replacing``: it is put in place of its old references,
    never appended or refused as a duplicate of itself.

    ``complete=False`` means ``discovered`` lists only what changed since the last run
    (an incremental source): nothing is ``missing`` then, and granules the ledger
    recorded but never settled are planned again from their rows (the listing will
    not repeat them).

    The result does not depend on the order of ``discovered``; a key discovered twice
    keeps its last revision.
    """
    seen: dict[str, Granule] = {}
    for g in discovered:
        seen[g.key] = g
    new: list[Granule] = []
    revised: list[Granule] = []
    reverted: list[str] = []
    requeued: list[str] = []
    unchanged = quarantined = 0

    def stale(r: LedgerRow) -> bool:
        if r.status is not Status.QUARANTINED or r.fingerprint is None:
            return False
        return r.fingerprint == WAITING or (
            fingerprint is not None and r.fingerprint != fingerprint
        )

    for key in sorted(seen):
        g = seen[key]
        row = rows.get(key)
        if row is not None and not g.revision:
            g = replace(g, revision=row.revision)
        if row is None:
            new.append(g)
        elif (
            row.in_store
            and row.status is not Status.COMMITTED
            and row.placed_revision is not None
            and g.revision == row.placed_revision
        ):
            reverted.append(key)
        elif row.revision != g.revision:
            revised.append(g)
        elif row.status is Status.COMMITTED:
            unchanged += 1
        elif row.status is Status.QUARANTINED and not stale(row):
            quarantined += 1
        else:
            if stale(row):
                requeued.append(key)
            new.append(g)
    if not complete:
        for k, r in sorted(rows.items()):
            if k in seen or not r.url:
                continue
            if r.status not in (Status.COMMITTED, Status.QUARANTINED) or stale(r):
                new.append(Granule(r.key, r.url, r.revision))
                if stale(r):
                    requeued.append(k)
    missing = tuple(sorted(k for k, r in rows.items() if complete and k not in seen and r.in_store))
    todo = {g.key for g in new + revised}
    return SyncPlan(
        new=tuple(new),
        revised=tuple(revised),
        unchanged=unchanged,
        quarantined=quarantined,
        missing=missing,
        replacing=tuple(sorted(k for k in todo if rows.get(k) and rows[k].in_store)),
        reverted=tuple(reverted),
        requeued=tuple(sorted(requeued)),
    )


def common_failure(failures: Sequence[Failure], tried: int) -> str | None:
    """The one reason every granule tried in a run failed for, if there is one.

    Two or more granules tried, none landed, and all refused for the same reason (the
    granule's own name taken out): that is a setting (concat dim, group, variables), not
    a bad file, and the run should say so rather than report "up to date".
    """
    if tried < 2 or len(failures) != tried:
        return None
    reasons = {f.reason.replace(f.key, "<granule>") for f in failures}
    return reasons.pop() if len(reasons) == 1 else None


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
