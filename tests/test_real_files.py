"""The fidelity rule, as a table: every granule file -> the outcome it must have.

A file that *lands* reads back through the Icechunk repository and through the kerchunk
Parquet export equal to ``xr.open_dataset(file)`` (h5netcdf; scipy for netCDF-3): decoded
values, NaN mask and dtype, and raw values (``mask_and_scale=False``) too. A file that is
*quarantined* never reaches a commit, with a one-line reason containing the given phrase.
Every file under ``tests/data/granules`` has a row (checked), and so has each small h5py
granule of ``tests/granule_factory.py`` (one per mismatch class found on real products).
Text variables compare as text (readers hold it as object, ``<U`` or StringDType).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import refstore
from tests.conftest import GRANULES
from tests.granule_factory import FACTORIES

LANDS = ""


@dataclass(frozen=True)
class Row:
    """One file and what must happen to it."""

    path: str  # under tests/data/granules, or "factory:<name>"
    outcome: str = LANDS  # LANDS, or a phrase the quarantine reason contains
    concat_dim: str = "time"
    group: str = ""
    # A dim without a coordinate (NUMROWS, phony_dim_0) stacks only by explicit opt-in.
    concat_from: str = "auto"


ARRIVAL = "arrival"
BES = "synthetic_edge_cases/bes/"
KERCHUNK = "synthetic_edge_cases/kerchunk/"
TABLE = [
    Row("gamssa/20241011120000-ABOM-L4_GHRSST-SSTfnd-GAMSSA_28km-GLOB-v02.0-fv01.0.nc"),
    Row("gamssa/20241012120000-ABOM-L4_GHRSST-SSTfnd-GAMSSA_28km-GLOB-v02.0-fv01.0.nc"),
    Row("misc/20181231090000-JPL-L4_GHRSST-SSTfnd-MUR25-GLOB-v02.0-fv04.2.nc"),
    Row("misc/3B42_Daily.19980101.7.nc4", "has no dimension 'time' (dimensions: lat, lon)"),
    Row("misc/OBP_2017_01.nc"),
    Row("misc/TROPESS_reanalysis_mon_o3_2021.nc"),
    Row("misc/not_empty_ccmp.nc"),
    Row("rssmif16d/f16_ssmis_20200102v7.nc"),  # float32 packing, packed datetime
    Row("rssmif16d/f16_ssmis_20210426v7.nc"),
    Row(
        "s6a_groups/S6A_P4_2__HR_RED__NR_014_191_20210403T004056_20210403T005056_F00.nc",
        group="data_01",
    ),
    Row(
        "s6a_groups/S6A_P4_2__HR_RED__NR_014_192_20210403T005056_20210403T010056_F00.nc",
        group="data_01",
    ),
    Row(
        "ascat_nc3/ascat_20210614_001500_metopa_76026_eps_o_250_3202_ovw.l2.nc",
        concat_dim="NUMROWS",
        concat_from="arrival",
    ),
    Row(
        "ascat_nc3/ascat_20210614_015700_metopa_76027_eps_o_250_3202_ovw.l2.nc",
        concat_dim="NUMROWS",
        concat_from="arrival",
    ),
    Row("imerg/GPM_3IMERGHH_bounds.nc4", group="Grid"),  # HDF5 fill 0.0, _FillValue -9999.9
    Row(BES + "One_chunk_shuf_2deflates.h5", concat_dim="phony_dim_0", concat_from=ARRIVAL),
    Row(BES + "SDS_fle_shuf_def.h5", concat_dim="phony_dim_0", concat_from=ARRIVAL),
    Row(
        BES + "all_storages_filters.h5",
        "compact: raw values",
        concat_dim="phony_dim_0",
        concat_from=ARRIVAL,
    ),
    Row(
        BES + "compact_example.h5",
        "var_int32: raw values",
        concat_dim="phony_dim_0",
        concat_from=ARRIVAL,
    ),
    Row(
        BES + "chunked_compound.h5",
        "cannot be opened as the export",
        concat_dim="phony_dim_0",
        concat_from=ARRIVAL,
    ),
    Row(BES + "d_size64_be.h5", concat_dim="phony_dim_0", concat_from=ARRIVAL),
    Row(BES + "t_vl_string_1d.h5", concat_dim="phony_dim_0", concat_from=ARRIVAL),
    Row(
        BES + "chunked_enum.h5", "has no dimension 'phony_dim_0' (dimensions: none)", "phony_dim_0"
    ),
    Row(BES + "Scalar_compact_vlstr.h5", "has no dimension 'phony_dim_0'", "phony_dim_0"),
    Row(BES + "t_scalar_dset_float_be.h5", "has no dimension 'phony_dim_0'", "phony_dim_0"),
    Row(BES + "nc4_unlimited_0.h5", "has no steps along 'time'"),
    Row(KERCHUNK + "hdf5_compression_zstd.h5", concat_dim="phony_dim_0", concat_from=ARRIVAL),
    Row(
        KERCHUNK + "hdf5_compression_blosc_lz4_bitshuffle.h5",
        concat_dim="phony_dim_0",
        concat_from=ARRIVAL,
    ),
    Row(
        KERCHUNK + "hdf5_compression_lz4.h5",
        "imagecodecs_lz4h5",
        concat_dim="phony_dim_0",
        concat_from=ARRIVAL,
    ),
    Row(
        KERCHUNK + "hdf5_compression_bitshuffle.h5",
        "bitshuffle",
        concat_dim="phony_dim_0",
        concat_from=ARRIVAL,
    ),
    Row("factory:fill_differs"),
    Row("factory:float_fill_differs"),
    Row("factory:repeated_deflate"),
    Row("factory:float32_packing"),
    Row("factory:fletcher32_chain"),
    Row("factory:string_variable"),
    Row("factory:scale_offset_filter", "HDF5 filter scaleoffset (id 6) has no numcodecs codec"),
    Row("factory:compact_layout", "v: raw values"),
]


def test_every_granule_file_has_a_row() -> None:
    files = {p.relative_to(GRANULES).as_posix() for p in GRANULES.rglob("*") if p.is_file()}
    files = {f for f in files if not f.endswith((".md", ".json"))}
    rows = {r.path for r in TABLE if not r.path.startswith("factory:")}
    assert files == rows, (sorted(files - rows), sorted(rows - files))
    assert {r.path.removeprefix("factory:") for r in TABLE} >= set(FACTORIES)


def _direct(path: Path, group: str, **kwargs: Any) -> xr.Dataset:
    engine = "scipy" if path.read_bytes()[:3] == b"CDF" else "h5netcdf"
    extra: dict[str, Any] = {"group": group} if group else {}
    if engine == "h5netcdf":
        extra["phony_dims"] = "access"
    with xr.open_dataset(path, engine=engine, **extra, **kwargs) as ds:
        return ds.load()


def _assert_equal(served: xr.Dataset, expected: xr.Dataset, where: str) -> None:
    missing = set(expected.variables) - set(served.variables)
    assert not missing, f"{where}: missing variables {missing}"
    for name in expected.variables:
        a, e = served[name].values, expected[name].values
        if a.dtype.kind in "OUT" and e.dtype.kind in "OUT":
            a, e = a.astype(object), e.astype(object)
        assert a.dtype == e.dtype, f"{where}: {name} dtype {a.dtype} served, {e.dtype} in the file"
        if a.dtype.kind in "mM":
            ok = np.array_equal(a.view(np.int64), e.view(np.int64))
        else:
            ok = np.array_equal(a, e, equal_nan=a.dtype.kind in "fc")
        assert ok, f"{where}: {name} values differ"


def _source_file(row: Row, tmp_path: Path) -> Path:
    if row.path.startswith("factory:"):
        name = row.path.removeprefix("factory:")
        return FACTORIES[name](tmp_path / f"{name}.nc")
    return GRANULES / row.path


@pytest.mark.parametrize("row", TABLE, ids=lambda r: r.path)
def test_fidelity_table(row: Row, make_config, arrive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = _source_file(row, tmp_path)
    config = make_config(
        source="incoming", concat_dim=row.concat_dim, group=row.group, concat_from=row.concat_from
    )
    arrive(path)
    result = refstore.sync(config)
    if row.outcome != LANDS:
        assert not result.added and not result.snapshots, "quarantined files never commit"
        (failure,) = result.quarantined
        assert failure.reason.startswith(f"{path.name}: ")
        assert row.outcome in failure.reason, failure.reason
        assert "\n" not in failure.reason and len(failure.reason) < 500
        return
    assert result.added == (path.name,), [f.reason for f in result.quarantined]
    raw = {"mask_and_scale": False, "decode_times": False}
    for source in ("repo", "export"):
        where = f"{path.name} via {source}"
        served = refstore.open_dataset(config, source=source).load()
        _assert_equal(served, _direct(path, row.group), f"{where} (decoded)")
        served_raw = refstore.open_dataset(config, source=source, **raw).load()
        _assert_equal(served_raw, _direct(path, row.group, **raw), f"{where} (raw)")


def test_both_ascat_orbits_land_in_one_store(make_config, arrive) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import ASCAT

    config = make_config(concat_dim="NUMROWS", concat_from="arrival")
    arrive(*ASCAT)
    result = refstore.sync(config)
    # Contiguous netCDF-3: one chunk per orbit, 1632 and 1584 rows; a rectilinear chunk
    # grid takes both (tests/test_layouts.py checks the values and a third orbit).
    assert result.added == tuple(p.name for p in ASCAT), [f.reason for f in result.quarantined]
    served = refstore.open_dataset(config)
    assert served.sizes["NUMROWS"] == 1632 + 1584
