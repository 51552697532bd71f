"""Uneven layouts (issue 10): rectilinear chunk grids along the concat dim, partial
boundary chunks stored natively, and the kerchunk export's refusal.

Real files (the two ASCAT netCDF-3 orbits of 1,632 and 1,584 rows), netCDF4 profile
granules written by h5netcdf with 120-profile chunks (the last one padded), real
Icechunk repositories and ledgers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import refstore
from refstore.chunkgrid import (
    RECTILINEAR,
    REGULAR,
    choose_layout,
    granule_edges,
    native_rows,
    splice_edges,
    whole_chunks_problem,
)
from refstore.errors import LayoutError, StoreError
from refstore.verify import verify
from tests.conftest import ASCAT
from tests.granule_factory import profile_granule

SIG = {"temp": {"concat_chunk": 120}, "lat": {"values": "x"}}


# -- pure planning ---------------------------------------------------------------------
def test_granule_edges() -> None:
    assert granule_edges(3495, 120) == ((120,) * 29 + (15,), True)
    assert granule_edges(240, 120) == ((120, 120), False)
    assert granule_edges(1632, 1632) == ((1632,), False)  # contiguous: one chunk
    assert granule_edges(77, 120) == ((77,), True)  # shorter than one padded chunk


def test_choose_layout() -> None:
    assert choose_layout("auto", [(240, SIG), (360, SIG)]) == RECTILINEAR  # lengths differ
    assert choose_layout("auto", [(250, SIG)]) == RECTILINEAR  # not whole chunks
    assert choose_layout("auto", [(240, SIG), (240, SIG)]) == REGULAR
    assert choose_layout("regular", [(240, SIG), (250, SIG)]) == REGULAR
    assert choose_layout("rectilinear", [(240, SIG)]) == RECTILINEAR
    problem = whole_chunks_problem(250, SIG)
    assert problem is not None and 'concat_chunks = "rectilinear"' in problem


def test_splice_edges() -> None:
    assert splice_edges((4, 6, 3), 4, (2,)) == (1, 2)
    assert splice_edges((4, 6, 3), 13, (2,)) == (3, 0)
    assert splice_edges((4, 6, 3), 0, (2,)) == (0, 3)
    with pytest.raises(StoreError, match="not on a chunk edge"):
        splice_edges((4, 6, 3), 5, (2,))


def test_native_rows() -> None:
    assert native_rows(1000, 3495, {"temp": 120, "flag": 3495}) == {"temp": (4480, 4495)}
    assert native_rows(0, 240, {"temp": 120}) == {}


# -- real stores -----------------------------------------------------------------------
def _direct(paths: list[Path], dim: str, **kwargs: Any) -> xr.Dataset:
    parts = []
    for p in paths:
        engine = "scipy" if p.read_bytes()[:3] == b"CDF" else "h5netcdf"
        with xr.open_dataset(p, engine=engine, **kwargs) as ds:
            parts.append(ds.load())
    return xr.concat(parts, dim=dim, data_vars="minimal", coords="minimal", compat="override")


def _assert_served_equal(config: Any, paths: list[Path], at: str | None = None) -> None:
    dim = config.concat_dim
    for kwargs in ({}, {"mask_and_scale": False, "decode_times": False}):
        served = refstore.open_dataset(config, at=at, **kwargs).load()
        expected = _direct(paths, dim, **kwargs)
        assert served.sizes[dim] == expected.sizes[dim]
        for name in expected.variables:
            a, e = served[name].values, expected[name].values
            assert a.dtype == e.dtype, (name, a.dtype, e.dtype)
            if a.dtype.kind in "mM":
                a, e = a.view(np.int64), e.view(np.int64)
            assert np.array_equal(a, e, equal_nan=a.dtype.kind == "f"), f"{name} differs"


def _third_orbit(path: Path) -> Path:
    """A shorter third orbit: the second one's first 1,000 rows, as netCDF-3 again."""
    with xr.open_dataset(ASCAT[1], engine="scipy", decode_cf=False) as ds:
        ds.isel(NUMROWS=slice(0, 1000)).load().to_netcdf(
            path, engine="scipy", format="NETCDF3_64BIT"
        )
    return path


def test_uneven_ascat_orbits_land_in_one_store_and_a_third_appends(  # type: ignore[no-untyped-def]
    make_config, arrive, tmp_path: Path
) -> None:
    config = make_config(concat_dim="NUMROWS", concat_from="arrival")
    arrive(*ASCAT)
    result = refstore.sync(config)
    assert result.added == tuple(p.name for p in ASCAT), [f.reason for f in result.quarantined]
    store = refstore.open_store(config)
    head = store.head()
    assert head is not None and head.layout == RECTILINEAR
    _assert_served_equal(config, list(ASCAT))

    third = _third_orbit(tmp_path / "ascat_20210614_033900_metopa_76028_eps_o_250_3202_ovw.l2.nc")
    arrive(third)
    result = refstore.sync(config)
    assert result.added == (third.name,), [f.reason for f in result.quarantined]
    _assert_served_equal(config, [*ASCAT, third])
    assert refstore.open_dataset(config).sizes["NUMROWS"] == 1632 + 1584 + 1000

    # The kerchunk export (zarr v2) cannot express it: refused, never written wrong.
    assert result.export is None
    assert not Path(config.export).exists()
    with pytest.raises(LayoutError, match="rectilinear") as err:
        refstore.open_dataset(config, source="export")
    assert "array.rectilinear_chunks" in err.value.hint


def test_regular_store_quarantines_uneven_orbits_with_the_setting_named(  # type: ignore[no-untyped-def]
    make_config, arrive
) -> None:
    config = make_config(concat_dim="NUMROWS", concat_from="arrival").replace(
        concat_chunks="regular"
    )
    arrive(*ASCAT)
    result = refstore.sync(config)
    assert result.added == (ASCAT[0].name,)
    (failure,) = result.quarantined
    assert "chunk shape" in failure.reason


def _profiles(folder: Path, spans: list[tuple[int, int]]) -> list[Path]:
    return [profile_granule(folder / f"prof_{s:06d}.nc", s, n) for s, n in spans]


def _chunk_kinds(config: Any, name: str, at: str | None = None) -> list[str]:
    import zarr

    store = refstore.open_store(config)
    session = store.session(at)
    array: Any = zarr.open_group(session.store, mode="r")[name]
    edges = array.metadata.chunk_grid.chunk_shapes[0]
    extra = [0] * (array.ndim - 1)
    kinds = [session.chunk_type(f"/{name}", [i, *extra]) for i in range(len(edges))]
    return [str(k).removeprefix("ChunkType.") for k in kinds]


def test_padded_boundary_chunks_are_native_and_the_rest_virtual(  # type: ignore[no-untyped-def]
    make_config, incoming: Path
) -> None:
    config = make_config()
    files = _profiles(incoming, [(0, 250), (1000, 360), (3000, 3495)])
    result = refstore.sync(config)
    assert len(result.added) == 3, [f.reason for f in result.quarantined]
    _assert_served_equal(config, files)
    # 250 = 120+120+10, 360 = 3x120, 3495 = 29x120 + 15: only the 10 and the 15 are native
    # (tiny native chunks are inlined in Icechunk's manifest).
    kinds = _chunk_kinds(config, "temp")
    boundary = {2, 3 + 3 + 29}
    assert all(kinds[i] in ("native", "inline") for i in boundary), kinds
    assert all(k == "virtual" for i, k in enumerate(kinds) if i not in boundary), kinds
    (commit,) = refstore.open_store(config).commits()
    natives = [p.native for p in commit.placements]
    assert natives == [
        (("flag", 240, 250), ("temp", 240, 250)),
        (),
        (("flag", 4090, 4105), ("temp", 4090, 4105)),
    ]
    report = verify(config, sample=3, seed=1)
    assert report.ok, report.mismatches
    assert report.chunks_checked == 3 + 3  # the random steps and the native chunks


def test_late_uneven_granule_goes_in_place_and_time_travel_sees_before(  # type: ignore[no-untyped-def]
    make_config, incoming: Path
) -> None:
    config = make_config()
    files = _profiles(incoming, [(0, 250), (3000, 130)])
    refstore.sync(config, tag="before")
    late = _profiles(incoming, [(1000, 77)])  # shorter than one 120-profile chunk
    result = refstore.sync(config)
    assert result.added == (late[0].name,), [f.reason for f in result.quarantined]
    _assert_served_equal(config, [files[0], late[0], files[1]])
    _assert_served_equal(config, files, at="before")
    kinds = _chunk_kinds(config, "temp")
    assert [k == "virtual" for k in kinds] == [True, True, False, False, True, False]
    # A revision re-reads the granule and rewrites its native chunk.
    profile_granule(late[0], 1000, 90)
    result = refstore.sync(config)
    assert result.added == (late[0].name,), [f.reason for f in result.quarantined]
    _assert_served_equal(config, [files[0], late[0], files[1]])
    _assert_served_equal(config, files, at="before")
    # The last granule revised shorter (2 chunks -> 1): no chunk is left past the grid.
    profile_granule(files[1], 3000, 20)
    result = refstore.sync(config)
    assert result.added == (files[1].name,), [f.reason for f in result.quarantined]
    _assert_served_equal(config, [files[0], late[0], files[1]])
    kinds = _chunk_kinds(config, "temp")
    assert [k == "virtual" for k in kinds] == [True, True, False, False, False], kinds
    assert _stored_chunks(config, "temp") == [(i, 0) for i in range(5)]


def _stored_chunks(config: Any, name: str) -> list[tuple[int, ...]]:
    import asyncio

    session = refstore.open_store(config).session()

    async def collect() -> list[tuple[int, ...]]:
        return [c async for c in session.chunk_coordinates(f"/{name}")]

    return sorted(asyncio.run(collect()))


def test_layout_is_chosen_once_for_admission_and_write(  # type: ignore[no-untyped-def]
    make_config, incoming: Path
) -> None:
    # The odd granule that makes "auto" pick rectilinear is itself quarantined (dtype):
    # the two others (same length, different chunks) are still written rectilinear.
    a = profile_granule(incoming / "a.nc", 0, 240)
    profile_granule(incoming / "b.nc", 1000, 360, dtype="f8")
    c = profile_granule(incoming / "c.nc", 2000, 240, chunk=240)
    result = refstore.sync(make_config())
    assert result.added == ("a.nc", "c.nc"), [f.reason for f in result.quarantined]
    (failure,) = result.quarantined
    assert "temp: dtype" in failure.reason
    _assert_served_equal(make_config(), [a, c])
