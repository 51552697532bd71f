"""A steady-state sync of a local folder costs its changes, not the folder (issue 12):
the plan reads only the ledger rows of what the listing found changed plus the unsettled
ones, and the listing is remembered only once the ledger recorded what it saw. Counted
in rows read, not timed. Real files, real ledger, real repository."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import refstore
from refstore import ledger as ledger_module
from refstore.ledger import Ledger
from refstore.models import LedgerRow, Status
from refstore.synthetic import write_ccmp_like_series
from tests.conftest import MakeConfig

WEEK = 7 * 86400.0
START = datetime(2024, 1, 1)
SYNC = importlib.import_module("refstore.sync")  # the module, not the function


def _arrive(folder: Path, first: int, n: int, seed: int = 0) -> list[Path]:
    """``n`` one-step granules from step ``first`` on, aged a week (trusted by inode)."""
    files = write_ccmp_like_series(
        folder, START + timedelta(hours=6 * first), n, steps_per_file=1, nlat=4, nlon=8, seed=seed
    )
    for f in files:
        os.utime(f, (time.time() - WEEK, time.time() - WEEK))
    return files


def _rows_read(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the ledger rows turned into :class:`LedgerRow` from now on."""
    count = [0]
    real = ledger_module._row

    def counting(r: dict[str, Any]) -> LedgerRow:
        count[0] += 1
        return real(r)

    monkeypatch.setattr(ledger_module, "_row", counting)
    return lambda: count[0]


@pytest.mark.parametrize("held", [3, 12])
def test_plus_one_and_noop_read_rows_of_changes_only(
    make_config: MakeConfig, incoming: Path, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    config = make_config(executor="serial")
    _arrive(incoming, 0, held)
    assert len(refstore.sync(config).added) == held
    assert len(refstore.sync(config).added) == 0  # the listing is remembered from here on
    read = _rows_read(monkeypatch)
    noop = refstore.sync(config)
    assert noop.added == () and noop.discovered == held and read() == 0
    _arrive(incoming, held, 1)
    plus = refstore.sync(config)
    assert len(plus.added) == 1 and plus.discovered == held + 1
    # The +1 reads its own row as it moves new → virtualized → committed; none of the
    # `held` others. (Both sizes give the same count.)
    assert read() == 5


def test_a_crash_before_the_ledger_records_a_revision_does_not_hide_it(
    make_config: MakeConfig, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(executor="serial")
    files = _arrive(incoming, 0, 3)
    refstore.sync(config)
    refstore.sync(config)
    # g1 revised by rename (new inode), and the run dies right after its listing.
    tmp = incoming / ".partial"
    _arrive(tmp, 1, 1, seed=5)[0].replace(files[1])
    os.utime(files[1], (time.time() - WEEK, time.time() - WEEK))

    class Killed(Exception):
        pass

    def die(step: str) -> None:
        if step == "after-discovery":
            raise Killed(step)

    monkeypatch.setattr(SYNC, "checkpoint", die)
    with pytest.raises(Killed):
        refstore.sync(config)
    monkeypatch.undo()
    assert refstore.sync(config).added == (files[1].name,)
    with Ledger(config.ledger) as ledger:
        assert ledger.row(files[1].name).status is Status.COMMITTED  # type: ignore[union-attr]


def test_deleted_and_unsettled_granules_are_still_seen(
    make_config: MakeConfig, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(executor="serial")
    files = _arrive(incoming, 0, 4)
    refstore.sync(config)
    refstore.sync(config)
    files[2].unlink()
    assert refstore.sync(config).missing == (files[2].name,)
    assert refstore.sync(config).missing == (files[2].name,)  # still missing: still said
    # A run that dies after listing and recording a new file leaves it unsettled in the
    # ledger while the remembered listing has it: planned again though nothing changed.
    (late,) = _arrive(incoming, 4, 1)

    def die(step: str) -> None:
        if step == "after-virtualization":
            raise RuntimeError(step)

    monkeypatch.setattr(SYNC, "checkpoint", die)
    with pytest.raises(RuntimeError):
        refstore.sync(config)
    monkeypatch.undo()
    with Ledger(config.ledger) as ledger:
        assert ledger.row(late.name).status is Status.VIRTUALIZED  # type: ignore[union-attr]
    assert refstore.sync(config).added == (late.name,)


def test_the_unsettled_and_missing_rows_are_found_by_index(tmp_path: Path) -> None:
    """Every query a steady-state plan makes for the unsettled and missing rows uses an
    index: at 100,000 granules a scan of the table cost 0.04 s of a 0.27 s +1 sync."""
    ledger = Ledger(tmp_path / "ledger.db")
    statements: list[str] = []
    ledger.conn.set_trace_callback(statements.append)
    rows = ledger.unsettled("fingerprint", "waiting")
    ledger.mark_missing([])
    ledger.conn.set_trace_callback(None)
    assert rows == {}
    reads = [s for s in statements if s.lstrip().lower().startswith("select")]
    assert reads, statements
    for sql in reads:
        plan = ledger.conn.execute("explain query plan " + sql).fetchall()
        assert not any("SCAN granules" in str(step[-1]) for step in plan), (sql, plan)
