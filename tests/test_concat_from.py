"""Granules without the concat dim (issue 10): the value from a scalar coordinate, a
global attribute or the file name (``[dataset] concat_from``).

Real netCDF4 granules written by h5netcdf (tests/granule_factory.one_step_granule), the
real TRMM 3B42 daily file, real Icechunk repositories, ledgers and kerchunk exports. The
fidelity rule here: the store reads back as ``xr.open_dataset(file)`` given the
length-1 concat dim, granule by granule, concatenated.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import refstore
from refstore.concat_from import (
    ConcatFrom,
    encode_derived,
    parse_concat_from,
    value_from_attr,
    value_from_name,
)
from refstore.errors import ConfigError
from refstore.verify import verify
from tests.conftest import GRANULES
from tests.granule_factory import one_step_granule

TRMM = GRANULES / "misc" / "3B42_Daily.19980101.7.nc4"


# -- pure: the setting and the values --------------------------------------------------
@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("auto", ConcatFrom("auto")),
        ("scalar", ConcatFrom("scalar")),
        ("scalar:obs_time", ConcatFrom("scalar", "obs_time")),
        ("attr:time_coverage_start", ConcatFrom("attr", "time_coverage_start")),
        ("filename:%Ym%m%d", ConcatFrom("filename", "%Ym%m%d")),
    ],
)
def test_parse_concat_from(text: str, parsed: ConcatFrom) -> None:
    assert parse_concat_from(text) == parsed


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("time", "not understood"),
        ("attr:", "needs a name"),
        ("filename:daily", "no date code"),
        ("filename:%Y%q", "%q is not supported"),
    ],
)
def test_bad_concat_from_is_a_config_error(text: str, phrase: str, make_config: Any) -> None:
    with pytest.raises(ConfigError, match=phrase) as err:
        make_config(concat_from=text)
    assert "filename:%Y%m%d" in err.value.hint


def test_values_from_names_and_attributes() -> None:
    day = np.datetime64("2024-03-05T00:00:00", "ns")
    assert value_from_name("OMI-Aura_L3-OMTO3e_2024m0305_v003.he5", "%Ym%m%d") == (day, None)
    smap = "SMAP_L4_SM_gph_20240305T013000_Vv7032_001.h5"
    assert value_from_name(smap, "%Y%m%dT%H%M%S")[0] == day + np.timedelta64(5400, "s")
    assert value_from_name(smap, "%Y%m%d") == (day, None)  # the first match
    value, problem = value_from_name("ssh_latest.nc", "%Y%m%d")
    assert value is None and problem is not None and "does not match" in problem
    value, problem = value_from_name("ssh_20241399.nc", "%Y%m%d")
    assert value is None and problem is not None and "not a date" in problem

    assert value_from_attr({"t": "2024-03-05T00:00:00Z"}, "t") == (day, None)
    assert value_from_attr({"t": b"2024-03-05T02:00:00+02:00"}, "t") == (day, None)
    assert value_from_attr({"t": "2024-03-05T00:00:00.000Z"}, "t") == (day, None)
    assert value_from_attr({}, "t")[1] == "has no global attribute 't'"
    problem = value_from_attr({"t": "yesterday"}, "t")[1]
    assert problem is not None and "not an ISO 8601" in problem

    encoded, attrs, problem = encode_derived(day)
    assert encoded.tolist() == [1709596800] and encoded.dtype == np.int64 and problem is None
    assert attrs["units"] == "seconds since 1970-01-01 00:00:00"
    assert encode_derived(day + np.timedelta64(1, "ms"))[2] is not None  # never rounded


# -- real stores -------------------------------------------------------------------------
def _value(path: Path, how: str) -> np.datetime64:
    if how == "attr":
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            value, _ = value_from_attr(ds.attrs, "time_coverage_start")
    else:
        value, _ = value_from_name(path.name, "%Y%m%d")
    assert value is not None
    return value


def _expected(paths: list[Path], how: str, **kwargs: Any) -> xr.Dataset:
    """Each file as xarray opens it, given the length-1 time dim, concatenated."""
    parts = []
    for p in paths:
        with xr.open_dataset(p, engine="h5netcdf", **kwargs) as ds:
            ds = ds.load()
        if how == "scalar":
            parts.append(ds.expand_dims("time"))
        else:
            parts.append(ds.expand_dims(time=[_value(p, how)]))
    return xr.concat(parts, dim="time", data_vars="minimal", coords="minimal", compat="override")


def _assert_served(config: Any, paths: list[Path], how: str, at: str | None = None) -> None:
    """Repository and export equal to the files: decoded, and raw (but for a derived time)."""
    sources = ["repo"] if at else ["repo", "export"]
    for source in sources:
        for kwargs in ({}, {"mask_and_scale": False, "decode_times": False}):
            served = refstore.open_dataset(config, at=at, source=source, **kwargs).load()
            expected = _expected(paths, how, **kwargs)
            assert served.sizes == expected.sizes, source
            for name in expected.variables:
                if name == "time" and kwargs and how != "scalar":
                    continue  # int seconds in the store, datetimes in the expectation
                a, e = served[name], expected[name]
                assert a.dims == e.dims and a.dtype == e.dtype, (source, name, a.dtype, e.dtype)
                np.testing.assert_array_equal(a.values, e.values, err_msg=f"{source} {name}")


def _series(folder: Path, days: list[int], how: str) -> list[Path]:
    time = {"scalar": "scalar", "attr": "attr", "filename": "name"}[how]
    return [one_step_granule(folder / f"ssh_{20240101 + d}.nc", d, time=time) for d in days]


CONCAT_FROM = {"scalar": "auto", "attr": "attr:time_coverage_start", "filename": "filename:%Y%m%d"}


@pytest.mark.parametrize("how", ["scalar", "attr", "filename"])
def test_one_step_granules_land_sorted_and_a_late_one_goes_in_place(  # type: ignore[no-untyped-def]
    how: str, make_config, tmp_path: Path
) -> None:
    config = make_config(concat_from=CONCAT_FROM[how])
    incoming = Path(config.source_url)
    first = _series(incoming, [2, 0, 3], how)
    result = refstore.sync(config, tag="v1")
    assert sorted(result.added) == sorted(p.name for p in first), [
        f.reason for f in result.quarantined
    ]
    late = _series(incoming, [1], how)
    result = refstore.sync(config)
    assert result.added == (late[0].name,), [f.reason for f in result.quarantined]
    files = sorted(first + late)
    _assert_served(config, files, how)
    times = refstore.open_dataset(config).time.values
    assert times.astype("datetime64[D]").tolist() == [
        np.datetime64(f"2024-01-0{d}", "D").item() for d in (1, 2, 3, 4)
    ]
    _assert_served(config, sorted(first), how, at="v1")  # time travel
    report = verify(config, sample=8, seed=3)
    assert report.ok and report.chunks_checked == 8, report.to_dict()


def test_bad_attribute_and_unparsable_name_are_quarantined_with_the_fix(  # type: ignore[no-untyped-def]
    make_config,
) -> None:
    config = make_config(concat_from="attr:time_coverage_start")
    incoming = Path(config.source_url)
    good = _series(incoming, [0, 1], "attr")
    one_step_granule(incoming / "ssh_bad.nc", 5, time="attr", stamp="2024-13-45 noon")
    one_step_granule(incoming / "ssh_none.nc", 6, time="name")
    result = refstore.sync(config)
    assert sorted(result.added) == [p.name for p in good]
    reasons = {f.key: f.reason for f in result.quarantined}
    assert set(reasons) == {"ssh_bad.nc", "ssh_none.nc"}
    assert reasons["ssh_bad.nc"].startswith("ssh_bad.nc: no time value")
    assert "'2024-13-45 noon' is not an ISO 8601" in reasons["ssh_bad.nc"]
    assert "has no global attribute 'time_coverage_start'" in reasons["ssh_none.nc"]
    assert all("fix the attribute upstream" in r for r in reasons.values())

    by_name = make_config(concat_from="filename:%Y%m%d")
    shutil.rmtree(Path(by_name.repo).parent)
    for p in incoming.iterdir():
        p.unlink()
    _series(incoming, [0, 1], "filename")
    one_step_granule(incoming / "ssh_latest.nc", 7, time="name")
    result = refstore.sync(by_name)
    (failure,) = result.quarantined
    assert failure.key == "ssh_latest.nc"
    assert "file name does not match the pattern '%Y%m%d'" in failure.reason
    assert "rename the file to match [dataset] concat_from" in failure.reason


def test_a_renamed_copy_is_not_appended_twice(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(concat_from="attr:time_coverage_start")
    incoming = Path(config.source_url)
    files = _series(incoming, [0, 1], "attr")
    refstore.sync(config)
    shutil.copy2(files[1], incoming / "ssh_20240102_copy.nc")
    result = refstore.sync(config)
    assert result.added == ()
    (failure,) = result.quarantined
    assert "duplicate" in failure.reason and files[1].name in failure.reason
    assert refstore.open_dataset(config).sizes["time"] == 2


def test_a_scalar_of_another_name_becomes_the_coordinate(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(concat_from="scalar:obs_time")
    incoming = Path(config.source_url)
    files = [one_step_granule(incoming / f"ssh_{d}.nc", d, scalar_name="obs_time") for d in (1, 0)]
    result = refstore.sync(config)
    assert sorted(result.added) == sorted(p.name for p in files), [
        f.reason for f in result.quarantined
    ]
    served = refstore.open_dataset(config).load()
    assert "obs_time" not in served.variables
    for i, p in enumerate(reversed(files)):
        with xr.open_dataset(p, engine="h5netcdf") as ds:
            assert served.time.values[i] == ds.obs_time.values
            np.testing.assert_array_equal(served.sla.values[i], ds.sla.values)


def test_a_shifted_grid_is_quarantined_not_written_over_the_store(  # type: ignore[no-untyped-def]
    make_config,
) -> None:
    """lat/lon are coordinates: loaded once and compared, never expanded along time."""
    config = make_config(concat_from="scalar")
    incoming = Path(config.source_url)
    _series(incoming, [0, 1], "scalar")
    one_step_granule(incoming / "ssh_20240103.nc", 2, lat0=-0.5)
    result = refstore.sync(config)
    (failure,) = result.quarantined
    assert failure.key == "ssh_20240103.nc" and "lat: values differ" in failure.reason
    served = refstore.open_dataset(config)
    assert served.lat.dims == ("lat",) and served.lat.values.tolist() == [-1.0, 0.0, 1.0]


def test_a_revised_granule_is_replaced_in_place(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(concat_from="filename:%Y%m%d")
    incoming = Path(config.source_url)
    files = _series(incoming, [0, 1, 2], "filename")
    refstore.sync(config, tag="before")
    with xr.open_dataset(files[1], engine="h5netcdf") as ds:
        before = ds.sla.values
    one_step_granule(files[1], 1, time="name", seed=99)  # new values, same day
    when = time.time() - 100  # in the past: Icechunk takes a later mtime as "changed"
    os.utime(files[1], (when, when))
    result = refstore.sync(config)
    assert result.added == (files[1].name,), [f.reason for f in result.quarantined]
    _assert_served(config, files, "filename")  # replaced in place: still 3 steps, in order
    now = refstore.open_dataset(config).sla.values[1]
    assert not np.array_equal(before, now, equal_nan=True)
    assert refstore.open_dataset(config, at="before").sizes["time"] == 3


def test_a_file_with_the_dim_is_refused_under_a_derived_setting(  # type: ignore[no-untyped-def]
    make_config, ccmp_archive, arrive
) -> None:
    config = make_config(concat_from="attr:time_coverage_start")
    arrive(*ccmp_archive(2))
    with pytest.raises(ConfigError, match="has a dimension 'time', but concat_from") as err:
        refstore.sync(config)  # every granule, one reason: a setting (exit 2)
    assert "concat_from" in err.value.hint


def test_no_dim_and_no_setting_names_concat_from_and_setting_it_retries(  # type: ignore[no-untyped-def]
    make_config,
) -> None:
    config = make_config()
    one_step_granule(Path(config.source_url) / "ssh_20240101.nc", 0, time="attr")
    result = refstore.sync(config)
    (failure,) = result.quarantined
    assert "has no dimension 'time'" in failure.reason
    assert "set [dataset] concat_from" in failure.reason
    # The settings' fingerprint includes concat_from: the fix retries the granule.
    result = refstore.sync(make_config(concat_from="attr:time_coverage_start"))
    assert result.added == ("ssh_20240101.nc",), [f.reason for f in result.quarantined]


def test_real_trmm_daily_lands_with_its_date_from_the_file_name(  # type: ignore[no-untyped-def]
    make_config, arrive
) -> None:
    config = make_config(concat_from="filename:%Y%m%d")
    arrive(TRMM)
    result = refstore.sync(config)
    assert result.added == (TRMM.name,), [f.reason for f in result.quarantined]
    served = refstore.open_dataset(config).load()
    with xr.open_dataset(TRMM, engine="h5netcdf") as ds:
        expected = ds.load().expand_dims(time=[np.datetime64("1998-01-01", "ns")])
    assert served.time.values.tolist() == expected.time.values.tolist()
    for name in expected.data_vars:
        np.testing.assert_array_equal(served[name].values, expected[name].values)
        assert served[name].dims == expected[name].dims


def test_cli_init_and_sync_with_concat_from(tmp_path: Path) -> None:
    """The real CLI: a bad setting exits 2 naming the forms; a good one lands the series."""
    from tests.conftest import run_cli

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    bad = run_cli(
        "init", "--source", "incoming", "--concat-from", "time", cwd=tmp_path, check=False
    )
    assert bad.returncode == 2 and "concat_from 'time' is not understood" in bad.stderr
    assert not (tmp_path / "refstore.toml").exists()

    run_cli("init", "--source", "incoming", "--concat-from", "filename:%Y%m%d", cwd=tmp_path)
    assert 'concat_from = "filename:%Y%m%d"' in (tmp_path / "refstore.toml").read_text()
    files = _series(incoming, [1, 0], "filename")
    out = json.loads(run_cli("sync", "--json", cwd=tmp_path).stdout)
    assert sorted(out["added"]) == sorted(p.name for p in files)
    status = json.loads(run_cli("status", "--json", cwd=tmp_path).stdout)
    assert status["length"] == 2
