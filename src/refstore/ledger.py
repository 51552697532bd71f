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

import contextlib
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from refstore.errors import StoreError
from refstore.lifecycle import Event, next_status
from refstore.models import CommitInfo, Failure, Granule, LedgerRow, Placement, Status

__all__ = ["Ledger", "read_meta", "write_meta"]


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


def _m003_lifecycle(db: Any) -> None:
    # The revision the store serves (apart from the newest one seen), the dataset
    # settings a quarantine was decided under, and the event of each history entry.
    granules = db.table("granules")
    granules.add_column("placed_revision", str)
    granules.add_column("fingerprint", str)
    db.execute(
        "update granules set placed_revision = revision"
        " where offset is not null and status = 'committed'"
    )
    db.table("history").add_column("event", str)


def _m004_expired(db: Any) -> None:
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


def _m005_missing_index(db: Any) -> None:
    # The rows recorded missing, found without reading every row: a sync's plan and
    # mark_missing ask for them (0.04 s and 0.03 s of a +1 at 100,000 granules by scan).
    db.execute(
        "create index if not exists idx_granules_missing on granules(missing_since)"
        " where missing_since is not null"
    )


# Numbered migrations, applied in order and recorded in the `migrations` table.
MIGRATIONS: tuple[tuple[str, Callable[[Any], None]], ...] = (
    ("001_initial", _m001_initial),
    ("002_placement", _m002_placement),
    ("003_lifecycle", _m003_lifecycle),
    ("004_expired", _m004_expired),
    ("005_missing_index", _m005_missing_index),
)


class Ledger:
    """The granule ledger in one SQLite file.

    Parameters
    ----------
    path
        The database file; its folder is created if missing.
    readonly
        Open for reading only (``status``, ``verify``): nothing is created or migrated,
        a read-only file or folder is fine, and a missing file reads as empty.

    Raises
    ------
    StoreError
        The file exists but is not a SQLite database, or cannot be written.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._db: Any = None
        conn: sqlite3.Connection | None = None
        try:
            if readonly:
                conn = self.conn = _connect_readonly(self.path)
                if self._pending():
                    # Missing or older than this refstore: read a migrated copy in memory.
                    memory = sqlite3.connect(":memory:", isolation_level=None)
                    conn.backup(memory)
                    conn.close()
                    conn = self.conn = memory
                    self._migrate()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
        except (sqlite3.DatabaseError, OSError) as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"Cannot open the ledger {self.path}: {e}.", self._hint(e)) from e

    def _hint(self, e: BaseException) -> str:
        folder = self.path.parent
        if _no_space(folder) or "disk is full" in str(e):
            return (
                f"The file system holding {folder} is full: free some space there and run "
                "again (nothing was changed; the ledger and the store are intact)."
            )
        if isinstance(e, OSError) or "readonly" in str(e) or "unable to open" in str(e):
            return (
                f"Make {folder} writable (or point [store] ledger elsewhere); "
                "commands that only read (status, log, verify) need no write access."
            )
        return (
            "Point [store] ledger at a writable path; a corrupt ledger can be deleted "
            "and rebuilt from the repository history by the next sync."
        )

    @property
    def db(self) -> Any:
        """sqlite-utils over the connection, imported on first use: reads are plain SQL,
        so ``status``, ``ls`` and ``log`` never pay its import (~0.1 s, numpy included)."""
        if self._db is None:
            # execute_plugins=False: refstore uses no sqlite-utils plugin, and looking them
            # up scans every installed package's entry points (~0.07 s).
            from refstore.clilog import import_sqlite_utils_lightly

            import_sqlite_utils_lightly()  # without pandas, unless it is imported already
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn, execute_plugins=False)
        return self._db

    # -- schema -------------------------------------------------------------------
    def _pending(self) -> bool:
        sql = "select name from sqlite_master where type = 'table' and name = 'migrations'"
        if self.conn.execute(sql).fetchone() is None:
            return True
        done = {name for (name,) in self.conn.execute("select name from migrations")}
        return any(name not in done for name, _ in MIGRATIONS)

    def _migrate(self) -> None:
        if not self._pending():
            return
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
        return _Transaction(self.conn, self._write_failed)

    def _write_failed(self, e: sqlite3.OperationalError) -> StoreError | None:
        """The ledger could not be written (full or read-only file system): an error
        naming the file and the fix; None for other database errors."""
        text = str(e)
        if not any(s in text for s in ("disk is full", "readonly", "disk I/O error")):
            return None
        return StoreError(f"Cannot write the ledger {self.path}: {e}.", self._hint(e))

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

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
        # Plain SQL: sqlite-utils' rows_where costs 3x as much on 10,000 rows (a no-op
        # sync, ``ls`` and ``status`` read them all).
        where = " where status = ?" if status else ""
        args = [str(status)] if status else []
        for r in self._select(f"select * from granules{where} order by start, key", args):
            yield _row(r)

    def _select(self, sql: str, args: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """Rows of ``sql`` as dicts, with plain sqlite3 (sqlite-utils' ``rows_where`` costs
        3x as much on 10,000 rows and its import is kept off the read-only commands)."""
        cursor = self.conn.execute(sql, list(args))
        names = [d[0] for d in cursor.description]
        for values in cursor:
            yield dict(zip(names, values, strict=True))

    def _rows_where(self, where: str, args: Sequence[Any] = ()) -> dict[str, LedgerRow]:
        """The granule rows matching ``where``, by key."""
        return {
            r["key"]: _row(r) for r in self._select(f"select * from granules where {where}", args)
        }

    def listing(self) -> list[tuple[Any, ...]]:
        """What ``refstore ls`` shows of every granule, in concat order (placed granules
        by offset, then the rest, each by key), as plain tuples: ``(key, status, start,
        end, offset, length, revision, snapshot, reason, missing_since, first_value,
        last_value)``. One narrow query and no row objects: ``ls`` reads every granule."""
        sql = (
            "select key, status, start, end, offset, length, revision, snapshot, reason,"
            " missing_since, first_value, last_value from granules"
            " order by offset is null, offset, key"
        )
        return self.conn.execute(sql).fetchall()

    def moved_on(self) -> list[LedgerRow]:
        """Granules in the store whose source changed or vanished after the commit (what
        ``status`` reports as unavailable), without reading every row."""
        sql = (
            "select * from granules where offset is not null and (missing_since is not null"
            " or (placed_revision is not null and placed_revision != revision))"
        )
        return [_row(r) for r in self._select(sql)]

    def rows_for(self, keys: Iterable[str]) -> dict[str, LedgerRow]:
        """The rows of ``keys`` the ledger knows (by primary key: cost ∝ ``keys``)."""
        wanted = sorted(set(keys))
        found: dict[str, LedgerRow] = {}
        for i in range(0, len(wanted), _IN_LIMIT):
            part = wanted[i : i + _IN_LIMIT]
            where = f"key in ({', '.join('?' * len(part))})"
            found |= self._rows_where(where, part)
        return found

    def unsettled(self, fingerprint: str | None, waiting: str) -> dict[str, LedgerRow]:
        """The rows a sync must look at even if their source is unchanged: not settled
        (new, virtualized, revised), quarantined as ``waiting`` or under settings other
        than ``fingerprint``, or recorded missing from the source. At steady state these
        are few, whatever the size of the ledger (the status column is indexed)."""
        pending = ", ".join(f"'{s}'" for s in (Status.NEW, Status.VIRTUALIZED, Status.REVISED))
        quarantined = (
            f"status = '{Status.QUARANTINED}' and fingerprint is not null"
            " and (fingerprint = ? or (? is not null and fingerprint != ?))"
        )
        # Three queries, each on an index (status; the partial index of missing rows):
        # SQLite's planner scanned every row for the three terms joined by OR.
        found: dict[str, LedgerRow] = {}
        for where, args in (
            (f"status in ({pending})", []),
            (quarantined, [waiting, fingerprint, fingerprint]),
            ("missing_since is not null", []),
        ):
            found |= self._rows_where(where, args)
        return found

    def counts(self) -> dict[str, int]:
        """Number of granules per status."""
        sql = "select status, count(*) from granules group by status"
        return dict(self.conn.execute(sql).fetchall())

    def row(self, key: str) -> LedgerRow | None:
        """One granule's row, or None."""
        found = list(self.db.table("granules").rows_where("key = ?", [key]))
        return _row(found[0]) if found else None

    def history(self, key: str) -> list[dict[str, Any]]:
        """Every recorded status change of one granule, oldest first."""
        return list(self.db.table("history").rows_where("key = ?", [key], order_by="id"))

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent sync runs, newest first."""
        return list(self._select("select * from runs order by started_at desc limit ?", [limit]))

    def get_meta(self, key: str) -> str | None:
        """A value from the ``meta`` table, or None."""
        row = self.conn.execute("select value from meta where key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    # -- writes -------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        """Store one ``meta`` value."""
        with self._tx():
            self.db.table("meta").upsert({"key": key, "value": value}, pk="key")

    def set_metas(self, values: dict[str, str | None]) -> None:
        """Store (or, for None, delete) several ``meta`` values in one transaction."""
        with self._tx():
            for key, value in values.items():
                if value is None:
                    self.conn.execute("delete from meta where key = ?", [key])
                else:
                    self.conn.execute(
                        "insert into meta (key, value) values (?, ?) "
                        "on conflict(key) do update set value = excluded.value",
                        [key, value],
                    )

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

    def _move(
        self,
        key: str,
        event: Event,
        run_id: str | None,
        *,
        note: str | None = None,
        snapshot: str | None = None,
        columns: dict[str, Any] | None = None,
    ) -> Status | None:
        """Apply one transition of :data:`refstore.lifecycle.TRANSITIONS` to a row (and
        ``columns``) and record it in the history with ``note``; returns the new status,
        or None if the table has no such transition from the row's state (the row is
        then left alone)."""
        row = self.row(key)
        if row is None:
            return None
        target = next_status(row.status, event, in_store=row.in_store)
        if target is None:
            return None
        changes = {**(columns or {}), "status": str(target), "updated_at": _now()}
        self.db.table("granules").update(key, changes)
        revision = changes.get("revision", row.revision)
        self._log(key, revision, target, snapshot, note, run_id, event)
        return target

    def record_seen(self, granules: Iterable[Granule], run_id: str) -> None:
        """Insert new granules (``seen``); record another revision of known ones
        (``revised``: back to ``new``, or ``revised`` while the store serves the old)."""
        now = _now()
        with self._tx():
            for g in granules:
                row = self.row(g.key)
                if row is None:
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
                    self._log(g.key, g.revision, Status.NEW, None, None, run_id, Event.SEEN)
                elif row.revision != g.revision:
                    self._move(
                        g.key,
                        Event.REVISED,
                        run_id,
                        note="revised upstream",
                        columns={
                            "url": g.url,
                            "revision": g.revision,
                            "size": g.size,
                            "modified": g.modified,
                            "reason": None,
                            "run_id": run_id,
                        },
                    )

    def mark_virtualized(
        self, keys: Iterable[str], ranges: dict[str, tuple[str | None, str | None]]
    ) -> None:
        """Granules whose virtual datasets were built in this run."""
        with self._tx():
            for key in keys:
                start, end = ranges.get(key, (None, None))
                row = self.row(key)
                if row is None:
                    continue
                self._move(
                    key,
                    Event.VIRTUALIZED,
                    None,
                    columns={"start": start, "end": end, "attempts": row.attempts + 1},
                )

    def quarantine(
        self, failures: Iterable[Failure], run_id: str, fingerprint: str | None = None
    ) -> None:
        """Set granules aside with the one-line reason why and the dataset settings
        (``fingerprint``) it was decided under."""
        with self._tx():
            for f in failures:
                row = self.row(f.key)
                if row is None:
                    continue
                attempts = row.attempts + (row.status is not Status.VIRTUALIZED)
                self._move(
                    f.key,
                    Event.QUARANTINED,
                    run_id,
                    note=f.reason,
                    columns={
                        "reason": f.reason,
                        "attempts": attempts,
                        "run_id": run_id,
                        "fingerprint": fingerprint,
                    },
                )

    def requeue_quarantined(
        self, keys: Iterable[str] | None = None, reason: str = "retry requested"
    ) -> list[str]:
        """Put quarantined granules (all, or ``keys``) back in the queue for the next sync."""
        wanted = None if keys is None else set(keys)
        with self._tx():
            rows = [
                r.key
                for r in self.iter_rows(Status.QUARANTINED)
                if wanted is None or r.key in wanted
            ]
            for key in rows:
                self._move(key, Event.REQUEUED, None, note=reason)
        return rows

    def revert(self, keys: Iterable[str], run_id: str) -> None:
        """Sources back to the revision the store serves: committed again, no snapshot."""
        with self._tx():
            for key in keys:
                row = self.row(key)
                if row is None or row.placed_revision is None:
                    continue
                self._move(
                    key,
                    Event.REVERTED,
                    run_id,
                    note="the source is back to the revision in the store",
                    columns={
                        "revision": row.placed_revision,
                        "reason": None,
                        "fingerprint": None,
                        "run_id": run_id,
                    },
                )

    def apply_commits(self, commits: Iterable[CommitInfo]) -> int:
        """Record where ``commits`` (oldest first) placed each granule; a granule whose
        placed revision is its newest becomes ``committed``.

        This is how a crash between an Icechunk commit and the ledger update heals:
        the commit metadata is the source of truth for placements. A granule whose newer
        revision was seen after the commit keeps its status, with its placement (and the
        revision it serves) updated. Returns the rows changed.
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
                    row = self.row(p.key)
                    if row is not None and row.snapshot == c.snapshot:
                        continue  # applied already
                    placed: dict[str, Any] = {"snapshot": c.snapshot, "updated_at": now}
                    if p.revision:
                        placed["placed_revision"] = p.revision
                    if p.offset >= 0:
                        placed |= {
                            "offset": p.offset,
                            "length": p.length,
                            "first_value": p.first,
                            "last_value": p.last,
                        }
                    changed += 1
                    if row is None:
                        # The ledger was lost or is older than the repo: rebuild the row.
                        self.db.table("granules").insert(
                            {
                                "key": p.key,
                                "url": p.url,
                                "revision": p.revision,
                                "status": str(Status.COMMITTED),
                                "attempts": 1,
                                "first_seen": now,
                                "run_id": c.run_id,
                                **placed,
                            }
                        )
                        self._log(
                            p.key,
                            p.revision,
                            Status.COMMITTED,
                            c.snapshot,
                            c.message,
                            c.run_id,
                            Event.COMMITTED,
                        )
                        continue
                    old = row.placed_revision
                    if old and p.revision and old != p.revision:
                        self._log(
                            p.key,
                            old,
                            row.status,
                            c.snapshot,
                            f"replaced by {p.revision}",
                            c.run_id,
                            Event.SUPERSEDED,
                        )
                    self.db.table("granules").update(p.key, placed)
                    if not p.revision or row.revision == p.revision:
                        self._move(
                            p.key,
                            Event.COMMITTED,
                            c.run_id,
                            note=c.message,
                            snapshot=c.snapshot,
                            columns={"reason": None, "fingerprint": None},
                        )
        return changed

    def placements(self) -> list[Placement]:
        """Granules in the store, in concat order, for placing late/revised ones.

        A revised granule waiting for its replacement keeps its old place (and row).
        """
        sql = (
            "select key, coalesce(placed_revision, revision), url, offset, length,"
            " first_value, last_value from granules where offset is not null order by offset"
        )
        return [
            Placement(key, rev, url, offset, length, first, last)
            for key, rev, url, offset, length, first, last in self.conn.execute(sql).fetchall()
        ]

    def mark_missing(self, keys: Iterable[str], run_id: str | None = None) -> None:
        """Record when granules in the store were first found gone from the source, and
        when they came back."""
        wanted = set(keys)
        with self._tx():
            for (key,) in self.db.execute(
                "select key from granules where missing_since is not null"
            ).fetchall():
                if key not in wanted:  # it came back
                    self.db.execute("update granules set missing_since = null where key = ?", [key])
                    row = self.row(key)
                    if row is not None:
                        self._log(
                            key,
                            row.revision,
                            row.status,
                            None,
                            "listed again",
                            run_id,
                            Event.RETURNED,
                        )
            for key in sorted(wanted):
                row = self.row(key)
                if row is None or row.missing_since is not None:
                    continue
                self.db.execute(
                    "update granules set missing_since = ? where key = ?", [_now(), key]
                )
                self._log(
                    key,
                    row.revision,
                    row.status,
                    None,
                    "no longer in the source",
                    run_id,
                    Event.VANISHED,
                )

    def missing(self) -> list[tuple[str, str]]:
        """Committed granules whose source disappeared, with since when."""
        return [
            (k, s)
            for k, s in self.conn.execute(
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
        event: Event | None = None,
    ) -> None:
        self.db.table("history").insert(
            {
                "key": key,
                "event": str(event or status),
                "revision": revision,
                "status": str(status),
                "snapshot": snapshot,
                "reason": reason,
                "run_id": run_id,
                "at": _now(),
            }
        )


_IN_LIMIT = 500  # keys per "key in (...)" query, well under SQLite's variable limit


def _row(r: dict[str, Any]) -> LedgerRow:
    return LedgerRow(
        key=r["key"],
        url=r["url"],
        revision=r["revision"],
        status=Status(r["status"]),
        snapshot=r["snapshot"],
        start=r["start"],
        end=r["end"],
        reason=r["reason"],
        attempts=r["attempts"] or 0,
        offset=r.get("offset"),
        length=r.get("length"),
        placed_revision=r.get("placed_revision"),
        missing_since=r.get("missing_since"),
        fingerprint=r.get("fingerprint"),
    )


def _no_space(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has no block left for us."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def read_meta(path: str | Path, key: str) -> str | None:
    """One ``meta`` value read with the standard library only (no sqlite-utils: the
    cheap path of ``log`` and ``status``); None if the ledger or the row is absent."""
    path = Path(path)
    if not path.exists():
        return None
    conn = _connect_readonly(path)
    try:
        row = conn.execute("select value from meta where key = ?", [key]).fetchone()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


def write_meta(path: str | Path, key: str, value: str) -> None:
    """Store one ``meta`` value in an existing ledger (hold the store lock), without
    migrating it: a ledger without a ``meta`` table raises ``sqlite3.OperationalError``."""
    conn = sqlite3.connect(str(path), timeout=5, isolation_level=None)
    try:
        conn.execute("insert or replace into meta (key, value) values (?, ?)", [key, value])
    finally:
        conn.close()


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; works in a read-only folder (WAL included), and reads a
    missing file as an empty ledger."""
    if not path.exists():
        return sqlite3.connect(":memory:", isolation_level=None)
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
        conn.execute("select count(*) from sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        # A WAL database in a folder we cannot write (no -shm file): read it as
        # immutable; nobody can be writing it there.
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``/``ROLLBACK`` around a block, re-entrant."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        failed: Callable[[sqlite3.OperationalError], StoreError | None],
    ) -> None:
        self.conn = conn
        self.failed = failed
        self.outer = False

    def __enter__(self) -> None:
        if not self.conn.in_transaction:
            self._execute("BEGIN IMMEDIATE")
            self.outer = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self._execute("COMMIT")
        else:
            with contextlib.suppress(sqlite3.OperationalError):
                self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and (error := self.failed(exc)):
            raise error from exc

    def _execute(self, sql: str) -> None:
        try:
            self.conn.execute(sql)
        except sqlite3.OperationalError as e:
            if (error := self.failed(e)) is None:
                raise
            if sql == "COMMIT":
                with contextlib.suppress(sqlite3.OperationalError):
                    self.conn.execute("ROLLBACK")
            raise error from e
