"""Groups (issue 10): the concat coordinate found in a parent group (TEMPO keeps
``mirror_step`` in the root and the data in ``product/``), granules never stacked in
arrival order, and a renamed copy never appended twice.

Real netCDF4 granules written by h5netcdf (tests/granule_factory.tempo_like_granule),
real Icechunk repositories, ledgers and kerchunk exports.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import refstore
from refstore.errors import ConfigError
from refstore.verify import verify
from refstore.virtualize import parent_groups
from tests.conftest import ASCAT
from tests.granule_factory import tempo_like_granule
from tests.helpers import group_read


def test_parent_groups() -> None:
    assert parent_groups("product") == [""]
    assert parent_groups("/data_01/ku/") == ["data_01", ""]
    assert parent_groups("a/b/c") == ["a/b", "a", ""]


def _assert_served(config: Any, paths: list[Path]) -> None:
    for source in ("repo", "export"):
        for kwargs in ({}, {"mask_and_scale": False, "decode_times": False}):
            served = refstore.open_dataset(config, source=source, **kwargs).load()
            expected = group_read(paths, config.group, **kwargs)
            assert served.sizes == expected.sizes
            for name in expected.variables:
                a, e = served[name], expected[name]
                assert a.dims == e.dims and a.dtype == e.dtype, (source, name)
                np.testing.assert_array_equal(a.values, e.values, err_msg=f"{source} {name}")


def test_coordinate_from_the_root_orders_a_group_from_shuffled_arrival(  # type: ignore[no-untyped-def]
    make_config,
) -> None:
    config = make_config(concat_dim="mirror_step", group="product")
    incoming = Path(config.source_url)
    # Key order is not time order: "a" is the latest scan, "c" the earliest.
    late = tempo_like_granule(incoming / "tempo_a.nc", 600)
    early = tempo_like_granule(incoming / "tempo_c.nc", 0)
    result = refstore.sync(config)
    assert sorted(result.added) == ["tempo_a.nc", "tempo_c.nc"], [
        f.reason for f in result.quarantined
    ]
    middle = tempo_like_granule(incoming / "tempo_b.nc", 300)  # arrives last, goes between
    result = refstore.sync(config)
    assert result.added == ("tempo_b.nc",), [f.reason for f in result.quarantined]
    files = [early, middle, late]
    _assert_served(config, files)
    steps = refstore.open_dataset(config).mirror_step.values
    assert np.all(steps[1:] > steps[:-1]) and steps.size == 9
    report = verify(config, sample=8, seed=3)
    assert report.ok and report.chunks_checked == 8, report.to_dict()


def test_a_renamed_copy_of_a_committed_group_granule_is_a_duplicate(  # type: ignore[no-untyped-def]
    make_config,
) -> None:
    config = make_config(concat_dim="mirror_step", group="product")
    incoming = Path(config.source_url)
    files = [tempo_like_granule(incoming / f"tempo_{s:04d}.nc", s) for s in (0, 300)]
    refstore.sync(config)
    shutil.copy2(files[0], incoming / "tempo_renamed.nc")
    result = refstore.sync(config)
    assert result.added == ()
    (failure,) = result.quarantined
    assert failure.key == "tempo_renamed.nc"
    assert "duplicate" in failure.reason and files[0].name in failure.reason
    assert refstore.open_dataset(config).sizes["mirror_step"] == 6


def test_granules_with_nothing_to_order_them_are_refused_unless_arrival_is_chosen(  # type: ignore[no-untyped-def]
    make_config, arrive
) -> None:
    config = make_config(concat_dim="mirror_step", group="product")
    incoming = Path(config.source_url)
    tempo_like_granule(incoming / "tempo_x.nc", 0, coordinate=False)
    result = refstore.sync(config)
    (failure,) = result.quarantined
    assert "no coordinate variable 'mirror_step' in group 'product' or a parent group" in (
        failure.reason
    )
    assert 'concat_from = "arrival"' in failure.reason

    # Two ASCAT orbits: NUMROWS has no coordinate anywhere; every granule, one reason:
    # a setting (exit 2), never a silent stack in arrival order.
    orbits = make_config(concat_dim="NUMROWS")
    for p in incoming.iterdir():
        p.unlink()
    arrive(*ASCAT)
    with pytest.raises(ConfigError, match="no coordinate variable 'NUMROWS' in the file"):
        refstore.sync(orbits)
    result = refstore.sync(make_config(concat_dim="NUMROWS", concat_from="arrival"))
    assert result.added == tuple(p.name for p in ASCAT), [f.reason for f in result.quarantined]


def test_real_s6a_nested_group_uses_the_parent_time(make_config, arrive) -> None:  # type: ignore[no-untyped-def]
    """S6A keeps ``time`` in ``data_01`` and the Ku-band data in ``data_01/ku``: the nested
    group's passes land ordered by the parent's time, from reversed arrival."""
    from tests.conftest import GRANULES

    passes = sorted((GRANULES / "s6a_groups").glob("*.nc"))
    config = make_config(group="data_01/ku")
    arrive(passes[1])
    result = refstore.sync(config)
    assert result.added == (passes[1].name,), [f.reason for f in result.quarantined]
    arrive(passes[0])
    result = refstore.sync(config)
    assert result.added == (passes[0].name,), [f.reason for f in result.quarantined]
    parts = []
    for p in passes:
        with xr.open_dataset(p, engine="h5netcdf", group="data_01") as parent:
            time = parent["time"].variable.load()
        with xr.open_dataset(p, engine="h5netcdf", group="data_01/ku") as ds:
            parts.append(ds.load().assign_coords(time=time))
    expected = xr.concat(parts, dim="time", data_vars="minimal", coords="minimal")
    for source in ("repo", "export"):
        served = refstore.open_dataset(config, source=source).load()
        assert served.sizes == expected.sizes
        for name in expected.variables:
            a, e = served[name], expected[name]
            assert a.dtype == e.dtype, (source, name)
            np.testing.assert_array_equal(a.values, e.values, err_msg=f"{source} {name}")
    report = verify(config, sample=6, seed=2)
    assert report.ok and report.chunks_checked == 6, report.to_dict()
