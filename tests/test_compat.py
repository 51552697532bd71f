"""Smoke tests of :mod:`refstore._compat` where it replaces a VirtualiZarr call.

``virtual_dataset`` must give what ``ManifestStore.to_virtual_dataset`` gives on real
granules, while opening only the loaded variables: a virtual variable with time units
(RSS SSMIS ``sst_dtime``) is no longer read while the granule is virtualized.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from refstore import _compat
from refstore.models import Granule
from refstore.virtualize import DatasetSpec, _only, choose_loadable, virtualize_granule
from tests.conftest import GRANULES
from tests.dmrpp_writer import write_dmrpp
from tests.servers import RangeHTTPServer

REAL = [
    ("gamssa/20241011120000-ABOM-L4_GHRSST-SSTfnd-GAMSSA_28km-GLOB-v02.0-fv01.0.nc", ""),
    ("rssmif16d/f16_ssmis_20200102v7.nc", ""),
    ("imerg/GPM_3IMERGHH_bounds.nc4", "Grid"),
    ("misc/OBP_2017_01.nc", ""),
]
RSS = "rssmif16d/f16_ssmis_20200102v7.nc"


def _store(path: Path, group: str) -> Any:
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr.parsers import HDFParser

    _compat.install()
    registry = ObjectStoreRegistry({"file://": LocalStore()})
    return HDFParser(group=group or None)(url=path.resolve().as_uri(), registry=registry)


@pytest.mark.parametrize(("rel", "group"), REAL, ids=[Path(r).name[:24] for r, _ in REAL])
def test_virtual_dataset_is_virtualizarrs_with_only_the_loaded_variables_opened(
    rel: str, group: str
) -> None:
    store = _store(GRANULES / rel, group)
    arrays = store._group.arrays
    dims = {n: tuple(a.metadata.dimension_names or ()) for n, a in arrays.items()}
    loadable = list(choose_loadable(dims, "time", None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = store.to_virtual_dataset(loadable_variables=loadable)
        ours = _compat.virtual_dataset(store._group, _only(store, loadable), loadable)
    assert set(ours.variables) == set(theirs.variables)
    assert set(ours.coords) == set(theirs.coords)
    assert ours.attrs == theirs.attrs
    for name in theirs.variables:
        a, b = ours.variables[name], theirs.variables[name]
        assert (a.dims, a.attrs, a.encoding) == (b.dims, b.attrs, b.encoding), name
        if name in loadable:
            nan = a.dtype.kind in "fc"
            assert a.dtype == b.dtype and np.array_equal(a.values, b.values, equal_nan=nan), name
        else:
            assert a.data.manifest.dict() == b.data.manifest.dict(), name


def test_a_virtual_time_units_variable_is_not_read(tmp_path: Path) -> None:
    served = tmp_path / "daac"
    served.mkdir()
    shutil.copy(GRANULES / RSS, served / Path(RSS).name)
    write_dmrpp(served / Path(RSS).name)
    name = Path(RSS).name
    with RangeHTTPServer(served) as srv:
        from refstore.sources.https import http_registry

        url = srv.url_for(name)

        class Source:
            def registry(self) -> Any:
                return http_registry([url], None)

        size = (served / name).stat().st_size
        out = virtualize_granule(
            Granule(name, url, "r", size=size), DatasetSpec("time", dmrpp="always"), Source()
        )
        assert getattr(out, "origin", out) == "dmrpp"
        st = srv.stats(name)
        # latitude, longitude and time (8.6 KB of chunks) in one read; sst_dtime's
        # chunks (4.4 KB each, past them in the file) are never asked for.
        assert st.gets == 1 and st.bytes_sent < 10_000, st.ranges
