"""Frozen value objects passed between the pipeline's steps."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    """The state of a granule's newest revision (see :mod:`refstore.lifecycle`).

    new → virtualized → committed, or quarantined; ``revised`` is a granule in the
    store whose newer revision waits to replace the one served. Whether a granule is
    in the store is not a status: it is its placement (:attr:`LedgerRow.in_store`).
    """

    NEW = "new"
    VIRTUALIZED = "virtualized"
    COMMITTED = "committed"
    REVISED = "revised"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class Granule:
    """One file of the collection as a source lists it.

    ``key`` is stable across runs (the file name for folders and prefixes, the CMR
    native id for Earthdata); ``revision`` changes when the file is replaced upstream
    (size+mtime, ETag or CMR revision-id). ``sidecar`` is the granule's DMR++ sidecar
    when the source names one (CMR ``RelatedUrls``); else ``<url>.dmrpp`` is looked for.
    """

    key: str
    url: str
    revision: str
    size: int | None = None
    modified: str | None = None
    sidecar: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """What the ledger knows about one granule."""

    key: str
    url: str
    revision: str
    status: Status
    snapshot: str | None = None
    start: str | None = None
    end: str | None = None
    reason: str | None = None
    attempts: int = 0
    offset: int | None = None
    length: int | None = None
    placed_revision: str | None = None
    missing_since: str | None = None
    fingerprint: str | None = None

    @property
    def in_store(self) -> bool:
        """Whether the committed history places this granule (the one fact for it)."""
        return self.offset is not None


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """What one sync will do, derived purely from discovery and the ledger."""

    new: tuple[Granule, ...] = ()
    revised: tuple[Granule, ...] = ()
    unchanged: int = 0
    quarantined: int = 0
    missing: tuple[str, ...] = ()
    replacing: tuple[str, ...] = ()
    reverted: tuple[str, ...] = ()
    requeued: tuple[str, ...] = ()

    @property
    def todo(self) -> tuple[Granule, ...]:
        """Granules to virtualize in this run, in a stable order."""
        return tuple(sorted(self.new + self.revised, key=lambda g: g.key))


@dataclass(frozen=True, slots=True)
class Failure:
    """A granule that could not be used, with a one-line reason.

    ``waiting``: it is fine itself but waits for another granule (one after its place
    that cannot be re-read now); it is tried again on every sync until it lands.
    """

    key: str
    reason: str
    waiting: bool = False


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one committed granule sits along the concat dim.

    ``first``/``last`` are JSON texts of the concat values (see
    :func:`refstore.admit.to_json_value`), exactly comparable after decoding.
    """

    key: str
    revision: str
    url: str
    offset: int
    length: int
    first: str | None = None
    last: str | None = None
    # (variable, start, end): store steps held as native chunks (a partial boundary
    # chunk in a rectilinear store, refstore.chunkgrid); everything else is virtual.
    native: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """One snapshot written by refstore, as read back from the repository history."""

    snapshot: str
    message: str
    written_at: str
    granules: tuple[str, ...] = ()
    revisions: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    run_id: str | None = None
    placements: tuple[Placement, ...] = ()
    count: int = 0  # granules placed (also when their keys are not loaded)
    # Index of the commit's detail element (refstore.details) when its per-granule lists
    # were not loaded with it; None when they were, or the commit predates details.
    detail_at: int | None = None


@dataclass(frozen=True, slots=True)
class SyncResult:
    """Outcome of one ``refstore sync``."""

    run_id: str
    discovered: int
    added: tuple[str, ...] = ()
    quarantined: tuple[Failure, ...] = ()
    snapshots: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    export: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    tag_refused: str | None = None  # why the asked-for tag could not be created
    conflicts: int = 0  # commit races lost to other writers (each retried)
    placed_elsewhere: tuple[str, ...] = ()  # granules another writer placed first

    @property
    def up_to_date(self) -> bool:
        """True when the run added nothing."""
        return not self.added

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``--json`` output."""
        return {
            "run_id": self.run_id,
            "discovered": self.discovered,
            "added": list(self.added),
            "quarantined": [{"key": f.key, "reason": f.reason} for f in self.quarantined],
            "snapshots": list(self.snapshots),
            "missing": list(self.missing),
            "start": self.start,
            "end": self.end,
            "export": self.export,
            "up_to_date": self.up_to_date,
            "warnings": list(self.warnings),
            "conflicts": self.conflicts,
            "placed_elsewhere": list(self.placed_elsewhere),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
