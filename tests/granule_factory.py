"""Small real HDF5/netCDF4 granules, one per fidelity mismatch class, written with h5py.

Each is a valid netCDF-4 file (dimension scales) that h5netcdf reads: two 6-hourly steps
along ``time``, a 4-point ``y``, and one data variable ``v`` (time, y) stored the way
real products store theirs. The low-level h5py API builds what the high-level one
refuses (the same filter twice in one pipeline).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np

RAW = np.array([[-32768, -32767, 0, 120], [7, -32768, 32000, -5]], dtype="i2")


def _frame(path: Path, make: Callable[[h5py.File], Any], hour: int = 0) -> Path:
    with h5py.File(path, "w") as f:
        t = f.create_dataset("time", data=np.array([hour, hour + 6], "i4"), maxshape=(None,))
        t.attrs["units"] = np.bytes_(b"hours since 2024-01-01 00:00:00")
        t.attrs["calendar"] = np.bytes_(b"standard")
        t.make_scale("time")
        y = f.create_dataset("y", data=np.arange(4, dtype="f4"))
        y.make_scale("y")
        v = make(f)
        v.dims[0].attach_scale(t)
        v.dims[1].attach_scale(y)
    return path


def _low_level(f: h5py.File, dcpl: Any) -> Any:
    """``v`` = RAW as int16 with a creation property list the high-level API refuses."""
    space = h5py.h5s.create_simple(RAW.shape)
    v = h5py.Dataset(h5py.h5d.create(f.id, b"v", h5py.h5t.NATIVE_INT16, space, dcpl=dcpl))
    v[...] = RAW
    return v


def fill_differs(path: Path) -> Path:
    """GHRSST-like: storage fill -32767, CF ``_FillValue`` -32768, and a chunk never written
    (the file reads it as the storage fill, which CF does not mask)."""

    def make(f: h5py.File) -> Any:
        v = f.create_dataset("v", shape=(2, 4), dtype="i2", chunks=(1, 4), fillvalue=-32767)
        v[0] = RAW[0]  # v[1] stays unwritten
        v.attrs["_FillValue"] = np.int16(-32768)
        v.attrs["scale_factor"] = np.float64(0.01)
        return v

    return _frame(path, make)


def float_fill_differs(path: Path) -> Path:
    """GPM IMERG-like: float32, storage fill 0.0, ``_FillValue`` -9999.9, dry cells 0.0."""

    def make(f: h5py.File) -> Any:
        data = np.array([[0.0, -9999.9, 1.5, 0.0], [0.0, 0.0, -9999.9, 2.25]], "f4")
        v = f.create_dataset("v", data=data, chunks=(1, 4), fillvalue=0.0, compression="gzip")
        v.attrs["_FillValue"] = np.array([-9999.9], "f4")
        return v

    return _frame(path, make)


def repeated_deflate(path: Path) -> Path:
    """NOAA VIIRS L3U-like pipeline: shuffle + deflate(4) + deflate(1)."""

    def make(f: h5py.File) -> Any:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, 4))
        dcpl.set_shuffle()
        dcpl.set_deflate(4)
        dcpl.set_deflate(1)
        return _low_level(f, dcpl)

    return _frame(path, make)


def float32_packing(path: Path) -> Path:
    """RSS SSMIS / AVHRR OI-like: int16 with float32 ``scale_factor``/``add_offset``."""

    def make(f: h5py.File) -> Any:
        v = f.create_dataset("v", data=RAW, chunks=(1, 4), compression="gzip", shuffle=True)
        v.attrs["scale_factor"] = np.float32(0.1)
        v.attrs["add_offset"] = np.float32(0.05)
        v.attrs["_FillValue"] = np.int16(-32768)
        return v

    return _frame(path, make)


def fletcher32_chain(path: Path) -> Path:
    """fletcher32 + shuffle + deflate (as in OPeNDAP's SDS_fle_shuf_def.h5)."""

    def make(f: h5py.File) -> Any:
        return f.create_dataset(
            "v", data=RAW, chunks=(1, 4), fletcher32=True, shuffle=True, compression="gzip"
        )

    return _frame(path, make)


def string_variable(path: Path) -> Path:
    """A variable-length string variable along time beside the data."""

    def make(f: h5py.File) -> Any:
        labels = f.create_dataset(
            "label", data=["ascending", "descending"], dtype=h5py.string_dtype()
        )
        labels.dims[0].attach_scale(f["time"])
        return f.create_dataset("v", data=RAW, chunks=(1, 4))

    return _frame(path, make)


def scale_offset_filter(path: Path) -> Path:
    """HDF5's scale-offset filter, which no numcodecs codec decodes."""

    def make(f: h5py.File) -> Any:
        return f.create_dataset("v", data=RAW.astype("i4"), chunks=(1, 4), scaleoffset=0)

    return _frame(path, make)


def compact_layout(path: Path) -> Path:
    """Compact storage: the data live in the object header, not in a chunk."""

    def make(f: h5py.File) -> Any:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        return _low_level(f, dcpl)

    return _frame(path, make)


FACTORIES: dict[str, Callable[[Path], Path]] = {
    "fill_differs": fill_differs,
    "float_fill_differs": float_fill_differs,
    "repeated_deflate": repeated_deflate,
    "float32_packing": float32_packing,
    "fletcher32_chain": fletcher32_chain,
    "string_variable": string_variable,
    "scale_offset_filter": scale_offset_filter,
    "compact_layout": compact_layout,
}


def profile_granule(
    path: Path,
    start: int,
    length: int,
    *,
    chunk: int = 120,
    seconds: int = 60,
    dtype: str = "f4",
) -> Path:
    """An Argo/ICESat-like netCDF4 granule of ``length`` profiles along ``time``, stored
    in ``chunk``-profile HDF5 chunks (shuffle + deflate): when ``length`` is not a
    multiple of ``chunk`` the last chunk is partial and padded in the file."""
    import xarray as xr

    steps = np.arange(start, start + length, dtype="i8")
    rng = np.random.default_rng(start)
    temp = rng.normal(15.0, 5.0, (length, 4)).astype(dtype)
    temp[rng.random((length, 4)) < 0.05] = np.nan
    ds = xr.Dataset(
        {
            "temp": (("time", "level"), temp, {"units": "degC"}),
            "flag": (("time",), (steps % 7).astype("i1")),
        },
        coords={
            "time": ("time", steps * seconds, {"units": "seconds since 2024-01-01"}),
            "level": ("level", np.array([0.0, 10.0, 50.0, 100.0], "f4")),
        },
    )
    ds.time.encoding["dtype"] = "i8"
    encoding = {
        "temp": {"chunksizes": (chunk, 4), "zlib": True, "shuffle": True, "_FillValue": -999.0},
        "flag": {"chunksizes": (chunk,), "zlib": True},
        "time": {"chunksizes": (chunk,)},
    }
    # Unlimited like most real profile files: a chunk may then exceed the data.
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding, unlimited_dims=("time",))
    return path


def one_step_granule(
    path: Path,
    day: int,
    *,
    time: str = "scalar",
    stamp: str | None = None,
    seed: int | None = None,
    lat0: float = -1.0,
    scalar_name: str = "time",
) -> Path:
    """A NASA-SSH / OMI L3-like netCDF4 granule of one day without a ``time`` dimension:
    ``sla(lat, lon)`` (float32, chunked, deflate, ``_FillValue``, some NaN), ``lat``/``lon``
    and a scalar ``crs``. Its time is, by ``time``:

    - ``"scalar"``: a scalar coordinate ``time`` (float64 days since 1992-10-05, noon;
      ``scalar_name`` names it otherwise);
    - ``"attr"``: only the global attribute ``time_coverage_start`` (``stamp`` overrides
      its text, e.g. to plant a bad one);
    - ``"name"``: nowhere in the file (the caller puts the date in ``path``'s name);
    - ``"dim"``: a length-1 ``time`` dimension and coordinate, as ordinary series have
      (the baseline the others are measured against).
    """
    import xarray as xr

    rng = np.random.default_rng(day if seed is None else seed)
    sla = rng.normal(0.0, 0.2, (3, 4)).astype("f4")
    sla[rng.random((3, 4)) < 0.2] = np.nan
    moment = np.datetime64("2024-01-01T12:00:00") + np.timedelta64(day, "D")
    attrs = {"title": "one step per file"}
    coords: dict[str, Any] = {
        "lat": ("lat", lat0 + np.arange(3, dtype="f4"), {"units": "degrees_north"}),
        "lon": ("lon", np.array([10.0, 11.0, 12.0, 13.0], "f4"), {"units": "degrees_east"}),
    }
    if time == "scalar":
        days = (moment - np.datetime64("1992-10-05")) / np.timedelta64(1, "D")
        coords[scalar_name] = ((), np.float64(days), {"units": "days since 1992-10-05"})
    elif time == "attr":
        attrs["time_coverage_start"] = stamp or f"{np.datetime_as_string(moment)}Z"
    ds = xr.Dataset(
        {
            "sla": (("lat", "lon"), sla, {"units": "m", "grid_mapping": "crs"}),
            "crs": ((), np.int32(0), {"grid_mapping_name": "latitude_longitude"}),
        },
        coords=coords,
        attrs=attrs,
    )
    encoding: dict[str, dict[str, Any]] = {
        "sla": {"chunksizes": (3, 2), "zlib": True, "_FillValue": np.float32(-999.0)}
    }
    if time == "scalar":
        encoding[scalar_name] = {"dtype": "f8"}
    if time == "dim":
        ds = ds.expand_dims(time=[moment])
        ds["crs"] = ds.crs.isel(time=0)
        encoding["sla"]["chunksizes"] = (1, 3, 2)
        encoding["time"] = {"units": "seconds since 1970-01-01", "dtype": "i8"}
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
    return path


def tempo_like_granule(
    path: Path,
    start: int,
    steps: int = 3,
    *,
    seed: int | None = None,
    coordinate: bool = True,
    static: bool = False,
    index: bool = False,
) -> Path:
    """A TEMPO-like netCDF4 granule: the ``mirror_step`` coordinate (seconds since
    2024-01-01, from ``start``) in the root group, the data in ``product/`` (``no2``,
    chunked, deflate, ``_FillValue``, some NaN), ``geolocation/`` and ``support_data/``,
    all along ``mirror_step`` x ``xtrack``. ``product/`` alone has no ``mirror_step``
    variable (netCDF scoping: the root's coordinate applies to it). ``coordinate=False``
    leaves the root's out too: nothing orders the granules. ``static=True`` adds an
    ``instrument/`` group without ``mirror_step`` (``wavelength(band)``, the same in every
    granule) and group attributes. ``index=True`` is real TEMPO's shape: ``mirror_step``
    is the index 0, 1, ... (the same in every granule) and ``time(mirror_step)`` in the
    root holds the time (float seconds since 1980-01-06, GPS epoch, from ``start``)."""
    import h5netcdf

    rng = np.random.default_rng(start if seed is None else seed)
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"mirror_step": steps, "xtrack": 4}
        if coordinate and index:
            f.create_variable("mirror_step", ("mirror_step",), "i4", data=np.arange(steps))
            t = f.create_variable(
                "time", ("mirror_step",), "f8", data=start + 2.5 * np.arange(steps)
            )
            t.attrs["units"] = "seconds since 1980-01-06T00:00:00Z"
        elif coordinate:
            t = f.create_variable(
                "mirror_step", ("mirror_step",), "i8", data=start + np.arange(steps, dtype="i8")
            )
            t.attrs["units"] = "seconds since 2024-01-01 00:00:00"
        for name, group in (("no2", "product"), ("lat", "geolocation"), ("sza", "support_data")):
            values = rng.normal(1.0, 0.5, (steps, 4)).astype("f4")
            values[rng.random((steps, 4)) < 0.2] = np.nan
            g = f.create_group(group)
            v = g.create_variable(
                name,
                ("mirror_step", "xtrack"),
                "f4",
                data=values,
                chunks=(1, 4),
                compression="gzip",
                fillvalue=np.float32(-1e30),
            )
            v.attrs["units"] = "1"
            if static:
                g.attrs["title"] = f"{group} of {path.name}"
                g.attrs["summary"] = f"the {group} group"
                g.attrs["history"] = "written by tests/granule_factory.py"  # per granule by name
        if static:
            f.attrs["platform"] = "TEMPO-like"
            g = f.create_group("instrument")
            g.dimensions = {"band": 2}
            w = g.create_variable("wavelength", ("band",), "f8", data=np.array([290.0, 740.0]))
            w.attrs["units"] = "nm"
    return path


# -- copies of real granules moved to another time (refstore.derive) -------------------------
_DATA = Path(__file__).parent / "data" / "granules"
# The real GPM IMERG subset: Grid/time = 2020-01-01T12:00 (julian calendar); its FileHeader
# names 3B-HHR.MS.MRG.3IMERG.20200101-S120000-E122959.0720.V06B.HDF5.
IMERG = _DATA / "imerg" / "GPM_3IMERGHH_bounds.nc4"
RSS_DAY = _DATA / "rssmif16d" / "f16_ssmis_20200102v7.nc"  # a real RSS SSMIS day


def imerg_name(start: datetime) -> str:
    """The file name GPM IMERG gives the half hour from ``start``."""
    end = start + timedelta(minutes=29, seconds=59)
    minutes = start.hour * 60 + start.minute
    return f"3B-HHR.MS.MRG.3IMERG.{start:%Y%m%d-S%H%M%S}-E{end:%H%M%S}.{minutes:04d}.V06B.HDF5"


def imerg_half_hour(folder: Path, start: datetime, time: datetime | None = None) -> Path:
    """The real IMERG subset under the name of the half hour from ``start``, its time and
    bounds moved there (or to ``time``: a name that says another half hour)."""
    path = folder / imerg_name(start)
    shutil.copy(IMERG, path)
    seconds = int(((time or start) - datetime(1970, 1, 1)).total_seconds())
    with h5py.File(path, "r+") as f:
        f["Grid/time"][0] = seconds
        f["Grid/time_bnds"][0] = [seconds, seconds + 1800]
    return path


def rss_day(folder: Path, day: date, nudge: bool = False) -> Path:
    """The real RSS SSMIS day of 2020-01-02 moved to ``day``: its time units and
    begin/end attributes say that day (same lengths: lat/lon stay where they lie);
    ``nudge`` moves one latitude by two ulps (no longer a regular grid)."""
    path = folder / f"f16_ssmis_{day:%Y%m%d}v7.nc"
    shutil.copy(RSS_DAY, path)
    with h5py.File(path, "r+") as f:
        f["time"].attrs.modify("units", np.bytes_(f"hours since {day:%Y-%m-%d}T00:00:00Z"))
        f.attrs.modify("begin_time", np.bytes_(f"{day:%Y-%m-%d}T00:00:00Z"))
        f.attrs.modify("end_time", np.bytes_(f"{day:%Y-%m-%d}T23:59:59Z"))
        if nudge:
            lat = f["latitude"]
            lat[300] = np.nextafter(np.nextafter(lat[300], np.float32(90)), np.float32(90))
    return path
