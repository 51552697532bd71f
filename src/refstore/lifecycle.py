"""A granule's life as one state machine: its states, every transition and its trigger.

The ledger's ``status`` column is the state of the granule's *newest revision*. Whether
the granule is *in the store* is a separate, single fact: it has a placement (an offset
along the concat dim) in the committed history, mirrored by the ledger's ``offset``
column and the revision that placement serves (``placed_revision``). A granule in the
store keeps being served while a newer revision is pending or quarantined.

:data:`TRANSITIONS` is the table; :func:`next_status` is how the ledger applies it, so
a transition that is not in the table does not happen. ``docs/states.md`` shows the
same table (a test keeps the two equal). Every transition is written to the ledger's
``history`` table under its event name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from refstore.models import Status

__all__ = ["TRANSITIONS", "Event", "Transition", "markdown_table", "next_status"]


class Event(enum.StrEnum):
    """What happened to a granule (the trigger of a transition)."""

    SEEN = "seen"
    REVISED = "revised"
    VIRTUALIZED = "virtualized"
    QUARANTINED = "quarantined"
    COMMITTED = "committed"
    SUPERSEDED = "superseded"
    REQUEUED = "requeued"
    REVERTED = "reverted"
    VANISHED = "missing"
    RETURNED = "returned"


_ANY: frozenset[Status | None] = frozenset(Status) | {None}
_KNOWN: frozenset[Status | None] = frozenset(Status)
_PENDING: frozenset[Status | None] = frozenset(
    {Status.NEW, Status.VIRTUALIZED, Status.REVISED, Status.QUARANTINED}
)


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the table.

    ``in_store`` restricts the row to granules in the store (True), not in it (False)
    or either (None). ``target`` None means the status stays (a flag or a history
    entry only).
    """

    event: Event
    sources: frozenset[Status | None]
    in_store: bool | None
    target: Status | None
    trigger: str


TRANSITIONS: tuple[Transition, ...] = (
    Transition(Event.SEEN, frozenset({None}), False, Status.NEW, "discovery lists an unknown key"),
    Transition(
        Event.REVISED,
        _KNOWN,
        False,
        Status.NEW,
        "discovery lists a known key, not in the store, with another revision",
    ),
    Transition(
        Event.REVISED,
        _KNOWN,
        True,
        Status.REVISED,
        "discovery lists a key in the store with another revision; the old one is served",
    ),
    Transition(
        Event.VIRTUALIZED,
        frozenset({Status.NEW, Status.REVISED, Status.VIRTUALIZED}),
        None,
        Status.VIRTUALIZED,
        "its virtual dataset was built in this run (not committed yet)",
    ),
    Transition(
        Event.QUARANTINED,
        _PENDING,
        None,
        Status.QUARANTINED,
        "it cannot be read or does not fit the store; reason and config fingerprint kept",
    ),
    Transition(
        Event.COMMITTED,
        _ANY,
        None,
        Status.COMMITTED,
        "a snapshot places its newest revision (also when rebuilt from the history)",
    ),
    Transition(
        Event.SUPERSEDED,
        _KNOWN,
        True,
        None,
        "a snapshot placed a newer revision; the old one stays in earlier snapshots",
    ),
    Transition(
        Event.REQUEUED,
        frozenset({Status.QUARANTINED}),
        False,
        Status.NEW,
        "`refstore retry`; the config changed; or it waited for another granule",
    ),
    Transition(
        Event.REQUEUED,
        frozenset({Status.QUARANTINED}),
        True,
        Status.REVISED,
        "`refstore retry`; the config changed; or it waited for another granule",
    ),
    Transition(
        Event.REVERTED,
        _PENDING,
        True,
        Status.COMMITTED,
        "the source is back to the revision the store serves: no new snapshot",
    ),
    Transition(
        Event.VANISHED,
        _KNOWN,
        True,
        None,
        "discovery no longer lists a granule in the store: kept, missing since then",
    ),
    Transition(
        Event.RETURNED,
        _KNOWN,
        True,
        None,
        "a missing granule is listed again (same revision: nothing else to do)",
    ),
)


def next_status(current: Status | None, event: Event, *, in_store: bool) -> Status | None:
    """The status after ``event``; ``current`` when the event only sets a flag.

    Returns None when the table has no such transition (the ledger then leaves the row
    alone, e.g. a late "virtualized" for a row a concurrent commit already settled).
    """
    for t in TRANSITIONS:
        if t.event is event and current in t.sources and t.in_store in (None, in_store):
            return current if t.target is None else t.target
    return None


def markdown_table() -> str:
    """The table as Markdown, as ``docs/states.md`` shows it."""

    def states(sources: frozenset[Status | None]) -> str:
        if sources == _ANY:
            return "any (or unknown)"
        if sources == _KNOWN:
            return "any"
        return ", ".join(sorted("(unknown)" if s is None else str(s) for s in sources))

    lines = [
        "| event | from | in the store | to | trigger |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in TRANSITIONS:
        where = {None: "either", True: "yes", False: "no"}[t.in_store]
        target = "(unchanged)" if t.target is None else str(t.target)
        lines.append(f"| {t.event} | {states(t.sources)} | {where} | {target} | {t.trigger} |")
    return "\n".join(lines) + "\n"
