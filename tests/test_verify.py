"""`refstore verify` against real files: clean store, a changed source, a missing one."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import refstore
from refstore.status import find_gaps, gather_status
from refstore.verify import verify
from tests.conftest import run_cli


def test_verify_clean_store_then_detects_changes(
    make_config, arrive, ccmp_archive, tmp_path: Path
) -> None:
    config = make_config()
    files = ccmp_archive(3)
    copies = arrive(*files)
    refstore.sync(config)
    report = verify(config, sample=8, seed=1)
    assert report.ok and report.chunks_checked == 8 and report.granules == 3

    # a source rewritten in place with other bytes, and one deleted
    (other,) = ccmp_archive(1, datetime(2024, 1, 2), seed=5)
    copies[1].write_bytes(other.read_bytes())
    os.utime(copies[1], (1, 2_000_000_000))
    copies[2].unlink()
    report = verify(config, sample=30, seed=2)
    assert not report.ok
    assert any(files[1].name in c and "differs" in c for c in report.changed)
    assert report.missing == [f"{files[2].name}: no longer in the source"]

    proc = run_cli("verify", "--sample", "3", cwd=tmp_path, check=False)
    assert proc.returncode == 8 and "verify found" in proc.stderr


def test_verify_at_an_earlier_snapshot(make_config, arrive, ccmp_archive) -> None:
    config = make_config()
    files = ccmp_archive(2)
    arrive(files[0])
    first = refstore.sync(config).snapshots[0]
    arrive(files[1])
    refstore.sync(config)
    report = verify(config, sample=4, at=first, seed=3)
    assert report.ok and report.granules == 1


def test_status_reports_gaps_and_missing(make_config, arrive, ccmp_archive) -> None:
    config = make_config()
    files = ccmp_archive(4)
    copies = arrive(files[0], files[1], files[3])
    refstore.sync(config)
    copies[0].unlink()
    refstore.sync(config)
    info = gather_status(config)
    assert info["gaps"] == [{"after": "2024-01-02T18:00:00", "before": "2024-01-04T00:00:00"}]
    assert [m["key"] for m in info["missing"]] == [files[0].name]


def test_find_gaps_pure() -> None:
    assert find_gaps([0, 1, 2, 3, 7, 8]) == [("3", "7")]
    assert find_gaps([0, 1, 2]) == []


def test_verify_checks_decoded_values_of_repo_and_export(
    make_config, arrive, tmp_path: Path, monkeypatch
) -> None:
    """A fill mask wrong only in the export, and packing wrong only in the repository,
    are each reported (raw values stay equal in both cases)."""
    import zarr

    from refstore.api import open_store
    from refstore.sync import export_snapshot
    from tests.granule_factory import fill_differs

    config = make_config()
    arrive(fill_differs(tmp_path / "g.nc"))
    refstore.sync(config)
    assert verify(config, sample=6, seed=4).ok
    store = open_store(config)
    with monkeypatch.context() as m:  # plant: an export that masks the HDF5 storage fill
        m.setattr("refstore.export.fix_fill_values", lambda refs: refs)
        export_snapshot(config, store, store.source, store.head_snapshot())
    report = verify(config, sample=6, seed=4)
    assert report.mismatches and all("through the export" in m for m in report.mismatches)
    assert any("NaN mask differs" in m for m in report.mismatches)
    assert "v" in report.nan_fraction

    run_cli("export", cwd=tmp_path)  # a correct export again
    assert verify(config, sample=6, seed=4).ok

    # plant: packing attributes changed in the repository
    session = store.repo.writable_session("main")
    zarr.open_group(session.store, mode="r+")["v"].attrs["scale_factor"] = 0.02
    session.commit("plant")
    report = verify(config, sample=6, seed=4, at=store.head_snapshot())
    assert any("through the repository" in m and "raw" not in m for m in report.mismatches)
    proc = run_cli("verify", "--sample", "4", cwd=tmp_path, check=False)
    assert proc.returncode == 8
