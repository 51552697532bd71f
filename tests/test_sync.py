"""sync end to end on real granules: append, idempotence, time travel, export, recovery."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

import refstore
from refstore.admit import PER_GRANULE_ATTRS
from refstore.api import open_store
from refstore.ledger import Ledger
from refstore.models import Status
from tests.conftest import GAMSSA, run_cli
from tests.helpers import assert_same_values, direct_read


def test_gamssa_two_days_append_equal_to_direct_read(make_config, arrive) -> None:
    config = make_config()
    arrive(GAMSSA[0])
    first = refstore.sync(config)
    assert first.added == (GAMSSA[0].name,) and len(first.snapshots) == 1
    arrive(GAMSSA[1])
    second = refstore.sync(config)
    assert second.added == (GAMSSA[1].name,) and len(second.snapshots) == 1

    expected = direct_read(GAMSSA)
    assert_same_values(refstore.open_dataset(config).load(), expected)
    assert_same_values(refstore.open_dataset(config, source="export").load(), expected)


def test_second_sync_adds_no_snapshot(make_config, arrive) -> None:
    config = make_config()
    arrive(*GAMSSA)
    refstore.sync(config)
    store = open_store(config)
    head = store.head_snapshot()
    again = refstore.sync(config)
    assert again.up_to_date and again.snapshots == () and again.export is None
    assert open_store(config).head_snapshot() == head
    assert len(store.log()) == 2  # "Repository initialized" + one sync


def test_one_commit_per_sync_with_granule_metadata(make_config, arrive, ccmp_archive) -> None:
    config = make_config()
    files = ccmp_archive(5)
    arrive(*files)
    result = refstore.sync(config)
    commits = open_store(config).commits()
    assert len(commits) == 1 and result.snapshots == (commits[0].snapshot,)
    assert commits[0].granules == tuple(f.name for f in files)
    assert commits[0].start == "2024-01-01T00:00:00" and commits[0].end == "2024-01-05T18:00:00"


def test_time_travel_by_snapshot_tag_and_date(make_config, arrive, ccmp_archive) -> None:
    config = make_config()
    files = ccmp_archive(4)
    arrive(*files[:2])
    s1 = refstore.sync(config, tag="v1").snapshots[0]
    arrive(*files[2:])
    refstore.sync(config)

    head = refstore.open_dataset(config)
    assert head.sizes["time"] == 16
    for ref in (s1, "v1"):
        old = refstore.open_dataset(config, at=ref)
        assert old.sizes["time"] == 8
        np.testing.assert_array_equal(old.uwnd.values, head.uwnd.isel(time=slice(0, 8)).values)
    store = open_store(config)
    written = next(c.written_at for c, _ in store.log() if c.snapshot == s1)
    assert refstore.open_dataset(config, at=written).sizes["time"] == 8
    with pytest.raises(refstore.NotFoundError, match="did not exist yet"):
        refstore.open_dataset(config, at="1999-01-01")
    with pytest.raises(refstore.NotFoundError, match="No snapshot, tag or date"):
        refstore.open_dataset(config, at="no-such-tag")


def test_export_equals_head_after_each_sync(make_config, arrive, ccmp_archive) -> None:
    config = make_config()
    files = ccmp_archive(3)
    for f in files:
        arrive(f)
        refstore.sync(config)
        repo = refstore.open_dataset(config).load()
        export = refstore.open_dataset(config, source="export").load()
        assert_same_values(export, repo)
        assert repo.attrs == export.attrs
    # older export versions are cleaned up, one previous kept for readers in flight
    versions = list(Path(config.export).parent.glob(".refs.parquet.v*"))
    assert 1 <= len(versions) <= 2


def test_loadable_default_and_large_coordinate_chunk(make_config, arrive, ccmp_archive) -> None:
    config = make_config()
    arrive(*ccmp_archive(2))
    refstore.sync(config)
    store = open_store(config)
    import zarr

    group = zarr.open_group(store.session().store, mode="r", zarr_format=3)
    # 6-hourly steps: about a year of steps per chunk of the loaded time coordinate
    assert group["time"].chunks == (1461,)
    assert group["uwnd"].chunks == (1, 32, 64)
    splitting = store.repo.config.manifest.splitting
    assert splitting is not None
    # Manifests split every 1,000 chunks along time (not the coordinate's 1,461): an
    # append rewrites one split, so its cost stops growing past 1,000 granules.
    # The commits' detail array (refstore.details) is split too, every 1,000 commits.
    ((_, dims),) = splitting.split_sizes
    assert [size for _, size in dims] == [1000, 1000]


def test_root_attrs_keep_stable_drop_per_granule(make_config, arrive, ccmp_archive) -> None:
    config = make_config()
    files = ccmp_archive(3)
    arrive(files[0])
    refstore.sync(config)
    arrive(*files[1:])
    refstore.sync(config)
    attrs = refstore.open_dataset(config).attrs
    assert not (set(attrs) & (PER_GRANULE_ATTRS - {"time_coverage_start", "time_coverage_end"}))
    assert "id" not in attrs or attrs["id"] != files[-1].stem
    assert attrs["institution"] == "Remote Sensing Systems"
    assert attrs["time_coverage_start"] == "2024-01-01T00:00:00Z"
    assert attrs["time_coverage_end"] == "2024-01-03T18:00:00Z"


def test_bad_granule_is_quarantined_and_rest_lands(
    make_config, arrive, ccmp_archive, incoming
) -> None:
    config = make_config()
    files = ccmp_archive(3)
    arrive(*files)
    (incoming / "zz_truncated.nc").write_bytes(files[0].read_bytes()[:5000])
    (incoming / "notes.nc").write_text("not a granule")
    result = refstore.sync(config)
    assert set(result.added) == {f.name for f in files}
    reasons = {f.key: f.reason for f in result.quarantined}
    assert set(reasons) == {"zz_truncated.nc", "notes.nc"}
    assert "not an HDF5/NetCDF4 or NetCDF-3 file" in reasons["notes.nc"]
    assert reasons["zz_truncated.nc"].startswith("zz_truncated.nc: ")
    with Ledger(config.ledger) as ledger:
        rows = ledger.rows()
    assert rows["notes.nc"].status is Status.QUARANTINED
    assert rows[files[0].name].status is Status.COMMITTED
    # a quarantined granule is not retried until it changes or `retry` is asked for
    again = refstore.sync(config)
    assert again.up_to_date and again.quarantined == ()


def test_late_granule_lands_in_place_and_duplicate_is_quarantined(
    make_config, arrive, ccmp_archive, incoming
) -> None:
    config = make_config()
    files = ccmp_archive(4)
    arrive(files[0], files[2], files[3])
    first = refstore.sync(config).snapshots[0]
    before = refstore.open_dataset(config).load()
    arrive(files[1])  # a late day
    dup = incoming / "copy_of_last.nc"
    dup.write_bytes(files[3].read_bytes())  # the same time steps under another name
    result = refstore.sync(config)
    assert result.added == (files[1].name,)
    (failure,) = result.quarantined
    assert failure.key == "copy_of_last.nc" and "duplicate" in failure.reason
    assert files[3].name in failure.reason
    after = refstore.open_dataset(config).load()
    assert_same_values(after, direct_read(files))  # the gap is filled at its sorted place
    # the earlier snapshot still serves the store as it was, gap included
    assert_same_values(refstore.open_dataset(config, at=first).load(), before)
    commits = open_store(config).commits()
    assert commits[-1].granules == tuple(f.name for f in files[1:])  # rewritten tail
    # the ledger knows where every granule sits now
    with Ledger(config.ledger) as ledger:
        placed = {p.key: p.offset for p in ledger.placements()}
    assert placed == {f.name: 4 * i for i, f in enumerate(files)}


def test_grid_and_packing_drift_quarantined(make_config, arrive, ccmp_archive) -> None:
    from datetime import datetime

    config = make_config()
    arrive(*ccmp_archive(2))
    refstore.sync(config)
    shifted = ccmp_archive(1, datetime(2024, 1, 3), lat_offset=0.5)
    packed = ccmp_archive(1, datetime(2024, 1, 4), dtype="int16", scale_factor=0.01, add_offset=0.0)
    dropped = ccmp_archive(1, datetime(2024, 1, 5), variables=("uwnd", "vwnd", "ws"))
    for f, name in ((shifted[0], "a.nc"), (packed[0], "b.nc"), (dropped[0], "c.nc")):
        arrive(f)
        (f.parent.parent.parent / "incoming" / f.name).rename(
            f.parent.parent.parent / "incoming" / name
        )
    result = refstore.sync(config)
    reasons = {f.key: f.reason for f in result.quarantined}
    assert "latitude: values differ" in reasons["a.nc"]
    assert "dtype" in reasons["b.nc"] and "uwnd" in reasons["b.nc"]
    assert "missing variable(s) nobs" in reasons["c.nc"]
    assert refstore.open_dataset(config).sizes["time"] == 8


def test_crash_after_commit_heals_on_next_run(
    make_config, arrive, ccmp_archive, tmp_path: Path
) -> None:
    config = make_config(executor="serial")
    files = ccmp_archive(3)
    arrive(files[0])
    refstore.sync(config)
    arrive(*files[1:])
    # a real sync, SIGKILLed between its Icechunk commit and the ledger update
    proc = run_cli("sync", cwd=tmp_path, env={"REFSTORE_FAULT": "after-commit"}, check=False)
    assert proc.returncode == -signal.SIGKILL
    store = open_store(config)
    assert len(store.commits()) == 2  # the commit landed ...
    with Ledger(config.ledger) as ledger:
        assert ledger.rows()[files[1].name].status is not Status.COMMITTED  # ... unrecorded
    result = refstore.sync(config)
    assert result.up_to_date and result.snapshots == ()  # healed, nothing appended twice
    assert len(open_store(config).commits()) == 2
    with Ledger(config.ledger) as ledger:
        rows = ledger.rows()
    assert {r.status for r in rows.values()} == {Status.COMMITTED}
    assert {k: r.offset for k, r in rows.items()} == {f.name: 4 * i for i, f in enumerate(files)}
    assert_same_values(refstore.open_dataset(config).load(), direct_read(files))


def test_a_lost_ledger_is_rebuilt_from_the_history(make_config, arrive, ccmp_archive) -> None:
    config = make_config()
    files = ccmp_archive(2)
    arrive(*files)
    refstore.sync(config)
    for p in Path(config.ledger).parent.glob("ledger.db*"):
        p.unlink()
    result = refstore.sync(config)
    assert result.up_to_date
    with Ledger(config.ledger) as ledger:
        rows = ledger.rows()
    assert {r.status for r in rows.values()} == {Status.COMMITTED}
    assert refstore.open_dataset(config).sizes["time"] == 8


def test_revised_granule_is_replaced_in_place(make_config, arrive, ccmp_archive, incoming) -> None:
    from datetime import datetime

    config = make_config()
    files = ccmp_archive(3)
    arrive(*files)
    first = refstore.sync(config).snapshots[0]
    before = refstore.open_dataset(config).load()
    # the DAAC reprocesses day 2: same name, new values
    (revised,) = ccmp_archive(1, datetime(2024, 1, 2), seed=7)
    (incoming / files[1].name).write_bytes(revised.read_bytes())
    result = refstore.sync(config)
    assert result.added == (files[1].name,) and result.quarantined == ()
    after = refstore.open_dataset(config).load()
    assert_same_values(after, direct_read([files[0], revised, files[2]]))
    assert not np.array_equal(after.uwnd.values[4:8], before.uwnd.values[4:8])
    # history: both revisions in the ledger; the old snapshot keeps the old references
    with Ledger(config.ledger) as ledger:
        events = [(h["event"], h["revision"]) for h in ledger.history(files[1].name)]
    assert [e for e, _ in events] == [
        "seen",
        "virtualized",
        "committed",
        "revised",
        "virtualized",
        "superseded",
        "committed",
    ]
    assert events[2][1] == events[5][1] != events[6][1]
    old = refstore.open_dataset(config, at=first)
    assert old.sizes["time"] == 12


def test_late_granule_waits_when_the_tail_cannot_be_reread(
    make_config, arrive, ccmp_archive
) -> None:
    config = make_config()
    files = ccmp_archive(4)
    copies = arrive(files[0], files[2])
    refstore.sync(config)
    before = refstore.open_dataset(config).load()
    copies[1].unlink()  # the committed day after the gap vanished upstream
    arrive(files[1], files[3])  # the late day, and a normal next day
    result = refstore.sync(config)
    reasons = {f.key: f.reason for f in result.quarantined}
    assert "cannot be put in place" in reasons[files[1].name]
    assert files[2].name in reasons[files[1].name]
    assert result.added == (files[3].name,)  # the plain append still lands
    after = refstore.open_dataset(config)
    assert after.sizes["time"] == 12
    assert_same_values(after.isel(time=slice(0, 4)).load(), before.isel(time=slice(0, 4)))
    assert_same_values(after.isel(time=slice(8, 12)).load(), direct_read([files[3]]))
    # the vanished day's references stay; reading them fails loudly, not silently
    np.testing.assert_array_equal(after.time.values[4:8], before.time.values[4:8])
    # the day comes back: the waiting late day lands by itself (no `retry`)
    arrive(files[2])
    again = refstore.sync(config)
    assert again.added == (files[1].name,) and again.quarantined == ()
    assert_same_values(refstore.open_dataset(config).load(), direct_read(files))
