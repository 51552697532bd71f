"""The SQLite ledger: the only module that speaks SQL (through sqlite-utils).

Tables
------
``granules``  one row per granule key: url, revision, status, snapshot, time range,
              reason, attempts, timestamps.
``history``   an append-only log of status changes (revisions, quarantines, commits).
``runs``      one row per ``refstore sync``.
``meta``      small key/value facts, e.g. the last snapshot reconciled with the repo.
``expired``   snapshots ``refstore gc`` expired, with their commit metadata (the layout
              history a snapshot kept after gc still needs).
``migrations`` numbered schema migrations already applied (as in sqlite-utils).

The Icechunk history is the source of truth for what is committed; the ledger is an
index over it that :func:`refstore.sync` reconciles at the start of every run.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from refstore.errors import StoreError
from refstore.models import CommitInfo, Failure, Granule, LedgerRow, Placement, Status

__all__ = ["Ledger"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _m001_initial(db: Any) -> None:
    db.table("granules").create(
        {
            "key": str,
            "url": str,
            "revision": str,
            "size": int,
            "modified": str,
            "status": str,
            "snapshot": str,
            "start": str,
            "end": str,
            "reason": str,
            "attempts": int,
            "first_seen": str,
            "updated_at": str,
            "run_id": str,
        },
        pk="key",
        not_null={"url", "revision", "status"},
        defaults={"attempts": 0},
    )
    db.table("granules").create_index(["status"])
    db.table("history").create(
        {
            "id": int,
            "key": str,
            "revision": str,
            "status": str,
            "snapshot": str,
            "reason": str,
            "run_id": str,
            "at": str,
        },
        pk="id",
    )
    db.table("history").create_index(["key"])
    db.table("runs").create(
        {
            "id": str,
            "started_at": str,
            "finished_at": str,
            "status": str,
            "discovered": int,
            "added": int,
            "quarantined": int,
            "snapshots": str,
            "error": str,
        },
        pk="id",
    )
    db.table("meta").create({"key": str, "value": str}, pk="key")


def _m002_placement(db: Any) -> None:
    # Where each committed granule sits along the concat dim, so late and revised
    # granules can be put in place; and when a committed source disappeared.
    table = db.table("granules")
    for column, kind in (
        ("offset", int),
        ("length", int),
        ("first_value", str),
        ("last_value", str),
        ("missing_since", str),
    ):
        table.add_column(column, kind)
    table.create_index(["offset"])


def _m003_expired(db: Any) -> None:
    # What gc expired, recorded *before* Icechunk forgets it (state pending -> expired).
    db.table("expired").create(
        {
            "snapshot": str,
            "written_at": str,
            "message": str,
            "metadata": str,
            "state": str,
            "gc_run": str,
            "recorded_at": str,
            "expired_at": str,
        },
        pk="snapshot",
    )


# Numbered migrations, applied in order and recorded in the `migrations` table.
MIGRATIONS: tuple[tuple[str, Callable[[Any], None]], ...] = (
    ("001_initial", _m001_initial),
    ("002_placement", _m002_placement),
    ("003_expired", _m003_expired),
)


class Ledger:
    """The granule ledger in one SQLite file.

    Parameters
    ----------
    path
        The database file; its folder is created if missing.

    Raises
    ------
    StoreError
        The file exists but is not a SQLite database, or cannot be written.
    """

    def __init__(self, path: str | Path) -> None:
        import sqlite_utils

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            if "conn" in locals():
                conn.close()
            raise StoreError(
                f"Cannot open the ledger {self.path}: {e}.",
                "Point [store] ledger at a writable path; a corrupt ledger can be deleted "
                "and rebuilt from the repository history by the next sync.",
            ) from e

    # -- schema -------------------------------------------------------------------
    def _migrate(self) -> None:
        if not self.db.table("migrations").exists():
            self.db.table("migrations").create({"name": str, "applied_at": str}, pk="name")
        done = {r["name"] for r in self.db.table("migrations").rows}
        for name, apply in MIGRATIONS:
            if name in done:
                continue
            with self._tx():
                apply(self.db)
                self.db.table("migrations").insert({"name": name, "applied_at": _now()})

    def _tx(self) -> Any:
        """A write transaction (the connection is in autocommit mode otherwise)."""
        return _Transaction(self.db.conn)

    def close(self) -> None:
        """Close the connection."""
        self.db.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def migrations(self) -> list[str]:
        """Names of the applied migrations, in order."""
        return [r["name"] for r in self.db.table("migrations").rows_where(order_by="name")]

    # -- reads --------------------------------------------------------------------
    def rows(self) -> dict[str, LedgerRow]:
        """Every granule the ledger knows, by key."""
        return {r.key: r for r in self.iter_rows()}

    def iter_rows(self, status: Status | None = None) -> Iterator[LedgerRow]:
        """Granule rows, optionally only those with ``status``, ordered by time then key."""
        where = "status = ?" if status else None
        args = [str(status)] if status else []
        for r in self.db.table("granules").rows_where(where, args, order_by="start, key"):
            yield LedgerRow(
                key=r["key"],
                url=r["url"],
                revision=r["revision"],
                status=Status(r["status"]),
                snapshot=r["snapshot"],
                start=r["start"],
                end=r["end"],
                reason=r["reason"],
                attempts=r["attempts"] or 0,
            )

    def counts(self) -> dict[str, int]:
        """Number of granules per status."""
        sql = "select status, count(*) from granules group by status"
        return dict(self.db.execute(sql).fetchall())

    def history(self, key: str) -> list[dict[str, Any]]:
        """Every recorded status change of one granule, oldest first."""
        return list(self.db.table("history").rows_where("key = ?", [key], order_by="id"))

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent sync runs, newest first."""
        return list(self.db.table("runs").rows_where(order_by="started_at desc", limit=limit))

    def get_meta(self, key: str) -> str | None:
        """A value from the ``meta`` table, or None."""
        row = self.db.execute("select value from meta where key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    # -- writes -------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        """Store one ``meta`` value."""
        with self._tx():
            self.db.table("meta").upsert({"key": key, "value": value}, pk="key")

    def high_water(self, source: str) -> str | None:
        """The newest revision date an incremental source reported (None: never synced).

        Keyed by the source's identity (its URL), so a changed collection query starts
        from scratch.
        """
        return self.get_meta(f"high_water:{source}")

    def raise_high_water(self, source: str, value: str | None) -> None:
        """Remember ``value`` as ``source``'s high-water mark if it is newer."""
        current = self.high_water(source)
        if value and (current is None or value > current):
            self.set_meta(f"high_water:{source}", value)

    def start_run(self) -> str:
        """Record the start of a sync run and return its id."""
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
        with self._tx():
            self.db.table("runs").insert({"id": run_id, "started_at": _now(), "status": "running"})
        return run_id

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        discovered: int = 0,
        added: int = 0,
        quarantined: int = 0,
        snapshots: Iterable[str] = (),
        error: str | None = None,
    ) -> None:
        """Record how a run ended."""
        with self._tx():
            self.db.table("runs").update(
                run_id,
                {
                    "finished_at": _now(),
                    "status": status,
                    "discovered": discovered,
                    "added": added,
                    "quarantined": quarantined,
                    "snapshots": json.dumps(list(snapshots)),
                    "error": error,
                },
            )

    def record_seen(self, granules: Iterable[Granule], run_id: str) -> None:
        """Insert new granules, or reset revised ones to ``new`` with their new revision."""
        now = _now()
        with self._tx():
            for g in granules:
                existing = self.db.execute(
                    "select revision from granules where key = ?", [g.key]
                ).fetchone()
                if existing is None:
                    self.db.table("granules").insert(
                        {
                            "key": g.key,
                            "url": g.url,
                            "revision": g.revision,
                            "size": g.size,
                            "modified": g.modified,
                            "status": str(Status.NEW),
                            "attempts": 0,
                            "first_seen": now,
                            "updated_at": now,
                            "run_id": run_id,
                        }
                    )
                elif existing[0] != g.revision:
                    self.db.table("granules").update(
                        g.key,
                        {
                            "url": g.url,
                            "revision": g.revision,
                            "size": g.size,
                            "modified": g.modified,
                            "status": str(Status.NEW),
                            "reason": None,
                            "updated_at": now,
                            "run_id": run_id,
                        },
                    )
                    self._log(g.key, g.revision, Status.NEW, None, "revised upstream", run_id)

    def mark_virtualized(
        self, keys: Iterable[str], ranges: dict[str, tuple[str | None, str | None]]
    ) -> None:
        """Granules whose virtual datasets were built in this run."""
        now = _now()
        with self._tx():
            for key in keys:
                start, end = ranges.get(key, (None, None))
                self.db.execute(
                    "update granules set status = ?, start = ?, end = ?, attempts = attempts + 1,"
                    " updated_at = ? where key = ? and status != ?",
                    [str(Status.VIRTUALIZED), start, end, now, key, str(Status.COMMITTED)],
                )

    def quarantine(self, failures: Iterable[Failure], run_id: str) -> None:
        """Set granules aside with the one-line reason why."""
        now = _now()
        with self._tx():
            for f in failures:
                self.db.execute(
                    "update granules set status = ?, reason = ?, attempts = attempts + 1,"
                    " updated_at = ?, run_id = ? where key = ?",
                    [str(Status.QUARANTINED), f.reason, now, run_id, f.key],
                )
                rev = self.db.execute(
                    "select revision from granules where key = ?", [f.key]
                ).fetchone()
                self._log(
                    f.key, rev[0] if rev else None, Status.QUARANTINED, None, f.reason, run_id
                )

    def requeue_quarantined(self, keys: Iterable[str] | None = None) -> list[str]:
        """Put quarantined granules (all, or ``keys``) back to ``new`` for the next sync."""
        with self._tx():
            rows = [
                r.key
                for r in self.iter_rows(Status.QUARANTINED)
                if keys is None or r.key in set(keys)
            ]
            for key in rows:
                self.db.execute(
                    "update granules set status = ?, updated_at = ? where key = ?",
                    [str(Status.NEW), _now(), key],
                )
        return rows

    def apply_commits(self, commits: Iterable[CommitInfo]) -> int:
        """Mark every granule placed by ``commits`` committed (oldest commit first).

        This is how a crash between an Icechunk commit and the ledger update heals:
        the commit metadata is the source of truth. Returns the rows changed.
        """
        changed = 0
        now = _now()
        with self._tx():
            for c in commits:
                placements = c.placements or tuple(
                    Placement(key, rev, "", -1, 0)
                    for key, rev in zip(
                        c.granules, c.revisions or ("",) * len(c.granules), strict=True
                    )
                )
                for p in placements:
                    row = self.db.execute(
                        "select status, snapshot, revision from granules where key = ?", [p.key]
                    ).fetchone()
                    if row is not None and row[0] == Status.COMMITTED and row[1] == c.snapshot:
                        continue
                    where: dict[str, Any] = {
                        "status": str(Status.COMMITTED),
                        "snapshot": c.snapshot,
                        "updated_at": now,
                    }
                    if p.offset >= 0:
                        where |= {
                            "offset": p.offset,
                            "length": p.length,
                            "first_value": p.first,
                            "last_value": p.last,
                        }
                    if row is None:
                        # The ledger was lost or is older than the repo: rebuild the row.
                        self.db.table("granules").insert(
                            {
                                "key": p.key,
                                "url": p.url,
                                "revision": p.revision,
                                "attempts": 1,
                                "first_seen": now,
                                "run_id": c.run_id,
                                **where,
                            }
                        )
                    elif p.revision and row[2] != p.revision:
                        # A newer revision was seen after this commit; keep it queued.
                        continue
                    else:
                        self.db.table("granules").update(p.key, {**where, "reason": None})
                    self._log(p.key, p.revision, Status.COMMITTED, c.snapshot, c.message, c.run_id)
                    changed += 1
        return changed

    def placements(self) -> list[Placement]:
        """Granules in the store, in concat order, for placing late/revised ones.

        A revised granule waiting for its replacement keeps its old place (and row).
        """
        sql = (
            "select key, revision, url, offset, length, first_value, last_value from granules"
            " where offset is not null order by offset"
        )
        return [
            Placement(key, rev, url, offset, length, first, last)
            for key, rev, url, offset, length, first, last in self.db.execute(sql).fetchall()
        ]

    def mark_missing(self, keys: Iterable[str]) -> None:
        """Record when committed granules were first found gone from the source."""
        wanted = set(keys)
        with self._tx():
            for (key,) in self.db.execute(
                "select key from granules where missing_since is not null"
            ).fetchall():
                if key not in wanted:  # it came back
                    self.db.execute("update granules set missing_since = null where key = ?", [key])
            for key in wanted:
                self.db.execute(
                    "update granules set missing_since = coalesce(missing_since, ?) where key = ?",
                    [_now(), key],
                )

    def missing(self) -> list[tuple[str, str]]:
        """Committed granules whose source disappeared, with since when."""
        return [
            (k, s)
            for k, s in self.db.execute(
                "select key, missing_since from granules where missing_since is not null"
                " order by key"
            ).fetchall()
        ]

    # -- expired snapshots (refstore gc) --------------------------------------------
    def record_expiring(self, rows: Iterable[dict[str, Any]], gc_run: str) -> None:
        """Remember snapshots about to be expired (``snapshot``, ``written_at``,
        ``message``, ``metadata``) as ``pending``; already expired ones stay as they are."""
        with self._tx():
            for r in rows:
                self.db.execute(
                    "insert into expired (snapshot, written_at, message, metadata, state,"
                    " gc_run, recorded_at) values (?, ?, ?, ?, 'pending', ?, ?)"
                    " on conflict(snapshot) do nothing",
                    [r["snapshot"], r["written_at"], r["message"], r["metadata"], gc_run, _now()],
                )

    def settle_expired(self, expired: Iterable[str], pending_alive: Iterable[str]) -> None:
        """Mark ``expired`` snapshots expired, and pending ones still alive (tag tips cut
        from ``main``'s history) ``kept``: both keep their metadata for layouts."""
        now = _now()
        with self._tx():
            for snapshot in expired:
                self.db.execute(
                    "update expired set state = 'expired', expired_at = coalesce(expired_at, ?)"
                    " where snapshot = ?",
                    [now, snapshot],
                )
            for snapshot in pending_alive:
                self.db.execute(
                    "update expired set state = 'kept' where snapshot = ? and state = 'pending'",
                    [snapshot],
                )

    def expired(self, state: str | None = None) -> list[dict[str, Any]]:
        """Recorded expired (or ``state``) snapshots, oldest first."""
        where, args = ("state = ?", [state]) if state else (None, [])
        return list(self.db.table("expired").rows_where(where, args, order_by="written_at"))

    def _log(
        self,
        key: str,
        revision: str | None,
        status: Status,
        snapshot: str | None,
        reason: str | None,
        run_id: str | None,
    ) -> None:
        self.db.table("history").insert(
            {
                "key": key,
                "revision": revision,
                "status": str(status),
                "snapshot": snapshot,
                "reason": reason,
                "run_id": run_id,
                "at": _now(),
            }
        )


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``/``ROLLBACK`` around a block, re-entrant."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.outer = False

    def __enter__(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
