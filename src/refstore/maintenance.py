"""``refstore gc``: expire old snapshots under a retention policy, collect the garbage
and prune export versions no reader can still be using.

The policy keeps every tag, the newest ``keep_last`` snapshots and every snapshot newer
than ``keep_days``: Icechunk's ``expire_snapshots`` takes one time bound, so the bound
is the older of the two. The order makes a crash anywhere harmless:

1. every snapshot of ``main`` older than the bound is written to the ledger's
   ``expired`` table with its commit metadata (state ``pending``) — a tag tip stays
   openable but leaves ``main``'s history, and the layout of every later snapshot is
   built from these commits (:func:`full_history`);
2. ``expire_snapshots``, then the ledger marks each one ``expired`` (or ``kept``);
3. ``garbage_collect`` deletes objects only expired snapshots reached;
4. export versions older than the published one and the one before it (kept for
   ``export_grace_hours`` for readers in flight) are deleted.

A rerun settles ``pending`` rows by asking the repository which still exist, and redoes
the idempotent steps. ``REFSTORE_FAULT=gc-after-record|gc-after-expire|gc-after-collect``
kills the process between the steps (tests only).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from refstore.config import Config
from refstore.errors import NotFoundError, StoreError
from refstore.faults import checkpoint
from refstore.models import CommitInfo

__all__ = [
    "GcReport",
    "Policy",
    "SnapshotEntry",
    "explain_missing",
    "full_history",
    "gc",
    "plan_expiry",
    "stale_export_versions",
]

METADATA_KEY = "refstore"
LAST_BOUND = "gc_last_bound"  # ledger meta: the time bound of the last expiry


@dataclass(frozen=True, slots=True)
class Policy:
    """What ``gc`` keeps besides every tag."""

    keep_last: int = 30
    keep_days: float = 30.0
    export_grace_hours: float = 1.0

    @classmethod
    def of(cls, config: Config, **overrides: Any) -> Policy:
        """The config's ``[maintenance]`` policy with flags (non-None) applied."""
        values: dict[str, Any] = {
            "keep_last": config.keep_last,
            "keep_days": config.keep_days,
            "export_grace_hours": config.export_grace_hours,
        }
        values |= {k: v for k, v in overrides.items() if v is not None}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One snapshot of ``main``'s history, newest first in a list."""

    snapshot: str
    written_at: datetime
    message: str
    metadata: dict[str, Any]
    is_root: bool = False


def plan_expiry(
    history: Sequence[SnapshotEntry], tagged: set[str], policy: Policy, now: datetime
) -> tuple[datetime | None, list[SnapshotEntry], list[SnapshotEntry]]:
    """Pure: (time bound, snapshots that expire, tag tips that leave ``main``'s history).

    ``history`` is ``main``'s ancestry, newest first, root last. The bound is exclusive
    (a snapshot written exactly then is kept) and None when nothing can expire.
    """
    candidates = [e for e in history if not e.is_root]
    if len(candidates) <= policy.keep_last:
        return None, [], []
    bound = min(now - timedelta(days=policy.keep_days), candidates[policy.keep_last - 1].written_at)
    older = [e for e in candidates[1:] if e.written_at < bound]
    return (
        bound,
        [e for e in older if e.snapshot not in tagged],
        [e for e in older if e.snapshot in tagged],
    )


@dataclass
class GcReport:
    """What ``gc`` did (or, with ``dry_run``, would do)."""

    dry_run: bool
    bound: str | None = None
    snapshots_before: int = 0
    expired: list[dict[str, str]] = field(default_factory=list)
    old_tags: list[str] = field(default_factory=list)
    manifests: int = 0  # deleted, or estimated for a dry run
    bytes: int = 0
    collected: dict[str, int] = field(default_factory=dict)
    objects_before: int | None = None
    bytes_before: int | None = None
    objects_after: int | None = None
    bytes_after: int | None = None
    exports_pruned: list[str] = field(default_factory=list)
    oldest_available: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        from dataclasses import asdict

        return asdict(self)


def _history(store: Any) -> list[SnapshotEntry]:
    return [
        SnapshotEntry(
            snapshot=str(info.id),
            written_at=info.written_at,
            message=info.message,
            metadata=dict((info.metadata or {}).get(METADATA_KEY) or {}),
            is_root=info.parent_id is None,
        )
        for info in store.repo.ancestry(branch="main")
    ]


def _alive(store: Any, snapshot: str) -> bool:
    import icechunk

    try:
        store.repo.lookup_snapshot(snapshot)
    except icechunk.IcechunkError:
        return False
    return True


def _disk_usage(url: str) -> tuple[int | None, int | None]:
    if "://" in url and not url.startswith("file://"):
        return None, None
    objects = size = 0
    for root, _, files in os.walk(url.removeprefix("file://")):
        for name in files:
            objects += 1
            size += os.path.getsize(os.path.join(root, name))
    return objects, size


def _estimate(store: Any, expiring: list[SnapshotEntry], keeping: list[str]) -> tuple[int, int]:
    """Manifests (count, bytes) only expiring snapshots use: what gc would free."""
    kept = {m.id for s in keeping for m in store.repo.list_manifest_files(s)}
    gone: dict[str, int] = {}
    for e in expiring:
        for m in store.repo.list_manifest_files(e.snapshot):
            if m.id not in kept:
                gone[m.id] = int(m.size_bytes)
    return len(gone), sum(gone.values())


def gc(config: Config, policy: Policy, *, dry_run: bool = False, wait: float = 0) -> GcReport:
    """Apply ``policy`` to the store of ``config`` (see the module doc).

    Raises
    ------
    ConflictError
        Another refstore process holds the store (after ``wait`` seconds).
    NotFoundError
        No repository yet.
    StoreError
        Icechunk refused an operation; rerun after fixing the cause.
    """
    from refstore.api import open_store
    from refstore.ledger import Ledger
    from refstore.lock import store_lock
    from refstore.mirror import refresh as refresh_mirror

    started = time.perf_counter()
    report = GcReport(dry_run=dry_run)
    with store_lock(config.ledger, wait=wait):
        store = open_store(config)
        _ = store.repo  # NotFoundError when there is none
        ledger = Ledger(config.ledger)
        try:
            pending = [r["snapshot"] for r in ledger.expired("pending")]
            if pending and not dry_run:  # a previous gc stopped between record and settle
                alive = [s for s in pending if _alive(store, s)]
                ledger.settle_expired([s for s in pending if s not in alive], alive)
            history = _history(store)
            tags = store.tags_by_snapshot()
            report.snapshots_before = len(history)
            report.objects_before, report.bytes_before = _disk_usage(store.url)
            now = datetime.now(UTC)
            bound, expiring, detached = plan_expiry(history, set(tags), policy, now)
            report.bound = bound.isoformat() if bound else None
            report.expired = [
                {
                    "snapshot": e.snapshot,
                    "written_at": e.written_at.isoformat(),
                    "message": e.message,
                }
                for e in expiring
            ]
            report.old_tags = [t for e in detached for t in tags[e.snapshot]]
            if dry_run:
                keeping = [e.snapshot for e in history if e not in expiring] + list(tags)
                report.manifests, report.bytes = _estimate(store, expiring, keeping)
            else:
                summary = _expire_and_collect(store, ledger, bound, expiring, detached)
                report.collected = {
                    name: int(getattr(summary, name))
                    for name in (
                        "snapshots_deleted",
                        "manifests_deleted",
                        "chunks_deleted",
                        "transaction_logs_deleted",
                        "attributes_deleted",
                        "bytes_deleted",
                    )
                }
                report.manifests = report.collected["manifests_deleted"]
                report.bytes = report.collected["bytes_deleted"]
            report.exports_pruned = [
                str(p) for p in _prune_exports(config.export, policy, now, dry_run=dry_run)
            ]
            report.objects_after, report.bytes_after = _disk_usage(store.url)
            if not dry_run:
                history = _history(store)
                refresh_mirror(config, ledger)  # expiry rewrote the repository's history
            remaining = [e for e in history if e not in expiring and not e.is_root]
            report.oldest_available = remaining[-1].snapshot if remaining else None
        finally:
            ledger.close()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _expire_and_collect(
    store: Any,
    ledger: Any,
    bound: datetime | None,
    expiring: list[SnapshotEntry],
    detached: list[SnapshotEntry],
) -> Any:
    """Record, expire, settle, collect (module doc, steps 1-3); returns Icechunk's summary.

    With nothing to expire, objects older than the last bound used are still collected:
    a gc killed after expiring left them unreachable.
    """
    import icechunk

    if bound is not None:
        run = datetime.now(UTC).strftime("gc-%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
        entries = expiring + detached
        # Their per-granule lists too (refstore.details): the ledger's copy is whole.
        whole = store.whole_metadata(
            str(store.repo.lookup_branch("main")),
            [(e.snapshot, e.metadata) for e in entries],
            strict=False,
        )
        ledger.record_expiring(
            (
                {
                    "snapshot": e.snapshot,
                    "written_at": e.written_at.isoformat(),
                    "message": e.message,
                    "metadata": json.dumps(meta),
                }
                for e, meta in zip(entries, whole, strict=True)
            ),
            run,
        )
        ledger.set_meta(LAST_BOUND, bound.isoformat())
        checkpoint("gc-after-record")
    last = ledger.get_meta(LAST_BOUND)
    collect_before = bound or (datetime.fromisoformat(last) if last else None)
    try:
        if bound is not None:
            gone = {str(s) for s in store.repo.expire_snapshots(bound)}
            ledger.settle_expired(
                [e.snapshot for e in expiring if e.snapshot in gone],
                [e.snapshot for e in expiring + detached if e.snapshot not in gone],
            )
            checkpoint("gc-after-expire")
        if collect_before is None:
            return _NoSummary()
        summary = store.repo.garbage_collect(collect_before)
    except icechunk.IcechunkError as e:
        raise StoreError(
            f"Garbage collection of {store.url} failed: {str(e).splitlines()[0]}",
            "Run `refstore gc` again; every step is safe to repeat.",
        ) from e
    checkpoint("gc-after-collect")
    return summary


class _NoSummary:
    """Icechunk's GCSummary shape when nothing was collected."""

    snapshots_deleted = manifests_deleted = chunks_deleted = 0
    transaction_logs_deleted = attributes_deleted = bytes_deleted = 0


def stale_export_versions(path: str | Path, grace_hours: float, now: datetime) -> list[Path]:
    """Version folders of a local Parquet export that no reader can be using.

    Kept: the published version, and the one before it while the published one is
    younger than ``grace_hours`` (a reader may have opened it just before the swap).
    Stray ``.link-*`` symlinks of an interrupted publish go too.
    """
    path = Path(path)
    if "://" in str(path) or not path.is_symlink():
        return []
    published = path.parent / os.readlink(path)
    versions = sorted(path.parent.glob(f".{path.name}.v*"))
    older = [v for v in versions if v.name < published.name]
    keep = {published}
    age = now.timestamp() - _version_time(published)
    if older and age < grace_hours * 3600:
        keep.add(older[-1])
    links = list(path.parent.glob(f".{path.name}.link-*"))
    return [v for v in versions if v not in keep and v.name < published.name] + links


def _version_time(folder: Path) -> float:
    try:
        return int(folder.name.rsplit(".v", 1)[1].split("-")[0]) / 1e9
    except (IndexError, ValueError):
        return folder.stat().st_mtime


def _prune_exports(export: str, policy: Policy, now: datetime, *, dry_run: bool) -> list[Path]:
    stale = stale_export_versions(export, policy.export_grace_hours, now)
    if not dry_run:
        for p in stale:
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)
    return stale


def full_history(store: Any, ledger: Any, snapshot: str) -> list[CommitInfo]:
    """refstore commits up to ``snapshot``, oldest first, including those gc expired
    (or cut from the history) whose metadata the ledger kept."""
    from refstore.batch import commit_info

    written = store.repo.lookup_snapshot(snapshot).written_at.isoformat()
    found = {c.snapshot: c for c in store.commits(at=snapshot)}
    for row in ledger.expired():
        if row["snapshot"] in found or row["written_at"] >= written:
            continue
        meta = json.loads(row["metadata"] or "{}")
        if meta:
            found[row["snapshot"]] = commit_info(
                row["snapshot"], row["message"], row["written_at"], meta
            )
    return sorted(found.values(), key=lambda c: c.written_at)


def explain_missing(store: Any, ledger: Any, ref: str) -> NotFoundError | None:
    """A NotFoundError naming the oldest snapshot still available when ``ref`` (a
    snapshot id or a date) was expired by gc; None when gc is not why it is missing."""
    from refstore.store import parse_when

    rows = {r["snapshot"]: r for r in ledger.expired("expired")}
    if not rows:
        return None
    history = _history(store)
    alive = [e for e in history if not e.is_root]
    oldest = alive[-1] if alive else None
    where = (
        f"the oldest still available is {oldest.snapshot} "
        f"(written {oldest.written_at:%Y-%m-%d %H:%M} UTC)"
        if oldest
        else "no snapshot is left"
    )
    hint = "Open a later snapshot, tag or date; `refstore log` lists what is kept."
    if ref in rows:
        return NotFoundError(
            f"Snapshot {ref} was expired by `refstore gc` at "
            f"{rows[ref]['expired_at'][:19]}; {where}.",
            hint,
        )
    when = parse_when(ref)
    first = min(r["written_at"] for r in rows.values())
    if when is not None and oldest and first <= when.isoformat() and when < oldest.written_at:
        return NotFoundError(
            f"The store as it was at {when.isoformat()} was expired by `refstore gc`; {where}.",
            hint,
        )
    return None


def check_not_expired(config: Config, store: Any, ref: str) -> None:
    """Raise the NotFoundError of :func:`explain_missing` if gc expired ``ref``.

    Raises
    ------
    NotFoundError
        ``ref`` names a snapshot or a moment gc expired.
    """
    if not Path(config.ledger).exists():
        return
    from refstore.ledger import Ledger

    with Ledger(config.ledger) as ledger:
        error = explain_missing(store, ledger, ref)
    if error is not None:
        raise error
