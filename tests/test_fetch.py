"""refstore.fetch: a granule's bytes in few round trips, counted by a real loopback server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from refstore.fetch import BLOCK, HEAD, GranuleBytes
from tests.conftest import GRANULES
from tests.servers import RangeHTTPServer

GAMSSA = sorted((GRANULES / "gamssa").glob("*.nc"))[0]


def _open(srv: RangeHTTPServer) -> GranuleBytes:
    from obstore.store import HTTPStore

    store = HTTPStore.from_url(srv.base_url, client_options={"allow_http": True})
    return GranuleBytes(store, GAMSSA.name)


def test_head_misses_and_prefetch_cost_one_request_each() -> None:
    data = GAMSSA.read_bytes()
    with RangeHTTPServer(GAMSSA.parent) as srv:
        g = _open(srv)
        assert g.read_head() == data[:HEAD] and g.size == len(data)
        assert g.read(100, 5000) == data[100:5100]  # held: no request
        assert srv.stats(GAMSSA.name).requests == 1
        far = 5 * BLOCK + 10
        assert g.read(far, 20) == data[far : far + 20]  # one block miss
        ranges = [(8 * BLOCK, 10), (9 * BLOCK + 5, 10), (12 * BLOCK, 100)]
        g.prefetch(ranges)  # three runs, one coalesced get_ranges call
        assert g.calls == 3
        st = srv.stats(GAMSSA.name)
        assert st.requests == 3 and (5 * BLOCK, 6 * BLOCK) in st.ranges
        assert all(g.read(s, n) == data[s : s + n] for s, n in ranges)
        assert srv.stats(GAMSSA.name).requests == 3


def test_store_view_takes_numpy_offsets_and_reads_through_the_blocks() -> None:
    # ManifestStore passes numpy uint64 offsets; a subtraction on them wraps around.
    data = GAMSSA.read_bytes()
    with RangeHTTPServer(GAMSSA.parent) as srv:
        g = _open(srv)
        g.read_head()
        registry = g.registry(_Registry(g.store), f"{srv.base_url}/{GAMSSA.name}")
        store, path = registry.resolve(f"{srv.base_url}/{GAMSSA.name}")
        start, end = np.uint64(58422), np.uint64(76749)  # across the first two blocks
        got = asyncio.run(store.get_range_async(path, start=start, end=end))
        assert got == data[58422:76749]
        assert store.head(path)["size"] == len(data)
        assert srv.stats(GAMSSA.name).requests == 1


class _Registry:
    def __init__(self, store: object) -> None:
        self.store = store

    def resolve(self, url: str) -> tuple[object, str]:
        return self.store, Path(url).name
