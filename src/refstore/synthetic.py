"""Synthetic CCMP-like NetCDF4 granules for the demo, the tests and the benchmarks.

Modelled on PO.DAAC ``CCMP_WINDS_10M6HR_L4_V3.1`` (``CCMP_Wind_Analysis_YYYYMMDD_V03.1_L4.nc``):
6-hourly ``uwnd``/``vwnd``/``ws``/``nobs`` on a regular 0.25 degree grid, chunks
``(1, nlat, nlon)``, deflate 4 + shuffle, ``_FillValue = -9999``. Values depend only on ``seed``
and the time step (:func:`ccmp_like_fields`), so tests can regenerate what a granule holds.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import uuid
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ccmp_like_fields",
    "ccmp_like_filename",
    "write_ccmp_like_granule",
    "write_ccmp_like_series",
]

EPOCH = dt.datetime(1987, 1, 1)
FILL_VALUE = -9999.0
_ATTRS: dict[str, tuple[str, str, str]] = {  # name -> (standard_name, long_name, units)
    "uwnd": ("eastward_wind", "u-wind vector component at 10 meters", "m s-1"),
    "vwnd": ("northward_wind", "v-wind vector component at 10 meters", "m s-1"),
    "ws": ("wind_speed", "wind speed at 10 meters", "m s-1"),
    "nobs": ("number_of_observations", "number of observations used to derive wind", "1"),
    "time": ("time", "Time of analysis", "hours since 1987-01-01 00:00:00"),
    "latitude": ("latitude", "Latitude", "degrees_north"),
    "longitude": ("longitude", "Longitude", "degrees_east"),
}


def _cf(name: str, **extra: str) -> dict[str, str]:
    standard_name, long_name, units = _ATTRS[name]
    return {"standard_name": standard_name, "long_name": long_name, "units": units, **extra}


class GranuleKwargs(TypedDict, total=False):
    """Keyword arguments forwarded by :func:`write_ccmp_like_series` to the granule writer."""

    nlat: int
    nlon: int
    seed: int
    lat_offset: float
    variables: tuple[str, ...]
    dtype: str
    scale_factor: float | None
    add_offset: float | None
    compression: bool


def _naive_utc(t: np.datetime64 | dt.datetime) -> dt.datetime:
    if isinstance(t, np.datetime64):
        return dt.datetime(1970, 1, 1) + dt.timedelta(
            microseconds=int(t.astype("datetime64[us]").astype(np.int64))
        )
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def ccmp_like_filename(start: np.datetime64 | dt.datetime, steps_per_file: int = 4) -> str:
    """Return the CCMP-style file name of a granule whose first time step is `start`.

    Parameters
    ----------
    start : numpy.datetime64 or datetime.datetime
        First time step (aware datetimes are converted to UTC).
    steps_per_file : int, default 4
        Daily files (4 steps starting at 00 UTC) are named ``..._YYYYMMDD_...``; any other layout
        gets ``..._YYYYMMDDTHH_...`` (``THHMM`` if minutes are non-zero).

    Returns
    -------
    str
        For example ``CCMP_Wind_Analysis_20240101_V03.1_L4.nc``.
    """
    t = _naive_utc(start)
    if steps_per_file == 4 and t.time() == dt.time(0):
        stamp = f"{t:%Y%m%d}"
    else:
        stamp = f"{t:%Y%m%dT%H%M}" if t.minute else f"{t:%Y%m%dT%H}"
    return f"CCMP_Wind_Analysis_{stamp}_V03.1_L4.nc"


def ccmp_like_fields(
    time: np.datetime64 | dt.datetime, *, nlat: int = 32, nlon: int = 64, seed: int = 0
) -> dict[str, NDArray[np.float32]]:
    """Return the decoded ``(nlat, nlon)`` fields written for one time step (NaN = fill).

    Parameters
    ----------
    time : numpy.datetime64 or datetime.datetime
        The time step; values depend only on `seed` and `time`, not on the file layout.
    nlat, nlon : int, default 32, 64
        Grid size.
    seed : int, default 0
        Non-negative random seed.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 ``uwnd``, ``vwnd``, ``ws``, ``nobs``; ~1 % of cells (always ``[0, 0]``) are NaN.
    """
    minutes = int((_naive_utc(time) - dt.datetime(1, 1, 1)).total_seconds()) // 60
    rng = np.random.default_rng([seed, minutes])
    shape = (nlat, nlon)
    u = rng.normal(1.0, 6.0, shape).astype(np.float32)
    v = rng.normal(0.0, 5.0, shape).astype(np.float32)
    nobs = rng.integers(0, 6, shape).astype(np.float32)
    mask = rng.random(shape) < 0.01
    mask[0, 0] = True
    out = {"uwnd": u, "vwnd": v, "ws": np.hypot(u, v), "nobs": nobs}
    for arr in out.values():
        arr[mask] = np.nan
    return out


def write_ccmp_like_granule(
    path: str | os.PathLike[str],
    start: dt.datetime,
    *,
    steps_per_file: int = 4,
    step_hours: int = 6,
    nlat: int = 32,
    nlon: int = 64,
    seed: int = 0,
    lat_offset: float = 0.0,
    variables: tuple[str, ...] = ("uwnd", "vwnd", "ws", "nobs"),
    dtype: str = "float32",
    scale_factor: float | None = None,
    add_offset: float | None = None,
    compression: bool = True,
) -> Path:
    """Atomically write one CCMP-like granule (temp file in the same folder, then os.replace).

    Parameters
    ----------
    path : str or os.PathLike
        Target file, or an existing directory to write :func:`ccmp_like_filename` into.
    start : datetime.datetime
        First time step; steps are ``start + i * step_hours`` for ``i < steps_per_file``.
    steps_per_file, step_hours, nlat, nlon, seed : int
        Time layout, grid size (0.25 degree cells from -78.375 N / 0.125 E) and data seed.
    lat_offset : float, default 0.0
        Added to the latitudes (a "wrong grid" granule).
    variables : tuple of str, default ("uwnd", "vwnd", "ws", "nobs")
        Data variables to write.
    dtype : str, default "float32"
        On-disk dtype of the data variables; with `scale_factor`/`add_offset` netCDF4 packs them.
    scale_factor, add_offset : float or None, default None
        CF packing attributes.
    compression : bool, default True
        Chunks ``(1, nlat, nlon)`` + zlib 4 + shuffle; if False, contiguous and uncompressed.

    Returns
    -------
    pathlib.Path
        The written file (byte-identical when rewritten with the same arguments and name).
    """
    import netCDF4

    start = _naive_utc(start)
    target = Path(path)
    if target.is_dir():
        target = target / ccmp_like_filename(start, steps_per_file)
    times = [start + dt.timedelta(hours=step_hours * i) for i in range(steps_per_file)]
    end = start + dt.timedelta(hours=step_hours * steps_per_file)
    created = f"{start + dt.timedelta(days=2):%Y-%m-%dT%H:%M:%SZ}"  # deterministic, not wall clock
    ident = uuid.uuid5(
        uuid.NAMESPACE_URL, f"refstore-synthetic:{seed}:{start.isoformat()}:{steps_per_file}"
    )
    np_dtype = np.dtype(dtype)
    fill = np.array(FILL_VALUE).astype(np_dtype)
    dims = ("time", "latitude", "longitude")
    chunks = (1, nlat, nlon) if compression else None
    fields = [ccmp_like_fields(t, nlat=nlat, nlon=nlon, seed=seed) for t in times]
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
            ds.setncatts(
                {
                    "Conventions": "CF-1.7 ACDD-1.3",
                    "title": "RSS CCMP V3.1 6-hourly surface winds (Level 4) -- synthetic",
                    "institution": "Remote Sensing Systems",
                    "product_version": "v3.1",
                    "id": target.stem,
                    "uuid": str(ident),
                    "date_created": created,
                    "history": f"{created} created by refstore.synthetic (seed={seed})",
                    "time_coverage_start": f"{start:%Y-%m-%dT%H:%M:%SZ}",
                    "time_coverage_end": f"{end:%Y-%m-%dT%H:%M:%SZ}",
                    "time_coverage_resolution": f"PT{step_hours}H",
                }
            )
            ds.createDimension("time", steps_per_file)
            ds.createDimension("latitude", nlat)
            ds.createDimension("longitude", nlon)
            tv = ds.createVariable("time", "f8", ("time",))
            tv.setncatts(_cf("time", axis="T", calendar="standard"))
            tv[:] = [(t - EPOCH) / dt.timedelta(hours=1) for t in times]
            for name, first, axis, n in (
                ("latitude", -78.375 + lat_offset, "Y", nlat),
                ("longitude", 0.125, "X", nlon),
            ):
                cv = ds.createVariable(name, "f4", (name,))
                cv.setncatts(_cf(name, axis=axis))
                cv[:] = (first + 0.25 * np.arange(n)).astype(np.float32)
            for name in variables:
                var = ds.createVariable(
                    name,
                    np_dtype,
                    dims,
                    fill_value=fill,
                    contiguous=not compression,
                    zlib=compression,
                    shuffle=compression,
                    complevel=4,
                    chunksizes=chunks,
                )
                var.setncatts(_cf(name, coordinates="time latitude longitude"))
                if scale_factor is not None:
                    var.scale_factor = scale_factor
                if add_offset is not None:
                    var.add_offset = add_offset
                data = np.stack([f[name] for f in fields])
                if np_dtype.kind in "iu" and scale_factor is None and add_offset is None:
                    data = np.round(data)
                bad = np.isnan(data)  # zero the holes: netCDF4 packs masked values too
                var[:] = np.ma.masked_array(np.where(bad, 0, data), mask=bad)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_ccmp_like_series(
    folder: str | os.PathLike[str],
    start: dt.datetime,
    n_files: int,
    *,
    steps_per_file: int = 4,
    step_hours: int = 6,
    **granule_kwargs: Unpack[GranuleKwargs],
) -> list[Path]:
    """Write `n_files` consecutive granules into `folder` (created if missing).

    Parameters
    ----------
    folder : str or os.PathLike
        Output directory.
    start : datetime.datetime
        First step of file 0; file ``k`` starts ``k * steps_per_file * step_hours`` hours later.
    n_files, steps_per_file, step_hours : int
        Number of files and time layout.
    **granule_kwargs
        Forwarded to :func:`write_ccmp_like_granule`.

    Returns
    -------
    list of pathlib.Path
        The written files, sorted (name order is time order).

    Raises
    ------
    ValueError
        If the layout would give colliding or non-time-ordered file names.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    start = _naive_utc(start)
    starts = [start + dt.timedelta(hours=k * steps_per_file * step_hours) for k in range(n_files)]
    names = [ccmp_like_filename(t, steps_per_file) for t in starts]
    if names != sorted(set(names)):
        raise ValueError(
            f"steps_per_file={steps_per_file}, step_hours={step_hours} gives unordered names"
        )
    return sorted(
        write_ccmp_like_granule(
            out / name, t, steps_per_file=steps_per_file, step_hours=step_hours, **granule_kwargs
        )
        for name, t in zip(names, starts, strict=True)
    )
