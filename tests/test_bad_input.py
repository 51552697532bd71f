"""Bad input ends in one clear line and a quarantine; the store stays equal to before."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

import refstore
from refstore.ledger import Ledger
from refstore.models import Status
from tests.helpers import assert_same_values


@pytest.fixture
def store_of_two(make_config, arrive, ccmp_archive):  # type: ignore[no-untyped-def]
    config = make_config()
    files = ccmp_archive(2, dtype="int16", scale_factor=0.01, add_offset=0.0)
    arrive(*files)
    refstore.sync(config)
    return config, refstore.open_dataset(config).load()


def _arrive_as(src: Path, incoming: Path, name: str) -> Path:
    dest = incoming / name
    shutil.copy2(src, dest)
    return dest


def _third_day(ccmp_archive, **kwargs):  # type: ignore[no-untyped-def]
    base = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 0.0}
    return ccmp_archive(1, datetime(2024, 1, 3), **{**base, **kwargs})[0]


CASES = {
    "wrong_grid": ({"lat_offset": 0.25}, "latitude: values differ"),
    "missing_variable": ({"variables": ("uwnd", "vwnd", "nobs")}, "missing variable(s) ws"),
    "dtype_change": ({"dtype": "float32", "scale_factor": None, "add_offset": None}, "dtype"),
    "layout_change": ({"compression": False}, "uwnd: chunk shape [1, 32, 64] in the store"),
    "scale_change": ({"scale_factor": 0.02}, "scale_factor 0.01 in the store, 0.02"),
    "offset_change": ({"add_offset": 1.0}, "add_offset 0.0 in the store, 1.0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_drift_is_quarantined_with_both_values(
    case,
    store_of_two,
    ccmp_archive,  # type: ignore[no-untyped-def]
    incoming,
) -> None:
    config, before = store_of_two
    kwargs, needle = CASES[case]
    _arrive_as(_third_day(ccmp_archive, **kwargs), incoming, f"{case}.nc")
    result = refstore.sync(config)
    (failure,) = result.quarantined
    assert failure.reason.startswith(f"{case}.nc: ") and needle in failure.reason, failure
    assert result.added == ()
    assert_same_values(refstore.open_dataset(config).load(), before)
    with Ledger(config.ledger) as ledger:
        row = ledger.rows()[f"{case}.nc"]
    assert row.status is Status.QUARANTINED and row.reason == failure.reason


def test_codec_change(store_of_two, ccmp_archive, incoming, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import xarray as xr

    config, before = store_of_two
    src = _third_day(ccmp_archive)
    with xr.open_dataset(src) as ds:
        ds = ds.load()
    for name in ("uwnd", "vwnd", "ws", "nobs"):
        ds[name].encoding["shuffle"] = False  # same deflate, no shuffle filter
    ds.to_netcdf(incoming / "no_shuffle.nc", engine="netcdf4")
    (failure,) = refstore.sync(config).quarantined
    assert failure.reason.startswith("no_shuffle.nc: ") and "codecs differ" in failure.reason
    assert "shuffle" in failure.reason
    assert_same_values(refstore.open_dataset(config).load(), before)


def test_undecodable_time(store_of_two, ccmp_archive, incoming) -> None:  # type: ignore[no-untyped-def]
    config, before = store_of_two
    path = _arrive_as(_third_day(ccmp_archive), incoming, "bad_time.nc")
    with h5py.File(path, "r+") as f:
        f["time"].attrs["units"] = np.bytes_(b"fortnights since the flood")
    (failure,) = refstore.sync(config).quarantined
    assert failure.reason.startswith("bad_time.nc: cannot decode variable 'time'")
    assert_same_values(refstore.open_dataset(config).load(), before)


def test_retry_after_fixing_upstream(store_of_two, ccmp_archive, incoming, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config, _ = store_of_two
    good = _third_day(ccmp_archive)
    bad = _arrive_as(good, incoming, good.name)
    bad.write_bytes(good.read_bytes()[:3000])  # truncated download
    (failure,) = refstore.sync(config).quarantined
    assert failure.key == good.name
    # the DAAC re-publishes the file: a new revision is retried automatically
    shutil.copy2(good, bad)
    assert refstore.sync(config).added == (good.name,)


def test_retry_command_requeues_quarantined(
    store_of_two,
    ccmp_archive,
    incoming,  # type: ignore[no-untyped-def]
    tmp_path,
) -> None:
    config, _ = store_of_two
    path = _arrive_as(_third_day(ccmp_archive, lat_offset=0.25), incoming, "x.nc")
    assert refstore.sync(config).quarantined
    proc = subprocess.run(
        [sys.executable, "-m", "refstore", "retry"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "queued 1 granule(s) for retry" in proc.stdout
    # it was really read again (and refused again: the file did not change)
    assert "quarantined x.nc: latitude" in proc.stderr
    with Ledger(config.ledger) as ledger:
        row = ledger.rows()[path.name]
        events = [h["event"] for h in ledger.history(path.name)]
    assert row.status is Status.QUARANTINED and row.attempts == 2
    assert events == [
        "seen",
        "virtualized",
        "quarantined",
        "requeued",
        "virtualized",
        "quarantined",
    ]
    assert refstore.open_dataset(config).sizes["time"] == 8


def test_two_concurrent_syncs_never_double_append(
    make_config,
    arrive,
    ccmp_archive,  # type: ignore[no-untyped-def]
    tmp_path,
) -> None:
    config = make_config()
    arrive(*ccmp_archive(3))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "refstore", "sync", "--wait", "120"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted("up to date" in o for o, _ in outs) == [False, True]
    ds = refstore.open_dataset(config)
    assert ds.sizes["time"] == 12 and len(np.unique(ds.time.values)) == 12
