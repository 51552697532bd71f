"""Helpers shared by the tests: compare a store with direct reads of its files, change a
file as publishers do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr


def direct_read(files: Sequence[Path], concat_dim: str = "time", **kwargs: Any) -> xr.Dataset:
    """The files read straight with h5netcdf (netCDF-3: scipy) and concatenated."""
    engine = kwargs.pop("engine", None)
    datasets = []
    for f in files:
        eng = engine or ("scipy" if f.read_bytes()[:3] == b"CDF" else "h5netcdf")
        datasets.append(xr.open_dataset(f, engine=eng, **kwargs).load())
    if len(datasets) == 1:
        return datasets[0]
    return xr.concat(
        datasets,
        dim=concat_dim,
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="override",
        combine_attrs="override",
    )


def assert_same_values(actual: xr.Dataset, expected: xr.Dataset) -> None:
    """Every variable of ``expected`` is in ``actual`` with equal values and dtype."""
    missing = set(expected.variables) - set(actual.variables)
    assert not missing, f"missing variables {missing}"
    for name in expected.variables:
        a, e = actual[name], expected[name]
        assert a.dims == e.dims, (name, a.dims, e.dims)
        assert a.dtype == e.dtype, (name, a.dtype, e.dtype)
        np.testing.assert_array_equal(a.values, e.values, err_msg=str(name))


def group_read(paths: Sequence[Path], group: str, **kwargs: Any) -> xr.Dataset:
    """Each file's ``group`` with the root's ``mirror_step`` as its coordinate (netCDF
    scoping, as TEMPO-like granules keep it), concatenated along ``mirror_step``."""
    parts = []
    for p in paths:
        with xr.open_dataset(p, engine="h5netcdf", **kwargs) as root:
            step = root["mirror_step"].load()
        with xr.open_dataset(p, engine="h5netcdf", group=group, **kwargs) as ds:
            parts.append(ds.load().assign_coords(mirror_step=step))
    return xr.concat(parts, dim="mirror_step", data_vars="minimal", coords="minimal")


def rewrite_in_place(path: Path, source: Path) -> None:
    """Overwrite ``path`` with ``source``'s bytes, keeping its inode (as ``cp`` over a
    file does; a downloader's rename would give a new one)."""
    with open(path, "r+b") as f:
        f.write(source.read_bytes())
        f.truncate()
