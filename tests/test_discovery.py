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
