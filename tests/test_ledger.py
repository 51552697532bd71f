"""The SQLite ledger on a real file: migrations, status changes, healing from commits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from refstore.errors import StoreError
from refstore.ledger import Ledger
from refstore.models import CommitInfo, Failure, Granule, Status


def test_migrations_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger(path).close()
    with Ledger(path) as ledger:
        assert ledger.migrations == ["001_initial", "002_placement", "003_expired"]
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
    # a new revision resets the row and is logged
    ledger.record_seen([Granule("a", "file:///a", "r2")], run)
    assert ledger.rows()["a"].status is Status.NEW
    assert [h["status"] for h in ledger.history("a")] == ["committed", "new"]
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
