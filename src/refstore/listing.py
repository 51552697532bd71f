"""``refstore ls``: one row per granule — key, state, time range, position along the
concat dim, revision, snapshot, reason — from the ledger, or with ``at`` from what a
snapshot held (its commit history, including commits gc expired)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from refstore.config import Config

__all__ = ["GranuleRow", "list_granules", "value_text"]


@dataclass(frozen=True, slots=True)
class GranuleRow:
    """One line of ``refstore ls``."""

    key: str
    state: str
    start: str | None
    end: str | None
    offset: int | None
    length: int | None
    revision: str
    snapshot: str | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


_DATETIME_NS = re.compile(r'\{"datetime64": "(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?"\}')


def value_text(text: str | None) -> str | None:
    """A placement's JSON concat value as ISO text (or the number).

    Datetimes, as :func:`refstore.admit.to_json_value` writes them, are cut to seconds
    as text (what ``format_value`` returns, without numpy: ``ls`` of 10,000 granules
    converts 20,000 values).
    """
    if not text:
        return None
    m = _DATETIME_NS.fullmatch(text)
    if m:
        return m[1]
    from refstore.admit import placed_value
    from refstore.virtualize import format_value

    return format_value(placed_value(text))


def _filter(rows: Iterable[GranuleRow], state: str | None, since: str | None) -> list[GranuleRow]:
    out = []
    for r in rows:
        if state is not None and r.state != state:
            continue
        if since is not None and (r.end or r.start or "") < since:
            continue  # ISO texts compare in time order
        out.append(r)
    return out


def list_granules(
    config: Config, *, state: str | None = None, since: str | None = None, at: str | None = None
) -> list[GranuleRow]:
    """The granules of the store, in concat order (then key).

    Parameters
    ----------
    state
        Only granules in this state (``committed``, ``quarantined``, ``new``, ``missing``…).
    since
        Only granules whose data ends at or after this concat value (ISO text).
    at
        A snapshot id, tag or date: the granules that snapshot held (all ``committed``).

    Raises
    ------
    NotFoundError
        ``at`` matches nothing, or gc expired it.
    """
    from refstore.ledger import Ledger

    ledger = Ledger(config.ledger, readonly=True)
    try:
        if at is not None:
            rows = _held_at(config, ledger, at)
        else:
            rows = _from_ledger(ledger)
    finally:
        ledger.close()
    return _filter(rows, state, since)


def _from_ledger(ledger: Any) -> list[GranuleRow]:
    rows = []
    for (
        key,
        status,
        start,
        end,
        offset,
        length,
        rev,
        snap,
        reason,
        gone,
        first,
        last,
    ) in ledger.listing():
        placed = offset is not None
        if gone is not None:
            status, reason = "missing", f"gone from the source since {gone[:19]}"
        rows.append(
            GranuleRow(
                key=key,
                state=status,
                start=value_text(first) if placed and first else start,
                end=value_text(last) if placed and last else end,
                offset=offset,
                length=length if placed else None,
                revision=rev,
                snapshot=snap,
                reason=reason,
            )
        )
    return rows


def _held_at(config: Config, ledger: Any, at: str) -> list[GranuleRow]:
    from refstore.api import open_store
    from refstore.maintenance import check_not_expired, full_history
    from refstore.verify import layout_at

    store = open_store(config)
    check_not_expired(config, store, at)
    history = full_history(store, ledger, store.resolve(at))
    landed: dict[str, str] = {}
    for c in history:
        for p in c.placements:
            landed[p.key] = c.snapshot
    return [
        GranuleRow(
            key=p.key,
            state="committed",
            start=value_text(p.first),
            end=value_text(p.last),
            offset=p.offset,
            length=p.length,
            revision=p.revision,
            snapshot=landed.get(p.key),
        )
        for p in layout_at(history)
    ]


def render(rows: list[GranuleRow]) -> list[str]:
    """Aligned text lines (a header, then one per granule)."""
    head = ("key", "state", "start", "end", "offset", "rev", "snapshot", "reason")
    table = [
        (
            r.key,
            r.state,
            r.start or "-",
            r.end or "-",
            "-" if r.offset is None else f"{r.offset}+{r.length}",
            r.revision[:12],
            r.snapshot or "-",
            r.reason or "",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=False)]
    return [
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *table)
    ]


def dumps(rows: list[GranuleRow]) -> str:
    """JSON text of ``rows``."""
    return json.dumps([r.to_dict() for r in rows], indent=2)
