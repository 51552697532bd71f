"""What ``refstore status`` reports: ledger counts, quarantine reasons, coverage, runs.

Everything here comes from the ledger and the commit metadata: status never reads a
chunk (virtual or not), so it answers with sources changed, deleted or unreachable, and
on a read-only store or state folder.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from refstore.access import describe_hosts, open_bound
from refstore.config import Config
from refstore.ledger import Ledger
from refstore.listing import value_text
from refstore.mirror import known_store, ledger_behind
from refstore.models import LedgerRow, Placement, Status

__all__ = ["coverage_gaps", "find_gaps", "gather_status", "unavailable"]


def find_gaps(values: Any) -> list[tuple[str | None, str | None]]:
    """Holes in a regular concat coordinate: steps longer than 1.5x the usual one.

    Returns (last value before, first value after) for each hole.
    """
    import numpy as np

    from refstore.virtualize import format_value

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


_DATETIME_NS = re.compile(r'\{"datetime64": "([0-9T:.-]+)"\}')


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def _ns(iso: str) -> int:
    """ISO text with up to nanoseconds as int nanoseconds since the epoch (UTC)."""
    base, _, frac = iso.partition(".")
    whole = (datetime.fromisoformat(base).replace(tzinfo=UTC) - _EPOCH) // _SECOND
    return whole * 10**9 + int((frac + "000000000")[:9])


def _order_keys(texts: Sequence[str]) -> list[Any]:
    """Placement JSON texts as comparable numbers (datetimes: int ns), parsed without
    numpy when they are all datetimes (its import costs more than 20,000 parses)."""
    found = [_DATETIME_NS.fullmatch(t) for t in texts]
    if all(found):
        try:
            return [_ns(m[1]) for m in found if m]
        except ValueError:
            pass  # a year datetime cannot hold (numpy can): the general path
    from refstore.admit import order_key, placed_value

    return [order_key(placed_value(t)) for t in texts]


def coverage_gaps(placements: Sequence[Placement]) -> list[dict[str, str | None]]:
    """Gaps between the granules in the store, from their recorded first/last values.

    The usual step is the median step inside granules (between granules when every
    granule holds one step); a jump longer than 1.5x that between two neighbours is a gap.
    """
    spans = [(p.first, p.last, p.length) for p in placements if p.first and p.last]
    if len(spans) < 2:
        return []
    firsts = _order_keys([a for a, _, _ in spans])
    lasts = _order_keys([b for _, b, _ in spans])
    keys = [(a, b, n) for a, b, (_, _, n) in zip(firsts, lasts, spans, strict=True)]
    inner = [(b - a) / (n - 1) for a, b, n in keys if n > 1]
    between = [keys[i + 1][0] - keys[i][1] for i in range(len(keys) - 1)]
    usual = float(statistics.median(inner)) if inner else float(statistics.median(between))
    if usual <= 0:
        return []
    return [
        {
            "after": value_text(spans[i][1]),
            "before": value_text(spans[i + 1][0]),
        }
        for i, step in enumerate(between)
        if step > 1.5 * usual
    ]


def unavailable(rows: Iterable[LedgerRow]) -> list[dict[str, Any]]:
    """Steps the store references but may not be able to serve, and why.

    A granule in the store whose source moved on (a newer revision pending or
    quarantined) or vanished: its references carry the committed bytes' checksum, so a
    read of those steps fails loudly instead of serving other bytes. The rest of the
    dataset opens and reads as usual.
    """
    out = []
    for r in sorted(rows, key=lambda r: r.offset or 0):
        if not r.in_store or r.offset is None:
            continue
        if r.missing_since:
            why = f"its source is gone since {r.missing_since}"
        elif r.placed_revision is not None and r.revision != r.placed_revision:
            why = f"its source changed after the commit (now revision {r.revision}, {r.status}"
            why += f": {r.reason})" if r.status is Status.QUARANTINED and r.reason else ")"
        else:
            continue
        out.append(
            {
                "key": r.key,
                "steps": [r.offset, r.offset + (r.length or 0)],
                "serving": r.placed_revision,
                "why": why,
            }
        )
    return out


def gather_status(config: Config) -> dict[str, Any]:
    """A JSON-ready summary of the store and its ledger (reads no chunk)."""
    ledger = Ledger(config.ledger, readonly=True)
    try:
        # History only: no container is authorized, no chunk read, no login needed; from
        # the ledger's mirror of the repository while it is current (refstore.mirror).
        store = known_store(config)
        bound, policy = open_bound(config, known=store.known)
        head = store.head() if store.exists() else None
        return {
            "repo": config.repo,
            "ledger": config.ledger,
            "export": config.export,
            "head": head.snapshot if head else None,
            "ledger_behind": ledger_behind(config, store),
            "hosts": describe_hosts(bound, policy),
            "start": value_text(json.dumps(head.first)) if head else None,
            "end": value_text(json.dumps(head.last)) if head else None,
            "length": head.length if head else 0,
            "counts": ledger.counts(),
            "quarantined": [
                {"key": r.key, "reason": r.reason, "attempts": r.attempts}
                for r in ledger.iter_rows(Status.QUARANTINED)
            ],
            "missing": [{"key": k, "since": since} for k, since in ledger.missing()],
            "unavailable": unavailable(ledger.moved_on()),
            "gaps": coverage_gaps(ledger.placements()) if head else [],
            "runs": ledger.runs(),
        }
    finally:
        ledger.close()
