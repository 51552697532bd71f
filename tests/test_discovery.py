"""Discovery: NetCDF/HDF5 suffixes match in any case; a folder of other files says so."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

import refstore
from refstore.sources.local import LocalSource, is_data_name
from refstore.virtualize import shown_dims
from tests.conftest import GRANULES

IMERG = GRANULES / "imerg/GPM_3IMERGHH_bounds.nc4"


@pytest.mark.parametrize(
    "name", ["a.nc", "b.NC", "3B-HHR.MS.MRG.3IMERG.V06B.HDF5", "c.He5", "d.h5"]
)
def test_data_names_match_in_any_case(name: str) -> None:
    assert is_data_name(name)


def test_gpm_upper_case_hdf5_lands(make_config, incoming: Path) -> None:
    shutil.copy2(IMERG, incoming / "3B-HHR.MS.MRG.3IMERG.20190220-S000000-E002959.0000.V06B.HDF5")
    config = make_config(group="Grid")
    assert len(refstore.sync(config).added) == 1


def test_user_glob_is_case_insensitive(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    shutil.copy2(IMERG, tmp_path / "x" / "G.HDF5")
    keys = [g.key for g in LocalSource(str(tmp_path / "**" / "*.hdf5")).discover()]
    assert keys == ["x/G.HDF5"]


def test_files_but_none_matched_is_said(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    for name in ("a.grib2", "b.txt"):
        (tmp_path / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="refstore"):
        assert list(LocalSource(str(tmp_path)).discover()) == []
    assert "2 file(s), none matched *.nc" in caplog.text


def test_dimension_names_as_xarray_shows_them() -> None:
    assert shown_dims(["FS/nscan", "FS/npixel"]) == "dimensions: npixel, nscan (group FS)"
    assert shown_dims([]) == "dimensions: none"


def test_names_a_url_carries_as_is_land_and_others_are_named(tmp_path: Path) -> None:
    """Hive-style folders and names with URL sub-delimiters (``date=2024/a+b=1,x(2)@v1``)
    land and read back equal to the files through the repository and the export; a
    name VirtualiZarr cannot open (a space: escaped in the URL, never unescaped by its
    reader) is quarantined saying which character and what to do, not "file vanished"."""
    import json
    from datetime import datetime

    import numpy as np
    import xarray as xr

    from refstore.config import load_config, render_toml
    from refstore.synthetic import write_ccmp_like_series
    from tests.conftest import run_cli

    files = write_ccmp_like_series(tmp_path / "arch", datetime(2024, 1, 1), 3, nlat=4, nlon=8)
    folder = tmp_path / "in" / "date=2024"
    folder.mkdir(parents=True)
    names = ["a+b=1,x(2)@v1.nc", "with space.nc", "plain.nc"]
    placed = []
    for name, f in zip(names, files, strict=True):
        placed.append(folder / f"{f.stem}_{name}")
        shutil.copy2(f, placed[-1])
    (tmp_path / "refstore.toml").write_text(
        render_toml(source_url="in/date=2024") + '[sync]\nexecutor = "serial"\n'
    )
    proc = run_cli("sync", "--json", cwd=tmp_path)
    out = json.loads(proc.stdout)
    assert len(out["added"]) == 2, proc.stdout
    (reason,) = [q["reason"] for q in out["quarantined"]]
    assert "with space.nc" in reason and "' '" in reason and "rename" in reason
    config = load_config(tmp_path / "refstore.toml", environ={})
    want = xr.concat([xr.open_dataset(p) for p in (placed[0], placed[2])], "time")
    for source in ("repo", "export"):
        got = refstore.open_dataset(config, source=source)
        np.testing.assert_array_equal(got.uwnd.values, want.uwnd.values)
        np.testing.assert_array_equal(got.time.values, want.time.values)
    assert run_cli("verify", cwd=tmp_path, check=False).returncode == 0
