"""Every real granule in tests/data either round-trips or is quarantined with a reason.

"Round-trips" means: read through the Icechunk repo and through the Parquet export, the
raw (undecoded) values equal a direct h5netcdf/scipy read, and the decoded values are
equal too, except where CF packing attributes are float32: zarr keeps attributes as
JSON, which carries no dtype, so xarray unpacks to float64 where a netCDF reader picks
float32 (values then agree to float32 precision; README "Known limits").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import refstore
from tests.conftest import ASCAT, GRANULES
from tests.helpers import assert_same_values, direct_read

REAL = sorted(p for p in GRANULES.rglob("*") if p.suffix in {".nc", ".nc4", ".h5"})
GROUPS = {"s6a_groups": "data_01"}


def _float32_packed(ds) -> set[str]:  # type: ignore[no-untyped-def]
    return {
        str(n)
        for n, v in ds.variables.items()
        if isinstance(v.encoding.get("scale_factor", v.attrs.get("scale_factor")), np.float32)
    }


def _compare(actual, expected) -> None:  # type: ignore[no-untyped-def]
    packed = _float32_packed(expected)
    exact = expected.drop_vars(sorted(packed))
    assert_same_values(actual, exact)
    for name in packed:
        a, e = actual[name], expected[name]
        if np.issubdtype(e.dtype, np.datetime64):
            diff = np.abs((a.values - e.values).astype("timedelta64[ns]").astype(np.int64))
            assert np.nanmax(diff) < 10**7, name  # < 10 ms from float32 packing
        else:
            np.testing.assert_allclose(a.values, e.values, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.relative_to(GRANULES).as_posix())
def test_real_granule_round_trips_or_is_quarantined(path: Path, make_config, arrive) -> None:
    group = GROUPS.get(path.parent.name, "")
    config = make_config(source="incoming", group=group)
    arrive(path)
    result = refstore.sync(config)
    if result.added:
        kwargs = {"group": group} if group else {}
        raw = {"mask_and_scale": False, "decode_times": False}
        assert_same_values(
            refstore.open_dataset(config, **raw).load(), direct_read([path], **kwargs, **raw)
        )
        expected = direct_read([path], **kwargs)
        _compare(refstore.open_dataset(config).load(), expected)
        _compare(refstore.open_dataset(config, source="export").load(), expected)
    else:
        (failure,) = result.quarantined
        assert failure.key == path.name
        assert failure.reason.startswith(f"{path.name}: ")
        assert "\n" not in failure.reason and len(failure.reason) < 500


def test_gamssa_is_exact_including_dtypes(make_config, arrive) -> None:
    from tests.conftest import GAMSSA

    config = make_config()
    arrive(*GAMSSA)
    refstore.sync(config)
    assert_same_values(refstore.open_dataset(config).load(), direct_read(GAMSSA))


def test_ascat_netcdf3_virtualizes_and_unequal_orbit_is_quarantined(make_config, arrive) -> None:
    config = make_config(concat_dim="NUMROWS")
    arrive(*ASCAT)
    result = refstore.sync(config)
    # NetCDF-3 classic: read through NetCDF3Parser; contiguous storage means one chunk
    # per file, so the second orbit (1584 rows, not 1632) cannot extend the chunk grid.
    assert result.added == (ASCAT[0].name,)
    (failure,) = result.quarantined
    assert "chunk shape" in failure.reason and "(1632, 42)" in failure.reason.replace(
        "[", "("
    ).replace("]", ")")
    expected = direct_read([ASCAT[0]], concat_dim="NUMROWS")
    assert_same_values(refstore.open_dataset(config).load(), expected)


def test_empty_concat_dim_is_quarantined(make_config, incoming) -> None:
    config = make_config()
    shutil.copy2(GRANULES / "synthetic_edge_cases/bes/nc4_unlimited_0.h5", incoming)
    (failure,) = refstore.sync(config).quarantined
    assert "has no steps along 'time'" in failure.reason
