"""Per-granule virtualization on real files; pure helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refstore.models import Failure, Granule
from refstore.sources.local import LocalSource
from refstore.virtualize import (
    HDF5_MAGIC,
    DatasetSpec,
    VirtualGranule,
    choose_loadable,
    detect_format,
    virtualize_granule,
)
from tests.conftest import ASCAT, GAMSSA


def granule(path: Path) -> Granule:
    return Granule(key=path.name, url=path.resolve().as_uri(), revision="1")


def test_detect_format() -> None:
    assert detect_format({0: HDF5_MAGIC}) == "hdf5"
    assert detect_format({0: b"\0" * 8, 512: HDF5_MAGIC}) == "hdf5"  # user block
    assert detect_format({0: b"CDF\x01abcd"}) == "netcdf3"
    assert detect_format({0: b"CDF\x02abcd"}) == "netcdf3"
    assert detect_format({0: b"GRIB\0\0\0\0"}) is None


def test_choose_loadable() -> None:
    dims = {
        "time": ("time",),
        "lat": ("lat",),
        "crs": (),
        "sst": ("time", "lat"),
        "lat_bnds": ("lat", "nv"),
        "time_bnds": ("time", "nv"),
    }
    assert choose_loadable(dims, "time", None) == ("crs", "lat", "lat_bnds", "time")
    assert choose_loadable(dims, "time", ["sst", "nope"]) == ("sst",)


def test_gamssa_virtualizes_with_crs_loaded() -> None:
    from virtualizarr.manifests import ManifestArray

    r = virtualize_granule(
        granule(GAMSSA[0]), DatasetSpec("time"), LocalSource(str(GAMSSA[0].parent))
    )
    assert isinstance(r, VirtualGranule)
    ds = r.dataset
    assert isinstance(ds["analysed_sst"].data, ManifestArray)
    for name in ("crs", "lat", "lon", "time"):
        assert not isinstance(ds[name].data, ManifestArray), name
        assert isinstance(ds[name].values, np.ndarray), name
    assert r.start == "2024-10-11T12:00:00" and r.length == 1
    assert r.signature["analysed_sst"]["scale_factor"] == 0.01
    assert r.signature["lat"]["values"]


def test_netcdf3_is_parsed_by_magic_bytes() -> None:
    r = virtualize_granule(
        granule(ASCAT[0]),
        DatasetSpec("NUMROWS", concat_from="arrival"),
        LocalSource(str(ASCAT[0].parent)),
    )
    assert isinstance(r, VirtualGranule) and r.length == 1632
    assert r.first is None  # NUMROWS has no coordinate variable


def test_failures_are_values_with_reasons(tmp_path: Path) -> None:
    src = LocalSource(str(tmp_path))
    trunc = tmp_path / "t.nc"
    trunc.write_bytes(GAMSSA[0].read_bytes()[:2000])
    empty = tmp_path / "e.nc"
    empty.write_bytes(b"")
    for path, needle in ((trunc, "t.nc: "), (empty, "e.nc: "), (tmp_path / "gone.nc", "gone.nc: ")):
        r = virtualize_granule(granule(path), DatasetSpec("time"), src)
        assert isinstance(r, Failure) and r.reason.startswith(needle), r
    r = virtualize_granule(granule(GAMSSA[0]), DatasetSpec("depth"), src)
    assert isinstance(r, Failure) and "has no dimension 'depth'" in r.reason
