"""The SQLite ledger on a real file: migrations, status changes, healing from commits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from refstore.errors import StoreError
from refstore.ledger import Ledger
from refstore.models import CommitInfo, Failure, Granule, Placement, Status


def test_migrations_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger(path).close()
    with Ledger(path) as ledger:
        assert ledger.migrations == [
            "001_initial",
            "002_placement",
            "003_lifecycle",
            "004_expired",
            "005_missing_index",
        ]
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("select name from sqlite_master")}
    conn.close()
    assert {"granules", "history", "runs", "meta", "migrations", "expired"} <= names


def test_lifecycle_and_history(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    run = ledger.start_run()
    ledger.record_seen([Granule("a", "file:///a", "r1"), Granule("b", "file:///b", "r1")], run)
    ledger.mark_virtualized(["a"], {"a": ("2024-01-01", "2024-01-02")})
    ledger.quarantine([Failure("b", "b: broken")], run)
    ledger.apply_commits([CommitInfo("SNAP1", "m", "t", granules=("a",), revisions=("r1",))])
    rows = ledger.rows()
    assert rows["a"].status is Status.COMMITTED and rows["a"].snapshot == "SNAP1"
    assert rows["a"].start == "2024-01-01"
    assert rows["b"].status is Status.QUARANTINED and rows["b"].reason == "b: broken"
    assert ledger.counts() == {"committed": 1, "quarantined": 1}
    # a new revision of a granule not placed in the store goes back to new, logged
    ledger.record_seen([Granule("a", "file:///a", "r2")], run)
    assert ledger.rows()["a"].status is Status.NEW
    assert [h["event"] for h in ledger.history("a")] == [
        "seen",
        "virtualized",
        "committed",
        "revised",
    ]
    # a commit of the old revision does not mark the newer one committed
    assert ledger.apply_commits([CommitInfo("SNAP1", "m", "t", ("a",), ("r1",))]) == 0
    assert ledger.requeue_quarantined() == ["b"]
    ledger.finish_run(run, status="ok", added=1)
    assert ledger.runs()[0]["status"] == "ok"
    ledger.close()


def test_commits_rebuild_a_lost_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    n = ledger.apply_commits([CommitInfo("S", "m", "t", ("x", "y"), ("1", "2"))])
    assert n == 2 and {r.status for r in ledger.rows().values()} == {Status.COMMITTED}
    assert ledger.apply_commits([CommitInfo("S", "m", "t", ("x", "y"), ("1", "2"))]) == 0
    ledger.close()


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="Cannot open the ledger") as info:
        Ledger(path)
    assert "rebuilt from the repository history" in info.value.hint


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    run = ledger.start_run()
    with pytest.raises(AttributeError):
        ledger.record_seen([Granule("a", "u", "r"), object()], run)  # type: ignore[list-item]
    assert ledger.rows() == {}
    ledger.close()


def _placed(key: str, rev: str, offset: int) -> Placement:
    return Placement(key, rev, f"file:///{key}", offset, 4, '{"number": 1}', '{"number": 2}')


def test_a_revision_of_a_granule_in_the_store_never_leaves_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    run = ledger.start_run()
    ledger.record_seen([Granule("a", "file:///a", "r1")], run)
    ledger.apply_commits(
        [CommitInfo("S1", "m", "t", ("a",), ("r1",), placements=(_placed("a", "r1", 0),))]
    )
    # revised upstream: the store still serves r1 (placement unchanged), r2 waits
    ledger.record_seen([Granule("a", "file:///a", "r2")], run)
    row = ledger.rows()["a"]
    assert (row.status, row.in_store, row.placed_revision) == (Status.REVISED, True, "r1")
    ledger.quarantine([Failure("a", "a: truncated")], run, fingerprint="f1")
    row = ledger.rows()["a"]
    assert (row.status, row.in_store, row.fingerprint) == (Status.QUARANTINED, True, "f1")
    # retry keeps it a replacement; a commit of r2 supersedes r1
    assert ledger.requeue_quarantined() == ["a"]
    assert ledger.rows()["a"].status is Status.REVISED
    ledger.record_seen([Granule("a", "file:///a", "r3")], run)
    ledger.apply_commits(
        [CommitInfo("S2", "m", "t", ("a",), ("r3",), placements=(_placed("a", "r3", 0),))]
    )
    row = ledger.rows()["a"]
    assert (row.status, row.placed_revision, row.snapshot) == (Status.COMMITTED, "r3", "S2")
    events = [(h["event"], h["revision"]) for h in ledger.history("a")]
    assert events == [
        ("seen", "r1"),
        ("committed", "r1"),
        ("revised", "r2"),
        ("quarantined", "r2"),
        ("requeued", "r2"),
        ("revised", "r3"),
        ("superseded", "r1"),
        ("committed", "r3"),
    ]
    ledger.close()


def test_missing_and_returned_are_recorded(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.apply_commits(
        [CommitInfo("S1", "m", "t", ("a",), ("r1",), placements=(_placed("a", "r1", 0),))]
    )
    ledger.mark_missing(["a"])
    since = ledger.rows()["a"].missing_since
    ledger.mark_missing(["a"])
    assert ledger.rows()["a"].missing_since == since and ledger.missing() == [("a", since)]
    ledger.mark_missing([])
    assert ledger.missing() == []
    assert [h["event"] for h in ledger.history("a")] == ["committed", "missing", "returned"]
    ledger.close()


def test_readonly_ledger_reads_a_read_only_folder(tmp_path: Path) -> None:
    path = tmp_path / "state" / "l.db"
    with Ledger(path) as ledger:
        ledger.apply_commits([CommitInfo("S", "m", "t", ("x",), ("1",))])
    (tmp_path / "state").chmod(0o555)
    path.chmod(0o444)
    try:
        with Ledger(path, readonly=True) as ledger:
            assert list(ledger.rows()) == ["x"]
        with Ledger(tmp_path / "state" / "none.db", readonly=True) as ledger:
            assert ledger.rows() == {}
    finally:
        (tmp_path / "state").chmod(0o755)
