"""Loaded coordinates are stored as the files store them, and converted only exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

import refstore

STEPS = 1120


def _nc3_granule(folder: Path, k: int, units: str) -> Path:
    """NetCDF-3, float64 ``time`` with fractional days (as older products store it)."""
    days = (np.arange(STEPS) + k * STEPS) / 24.0 + 0.3 / 86400 * 7
    scale = {"days": 1.0, "hours": 24.0, "seconds": 86400.0}[units.split()[0]]
    ds = xr.Dataset(
        {"v": (("time", "x"), np.arange(STEPS * 3, dtype="f4").reshape(STEPS, 3))},
        coords={"time": ("time", days * scale, {"units": units, "calendar": "standard"})},
    )
    path = folder / f"g{k}.nc"
    ds.to_netcdf(path, format="NETCDF3_64BIT", engine="scipy")
    return path


def test_float_times_are_stored_byte_identical_and_converted_exactly(
    make_config, incoming: Path
) -> None:
    config = make_config()
    days = "days since 1990-01-01 00:00:00"
    files = [_nc3_granule(incoming, 0, days)]
    refstore.sync(config)
    files.append(_nc3_granule(incoming, 2, "hours since 1990-01-01 00:00:00"))
    refstore.sync(config)  # other units, exactly convertible
    files.append(_nc3_granule(incoming, 1, days))
    assert refstore.sync(config).added == ("g1.nc",)  # late: put in place
    files.sort()
    expected = xr.concat([xr.open_dataset(p, engine="scipy") for p in files], "time")
    first_raw = xr.open_dataset(files[0], engine="scipy", decode_times=False)
    for source in ("repo", "export"):
        served = refstore.open_dataset(config, source=source).load()
        assert np.array_equal(served.time.values.view("i8"), expected.time.values.view("i8"))
        raw = refstore.open_dataset(config, source=source, decode_times=False).load()
        assert raw.time.attrs["units"] == days
        np.testing.assert_array_equal(raw.time.values[:STEPS], first_raw.time.values)


def test_times_not_exactly_expressible_are_quarantined(make_config, incoming: Path) -> None:
    config = make_config()
    _nc3_granule(incoming, 0, "days since 1990-01-01 00:00:00")
    refstore.sync(config)
    _nc3_granule(incoming, 1, "seconds since 1990-01-01 00:00:00")
    (failure,) = refstore.sync(config).quarantined
    assert failure.reason == (
        "g1.nc: time: values in 'seconds since 1990-01-01 00:00:00' cannot be expressed "
        "exactly in the store's 'days since 1990-01-01 00:00:00' as float64"
    )


def test_integer_times_on_a_per_file_epoch_are_converted_into_the_stores_integer_dtype() -> None:
    # RSS SSMIS: int16 "hours since <the file's day>"; xarray encodes to int64 whatever
    # dtype is asked, which alone must not refuse an exact conversion.
    from refstore.coords import CoordEncoding, express_in

    later = xr.Dataset(
        coords={"time": ("time", np.array([1, 2], "i2"), {"units": "hours since 2021-04-26"})}
    )
    ref = CoordEncoding.of("int16", {"units": "hours since 2020-01-02"})
    out, problem = express_in(later, "time", ref)
    assert problem is None
    assert out["time"].dtype == np.dtype("i2") and out["time"].values.tolist() == [11521, 11522]
    # One that does not fit the store's dtype is still refused, not wrapped.
    far = later.assign_coords(time=later["time"].assign_attrs(units="hours since 2030-01-01"))
    assert express_in(far, "time", ref)[1] is not None
