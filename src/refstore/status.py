"""What ``refstore status`` reports: ledger counts, quarantine reasons, coverage, runs."""

from __future__ import annotations

from typing import Any

from refstore.access import describe_hosts, open_bound
from refstore.admit import from_json_value
from refstore.config import Config
from refstore.ledger import Ledger
from refstore.models import Status
from refstore.store import Store
from refstore.virtualize import format_value

__all__ = ["coverage_gaps", "find_gaps", "gather_status"]


def find_gaps(values: Any) -> list[tuple[str | None, str | None]]:
    """Holes in a regular concat coordinate: steps longer than 1.5x the usual one.

    Returns (last value before, first value after) for each hole.
    """
    import numpy as np

    arr = np.asarray(values)
    if arr.size < 3:
        return []
    ordered = arr.astype("datetime64[ns]").astype(np.int64) if arr.dtype.kind == "M" else arr
    steps = np.diff(ordered)
    usual = np.median(steps)
    if usual <= 0:
        return []
    return [
        (format_value(arr[i]), format_value(arr[i + 1])) for i in np.nonzero(steps > 1.5 * usual)[0]
    ]


def coverage_gaps(store: Store, concat_dim: str) -> list[dict[str, str | None]]:
    """Gaps in the head's concat coordinate (reads the coordinate: one chunk a year)."""
    ds = store.open_dataset(None)
    if concat_dim not in ds.variables:
        return []
    return [{"after": a, "before": b} for a, b in find_gaps(ds[concat_dim].values)]


def gather_status(config: Config) -> dict[str, Any]:
    """A JSON-ready summary of the store and its ledger."""
    ledger = Ledger(config.ledger)
    try:
        store, policy = open_bound(config)
        head = store.head() if store.exists() else None
        return {
            "repo": config.repo,
            "ledger": config.ledger,
            "export": config.export,
            "head": head.snapshot if head else None,
            "hosts": describe_hosts(store, policy),
            "start": format_value(from_json_value(head.first)) if head else None,
            "end": format_value(from_json_value(head.last)) if head else None,
            "length": head.length if head else 0,
            "counts": ledger.counts(),
            "quarantined": [
                {"key": r.key, "reason": r.reason, "attempts": r.attempts}
                for r in ledger.iter_rows(Status.QUARANTINED)
            ],
            "missing": [{"key": k, "since": since} for k, since in ledger.missing()],
            "gaps": coverage_gaps(store, config.concat_dim) if head else [],
            "runs": ledger.runs(),
        }
    finally:
        ledger.close()
