#!/usr/bin/env python
"""refstore benchmarks: measured side by side in one run, printed as ratios, saved as JSON.

Not timed tests: nothing here asserts a timing. ``--quick`` (N ≤ 1,000, a few minutes)
is CI's smoke test of every path; the full run (N = 100, 1,000, 10,000) gives the figures
in docs/benchmarks.md.

    python scripts/bench.py --quick
    python scripts/bench.py                  # full: about 15 minutes on 2 cores

Figures (goals from issue 5):

P1  add 1 granule (sync + commit + export) to a store of N_max vs of N_min (≤ 1.5x), and
    vs the seed's way at N_max: re-virtualize every file and rewrite the Parquet export.
P2  granules/s: refstore serial vs a bare VirtualiZarr loop (≥ 0.9x); a local pool of 2
    vs serial (≥ 1.7x); a dask cluster of 2 workers on 127.0.0.1 vs serial.
P3  no-op sync over N known granules (< 1 s).
P4  lazy open through Icechunk and through the Parquet export (< 1 s) vs xr.open_mfdataset.
P5  peak RSS of the first sync of N granules (< 1 GiB).
IO  bytes and requests the virtualization of one real GAMSSA granule reads, by reader.
OPS ``--only cli``: whole-process CLI latencies; ``--only gc``: gc on 500 snapshots
    (scripts/bench_ops.py).
RB  request budget per remote granule (issue 13): requests, bytes and seconds per real
    NetCDF4 granule of tests/data over the loopback Range HTTP server with 30 ms per
    request, refstore vs its previous reader, VirtualiZarr's HDFParser defaults and
    kerchunk's SingleHdf5ToZarr on the same link; and a first sync's virtualization of
    copies of those files without sidecars in ``dmrpp = "auto"`` (refstore.sidecars);
    ``refstore_from_sidecar_derived``: a granule after the first of its kind, placed from
    its sidecar alone where a derivation was proved (refstore.derive); ``derived_later``:
    the third GPM IMERG half hour and RSS SSMIS day, proved on the first two.

Granules are tiny synthetic CCMP-like files (8 x 16 grid, 4 steps each, ~40 KB) written
once into ``<work>/pool`` and hard-linked into one source folder per N.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _benchutil import log, timed

ROOT = Path(__file__).resolve().parent.parent
GAMSSA = ROOT.parent / "shared" / "data" / "granules" / "gamssa"
GRANULES = ROOT / "tests" / "data" / "granules"
# Real NetCDF4 granules of different metadata layouts: (path under GRANULES, group).
REMOTE_FILES = (
    ("gamssa/20241011120000-ABOM-L4_GHRSST-SSTfnd-GAMSSA_28km-GLOB-v02.0-fv01.0.nc", ""),
    ("misc/20181231090000-JPL-L4_GHRSST-SSTfnd-MUR25-GLOB-v02.0-fv04.2.nc", ""),
    ("rssmif16d/f16_ssmis_20200102v7.nc", ""),
    ("imerg/GPM_3IMERGHH_bounds.nc4", "Grid"),
)
LATENCY = 0.030  # seconds per request: a DAAC seen from outside its region
SIZES: dict[str, int] = {}  # url -> size, as a source's listing gives it
# url -> where the previous granule of its collection kept its coordinates (a sync keeps
# it in the ledger); here the file's own, as for GAMSSA's two days (equal offsets).
HINTS: dict[str, tuple[tuple[int, int], ...]] = {}
# url -> derivations proved on the file's own values (refstore.derive; a sync proves them
# on the first granule of the collection and keeps them in the ledger).
PROOFS: dict[str, tuple[str, ...]] = {}
GRID = {"nlat": 8, "nlon": 16}
START = dt.datetime(1990, 1, 1)
EXTRA = 4  # granules beyond N_max: the ones P1 adds
REPEAT = 3


# -- data -------------------------------------------------------------------------------
def ensure_pool(work: Path, n: int) -> list[Path]:
    """``n`` consecutive granules in ``work/pool`` (written once, reused by later runs)."""
    from refstore.synthetic import write_ccmp_like_series

    pool = work / "pool"
    have = sorted(pool.glob("*.nc")) if pool.exists() else []
    if len(have) < n:
        log(f"writing {n - len(have)} synthetic granules into {pool}")
        start = START + dt.timedelta(days=len(have))
        write_ccmp_like_series(pool, start, n - len(have), steps_per_file=4, **GRID)
        have = sorted(pool.glob("*.nc"))
    # An archive's granules are old: a listing trusts them by inode (refstore.sources.
    # listing_cache) as it would in production, instead of stat'ing files just written.
    old = time.time() - 7 * 86400
    for f in have[:n]:
        if f.stat().st_mtime > old:
            os.utime(f, (old, old))
    return have[:n]


def link_source(files: Sequence[Path], folder: Path) -> None:
    """Hard links (not symlinks: granule URLs must stay under the source folder)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in files:
        os.link(f, folder / f.name)


def make_config(state: Path, source: Path, **extra: Any) -> Any:
    from refstore.config import load_config

    overrides = {
        "concat_dim": "time",
        "source_url": str(source),
        "repo": str(state / "repo"),
        "ledger": str(state / "ledger.db"),
        "export": str(state / "export" / "refs.parquet"),
        **extra,
    }
    return load_config(None, overrides=overrides, environ={})


def write_toml(state: Path, source: Path) -> Path:
    from refstore.config import render_toml

    state.mkdir(parents=True, exist_ok=True)
    path = state / "refstore.toml"
    path.write_text(
        render_toml(
            source_url=str(source),
            repo=str(state / "repo"),
            ledger=str(state / "ledger.db"),
            export=str(state / "export" / "refs.parquet"),
        )
    )
    return path


# -- P5: first sync in a subprocess, RSS sampled over the process tree --------------------
@contextmanager
def rss_sampler(pid: int) -> Iterator[dict[str, int]]:
    import psutil

    peak = {"main": 0, "tree": 0}
    stop = threading.Event()

    def sample() -> None:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                main = proc.memory_info().rss
                kids = sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                kids = 0
                if not proc.is_running():
                    break
                continue
            peak["main"] = max(peak["main"], main)
            peak["tree"] = max(peak["tree"], main + kids)
            stop.wait(0.5)  # /proc walks are not free: sample twice a second

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def first_sync(state: Path, source: Path, batch_size: int) -> dict[str, Any]:
    toml = write_toml(state, source)
    cmd = [
        sys.executable,
        "-m",
        "refstore",
        "sync",
        "--config",
        str(toml),
        "--json",
        "--no-progress",
        "--executor",
        "processes",
        "--workers",
        "2",
        "--batch-size",
        str(batch_size),
    ]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with rss_sampler(proc.pid) as peak:
        out, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"first sync failed:\n{err}")
    result = json.loads(out)
    return {
        "seconds": wall,
        "added": len(result["added"]),
        "snapshots": len(result["snapshots"]),
        "timings": result["timings"],
        "peak_rss_main_mib": peak["main"] / 2**20,
        "peak_rss_tree_mib": peak["tree"] / 2**20,
    }


# -- P1 / P3: in-process syncs (imports warm, as in a long-running service) ---------------
def incremental(config: Any, source: Path, extra: Sequence[Path]) -> dict[str, Any]:
    from refstore.sync import sync

    runs = []
    for f in extra[:REPEAT]:
        os.link(f, source / f.name)
        seconds, result = timed(lambda: sync(config))
        assert len(result.added) == 1, result
        runs.append({"seconds": seconds, **{k: round(v, 4) for k, v in result.timings.items()}})
    return {"median_s": statistics.median(r["seconds"] for r in runs), "runs": runs}


def noop(config: Any) -> dict[str, Any]:
    from refstore.sync import sync

    runs = []
    for _ in range(REPEAT):
        seconds, result = timed(lambda: sync(config))
        assert result.up_to_date and not result.snapshots
        runs.append({"seconds": seconds, **{k: round(v, 4) for k, v in result.timings.items()}})
    return {"median_s": statistics.median(r["seconds"] for r in runs), "runs": runs}


# -- P4: lazy opens ---------------------------------------------------------------------
def lazy_opens(config: Any, files: Sequence[Path], mfdataset: bool) -> dict[str, Any]:
    import xarray as xr

    from refstore.api import open_dataset, open_export

    out: dict[str, Any] = {}
    icechunk_s = [timed(lambda: open_dataset(config))[0] for _ in range(REPEAT)]
    export_s = [timed(lambda: open_export(config.export))[0] for _ in range(REPEAT)]
    out["icechunk_s"] = statistics.median(icechunk_s)
    out["parquet_s"] = statistics.median(export_s)
    if mfdataset:
        seconds, ds = timed(
            lambda: xr.open_mfdataset(
                [str(f) for f in files],
                engine="h5netcdf",
                combine="nested",
                concat_dim="time",
                data_vars="minimal",
                coords="minimal",
                compat="override",
                join="override",
                parallel=False,
            )
        )
        ds.close()
        out["open_mfdataset_s"] = seconds
    return out


# -- P1 seed's way: re-virtualize everything, rewrite the kerchunk Parquet ----------------
def _bare_one(url: str) -> Any:
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    return open_virtual_dataset(
        url,
        registry=registry,
        parser=HDFParser(),
        loadable_variables=["time", "latitude", "longitude"],
    )


def seed_way(files: Sequence[Path], out: Path) -> dict[str, Any]:
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    import xarray as xr

    urls = [f.resolve().as_uri() for f in files]
    t = time.perf_counter()
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        datasets = list(pool.map(_bare_one, urls, chunksize=16))
    virtualize = time.perf_counter() - t
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        combined = xr.concat(
            datasets,
            dim="time",
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="override",
            combine_attrs="override",
        )
        shutil.rmtree(out, ignore_errors=True)
        combined.vz.to_kerchunk(str(out), format="parquet")
    export = time.perf_counter() - t
    return {"seconds": virtualize + export, "virtualize_s": virtualize, "export_s": export}


# -- P2: throughput ---------------------------------------------------------------------
def throughput(files: Sequence[Path], folder: Path) -> dict[str, Any]:
    import warnings

    from distributed import LocalCluster

    from refstore.executors import DaskExecutor, PoolExecutor, SerialExecutor
    from refstore.models import Failure
    from refstore.sources.local import LocalSource
    from refstore.virtualize import DatasetSpec

    link_source(files, folder)
    source = LocalSource(str(folder))
    granules = list(source.discover())
    spec = DatasetSpec(concat_dim="time")
    n = len(granules)
    out: dict[str, Any] = {"granules": n}

    def rate(fn: Callable[[], Any]) -> float:
        seconds, results = timed(fn)
        bad = [r for r in results if isinstance(r, Failure)]
        assert not bad, bad[:1]
        return n / seconds

    urls = [g.url for g in granules]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _bare_one(urls[0])  # warm imports for both in-process loops
        out["bare_virtualizarr_per_s"] = rate(lambda: [_bare_one(u) for u in urls])
    ignore = lambda _r: None  # noqa: E731
    serial = SerialExecutor()
    out["serial_per_s"] = rate(lambda: serial.map(granules, spec, source, ignore))
    with PoolExecutor(2) as pool:
        cold, _ = timed(lambda: pool.map(granules[:2], spec, source, ignore))
        out["pool_start_s"] = cold
        out["pool2_per_s"] = rate(lambda: pool.map(granules, spec, source, ignore))
    with (
        LocalCluster(
            host="127.0.0.1",
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        DaskExecutor(cluster.scheduler_address, None) as dask,
    ):
        dask.map(granules[:4], spec, source, ignore)
        out["dask2_per_s"] = rate(lambda: dask.map(granules, spec, source, ignore))
    return out


# -- IO: bytes and requests for one real granule -----------------------------------------
def granule_io() -> dict[str, Any]:
    import warnings

    import h5py
    from obspec_utils.readers import BlockStoreReader, EagerStoreReader
    from obspec_utils.registry import ObjectStoreRegistry
    from obspec_utils.wrappers import RequestTrace, TracingReadableStore
    from obstore.store import LocalStore
    from virtualizarr.parsers import HDFParser

    from refstore.virtualize import choose_loadable

    files = sorted(GAMSSA.glob("*.nc"))
    if not files:
        return {"skipped": f"no granule in {GAMSSA}"}
    path = files[0]
    size = path.stat().st_size
    data = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                data.__setitem__(name, obj.id.get_storage_size())
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    loadable = {k: v for k, v in data.items() if k in ("time", "lat", "lon")}
    out: dict[str, Any] = {
        "file": path.name,
        "file_bytes": size,
        "chunk_bytes": sum(data.values()),
        "metadata_floor_bytes": size - sum(data.values()),
        "loadable_data_bytes": sum(loadable.values()),
        "readers": {},
    }

    def traced() -> tuple[Any, Any]:
        trace = RequestTrace()
        return trace, ObjectStoreRegistry({"file://": TracingReadableStore(LocalStore(), trace)})

    # refstore reads with VirtualiZarr's default reader, plus one 8-byte request at
    # offset 0 to tell HDF5 from NetCDF-3 (obstore's functional API, so not traceable
    # through the wrapper store: counted here by construction).
    out["refstore_format_sniff"] = {"bytes": 8, "requests": 1}
    url = path.resolve().as_uri()
    readers = {
        "block_1MiB (VirtualiZarr default)": lambda s, p: BlockStoreReader(s, p),
        "block_256KiB": lambda s, p: BlockStoreReader(s, p, block_size=256 * 1024),
        "block_64KiB": lambda s, p: BlockStoreReader(s, p, block_size=64 * 1024),
        "block_16KiB": lambda s, p: BlockStoreReader(s, p, block_size=16 * 1024),
        "eager_whole_file": lambda s, p: EagerStoreReader(s, p),
    }
    for name, factory in readers.items():
        trace, registry = traced()

        def parse(factory: Any = factory, registry: Any = registry) -> Any:
            store = HDFParser(reader_factory=factory)(url=url, registry=registry)
            dims = {
                n: tuple(a.metadata.dimension_names or ()) for n, a in store._group.arrays.items()
            }
            loadable = list(choose_loadable(dims, "time", None))
            return store.to_virtual_dataset(loadable_variables=loadable).load()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds, _ = timed(parse)
        out["readers"][name] = {
            "bytes": int(trace.total_bytes),
            "requests": trace.total_requests,
            "seconds": seconds,
        }
    return out


# -- RB: request budget per remote granule --------------------------------------------
class _Registry:
    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def registry(self) -> Any:
        return self._registry


def _readers() -> dict[str, Callable[[str, str, Any], Any]]:
    """Ways to virtualize one granule at ``url``; each loads the coordinates too."""
    import fsspec
    import obstore
    from kerchunk.hdf import SingleHdf5ToZarr
    from virtualizarr.parsers import HDFParser

    from refstore.models import Granule
    from refstore.virtualize import DatasetSpec, _small_blocks, choose_loadable, virtualize_granule

    def vz(parser: Any, url: str, registry: Any) -> Any:
        store = parser(url=url, registry=registry)
        dims = {n: tuple(a.metadata.dimension_names or ()) for n, a in store._group.arrays.items()}
        loadable = list(choose_loadable(dims, "time", None))
        ds = store.to_virtual_dataset(loadable_variables=loadable)
        return ds.load(), store

    def refstore(
        dmrpp: str, hinted: bool = False, proved: bool = False
    ) -> Callable[[str, str, Any], Any]:
        def run(url: str, group: str, registry: Any) -> Any:
            from refstore import derive

            hint = HINTS.get(url, ()) if hinted else ()
            proofs = PROOFS.get(url, ()) if proved else ()
            spec = DatasetSpec("time", group=group, dmrpp=dmrpp, coord_hint=hint, proofs=proofs)
            # The size comes with the listing in a sync (HEAD, S3 list, CMR): not counted here.
            granule = Granule(url, url, "r", size=SIZES.get(url))
            every, derive.CHECK_EVERY = derive.CHECK_EVERY, 2**62  # the 24 in 25 not sampled
            try:
                out = virtualize_granule(granule, spec, _Registry(registry))
            finally:
                derive.CHECK_EVERY = every
            if not hasattr(out, "dataset"):
                raise RuntimeError(out.reason)
            if dmrpp == "always" and out.origin != "dmrpp":
                raise RuntimeError(f"not from the sidecar: {out.note}")
            return out

        return run

    def refstore_before(url: str, group: str, registry: Any) -> Any:
        # main before issue 13: an 8-byte sniff, 64 KiB blocks, then the raw open again.
        import xarray as xr

        store, path = registry.resolve(url)
        obstore.get_range(store, path, start=0, length=8)
        ds, ms = vz(HDFParser(group=group or None, reader_factory=_small_blocks), url, registry)
        loaded = [str(n) for n, v in ds.variables.items() if not hasattr(v.data, "manifest")]
        raw = xr.open_zarr(ms, decode_cf=False, consolidated=False, chunks=None)
        return raw[loaded].load()

    def hdfparser_defaults(url: str, group: str, registry: Any) -> Any:
        return vz(HDFParser(group=group or None), url, registry)

    def kerchunk(url: str, group: str, registry: Any) -> Any:
        with fsspec.open(url, "rb") as f:
            return SingleHdf5ToZarr(f, url).translate()

    return {
        "refstore": refstore("never"),
        "refstore_auto_no_sidecar": refstore("auto"),
        "refstore_from_sidecar": refstore("always"),
        "refstore_from_sidecar_hinted": refstore("always", hinted=True),
        "refstore_from_sidecar_derived": refstore("always", proved=True),
        "refstore_before (64 KiB blocks)": refstore_before,
        "virtualizarr_hdfparser_defaults": hdfparser_defaults,
        "kerchunk_singlehdf5tozarr": kerchunk,
    }


def request_budget(latency: float = LATENCY, repeat: int = REPEAT) -> dict[str, Any]:
    """Requests, bytes and seconds per granule over a loopback link with ``latency``
    (seconds: the best of ``repeat`` runs, each reader in turn, against CPU noise)."""
    import warnings

    sys.path.insert(0, str(ROOT))
    import tempfile

    from tests.dmrpp_writer import write_dmrpp
    from tests.servers import RangeHTTPServer

    from refstore.sources.https import http_registry

    out: dict[str, Any] = {"latency_s": latency, "files": {}, "per_reader": {}}
    readers = _readers()
    # The same real files twice: plain, and with a sidecar each (tests/dmrpp_writer.py).
    served = Path(tempfile.mkdtemp(prefix="refstore-budget-"))
    warm_rel = "gamssa/20241012120000-ABOM-L4_GHRSST-SSTfnd-GAMSSA_28km-GLOB-v02.0-fv01.0.nc"
    for rel, group in ((warm_rel, ""), *REMOTE_FILES):
        for folder in ("plain", "sidecars"):
            (served / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(GRANULES / rel, served / folder / rel)
        write_dmrpp(served / "sidecars" / rel, group)

    def folder_of(name: str) -> str:
        return "sidecars" if name.startswith("refstore_from_sidecar") else "plain"

    with RangeHTTPServer(served, latency=latency) as srv, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in readers.items():  # imports and first-call costs out of the figures
            warm = srv.url_for(f"{folder_of(name)}/{warm_rel}")
            SIZES[warm] = (GRANULES / warm_rel).stat().st_size
            fn(warm, "", http_registry([warm], None))
        for rel, group in REMOTE_FILES:
            row: dict[str, Any] = {"bytes": (GRANULES / rel).stat().st_size}
            hinted = srv.url_for(f"sidecars/{rel}")
            SIZES[hinted] = row["bytes"]
            built = readers["refstore_from_sidecar"](hinted, group, http_registry([hinted], None))
            HINTS[hinted] = built.coord_ranges
            PROOFS[hinted] = (built.proof,) if built.proof else ()
            for name, fn in readers.items():
                path = f"{folder_of(name)}/{rel}"
                url = srv.url_for(path)
                SIZES[url] = (GRANULES / rel).stat().st_size  # a fresh client each run (below)
                times = []
                for _ in range(repeat):
                    registry = http_registry([url], None)
                    srv.reset_stats()
                    seconds, _ = timed(
                        lambda fn=fn, url=url, group=group, reg=registry: fn(url, group, reg)
                    )
                    times.append(seconds)
                seconds = min(times)
                st, side = srv.stats(path), srv.stats(f"{path}.dmrpp")
                row[name] = {
                    "requests": st.requests + side.requests,
                    "granule_requests": st.requests,
                    "bytes": st.bytes_sent + side.bytes_sent,
                    "granule_bytes": st.bytes_sent,
                    "seconds": round(seconds, 3),
                }
            out["files"][Path(rel).name] = row
    shutil.rmtree(served, ignore_errors=True)
    for name in readers:
        rows = [r[name] for r in out["files"].values()]
        out["per_reader"][name] = {
            "requests_max": max(r["requests"] for r in rows),
            "requests_mean": round(statistics.mean(r["requests"] for r in rows), 2),
            "bytes_mean": round(statistics.mean(r["bytes"] for r in rows)),
            "seconds_total": round(sum(r["seconds"] for r in rows), 3),
        }
    base = out["per_reader"]["virtualizarr_hdfparser_defaults"]["seconds_total"]
    for agg in out["per_reader"].values():
        agg["speedup_vs_hdfparser_defaults"] = ratio(base, agg["seconds_total"])
    return out


def derived_later(latency: float = LATENCY, repeat: int = REPEAT) -> dict[str, Any]:
    """The last of 3 granules of GPM IMERG (half hours, time from the file name) and RSS
    SSMIS (days, uncompressed lat/lon), copies of the real files moved in time
    (``tests/granule_factory.py``), over the same link: from its sidecar, hinted, and
    with what a sync knows by then (the derivations and hint of the first two; sampling
    off). A derivation proved on the file itself (``request_budget``) cannot show these:
    IMERG's rule needs a dated file name, RSS's repeated raw times a second day."""
    import tempfile
    import warnings
    from datetime import date

    sys.path.insert(0, str(ROOT))
    from tests.dmrpp_writer import write_dmrpp
    from tests.granule_factory import imerg_half_hour, rss_day
    from tests.servers import RangeHTTPServer

    from refstore import derive
    from refstore.models import Granule
    from refstore.sources.https import http_registry
    from refstore.virtualize import DatasetSpec, virtualize_granule

    served = Path(tempfile.mkdtemp(prefix="refstore-derived-"))
    noon = dt.datetime(2020, 1, 1, 12)
    kinds = {
        "GPM IMERG HH": (
            [imerg_half_hour(served, noon + dt.timedelta(minutes=30 * i)) for i in range(3)],
            "Grid",
        ),
        "RSS SSMIS f16": (
            [rss_day(served, date(2020, 1, 2) + dt.timedelta(days=i)) for i in range(3)],
            "",
        ),
    }
    for files, group in kinds.values():
        for f in files:
            write_dmrpp(f, group)
    out: dict[str, Any] = {"latency_s": latency}
    every, derive.CHECK_EVERY = derive.CHECK_EVERY, 2**62  # the 24 in 25 not sampled
    try:
        with RangeHTTPServer(served, latency=latency) as srv, warnings.catch_warnings():
            warnings.simplefilter("ignore")

            def build(f: Path, group: str, **kw: Any) -> Any:
                url = srv.url_for(f.name)
                granule = Granule(url, url, "r", size=f.stat().st_size)
                spec = DatasetSpec("time", group=group, dmrpp="always", **kw)
                return virtualize_granule(granule, spec, _Registry(http_registry([url], None)))

            for kind, (files, group) in kinds.items():
                proofs: dict[str, str] = {}
                hint: tuple[tuple[int, int], ...] = ()
                for f in files[:-1]:  # as a sync keeps them (refstore.sync._learn_proofs)
                    vg = build(f, group, proofs=tuple(proofs.values()), coord_hint=hint)
                    hint = vg.coord_ranges or hint
                    made = derive.Proof.from_json(vg.proof) if vg.proof else None
                    if made is not None and (made.key not in proofs or made.confirmed):
                        proofs[made.key] = vg.proof
                last, row = files[-1], {}
                ways = {
                    "from_sidecar": {},
                    "from_sidecar_hinted": {"coord_hint": hint},
                    "from_sidecar_derivation_proved": {
                        "coord_hint": hint,
                        "proofs": tuple(proofs.values()),
                    },
                }
                for name, kw in ways.items():
                    times = []
                    for _ in range(repeat):
                        srv.reset_stats()
                        seconds, vg = timed(lambda f=last, g=group, kw=kw: build(f, g, **kw))
                        times.append(seconds)
                    st, side = srv.stats(last.name), srv.stats(f"{last.name}.dmrpp")
                    row[name] = {
                        "requests": st.requests + side.requests,
                        "granule_requests": st.requests,
                        "granule_bytes": st.bytes_sent,
                        "sidecar_bytes": side.bytes_sent,
                        "seconds": round(min(times), 3),
                        "derived": bool(vg.derived),
                    }
                out[kind] = row
    finally:
        derive.CHECK_EVERY = every
        shutil.rmtree(served, ignore_errors=True)
    return out


def auto_sequence(latency: float = LATENCY, copies: int = 5, repeat: int = 2) -> dict[str, Any]:
    """A first sync's virtualization of ``copies`` x the RB files, no sidecar published,
    over the same link: ``dmrpp = "auto"`` as a sync runs it (refstore.sidecars: looks for
    ``<url>.dmrpp`` until 3 misses in a row), looking on every granule (before), and
    VirtualiZarr's HDFParser defaults. Each pass starts with no memory; seconds are the
    best of ``repeat`` passes (CPU noise), counts are one pass's."""
    import tempfile
    import warnings

    sys.path.insert(0, str(ROOT))
    from tests.servers import RangeHTTPServer
    from virtualizarr.parsers import HDFParser

    from refstore import sidecars
    from refstore.models import Granule
    from refstore.sources.https import http_registry
    from refstore.virtualize import DatasetSpec, choose_loadable, virtualize_granule

    served = Path(tempfile.mkdtemp(prefix="refstore-auto-"))
    rels: list[tuple[str, str]] = []
    for k in range(copies):
        for rel, group in REMOTE_FILES:
            target = served / f"c{k}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(GRANULES / rel, target)
            rels.append((f"c{k}/{rel}", group))
    out: dict[str, Any] = {"latency_s": latency, "granules": len(rels)}

    def one(url: str, group: str, mode: str, registry: Any) -> Any:
        size = (served / url.split("/", 3)[3]).stat().st_size
        r = virtualize_granule(
            Granule(url, url, "r", size=size), DatasetSpec("time", group=group, dmrpp=mode),
            _Registry(registry),
        )  # fmt: skip
        if not hasattr(r, "dataset"):
            raise RuntimeError(r.reason)
        return r

    with RangeHTTPServer(served, latency=latency) as srv, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        urls = [srv.url_for(rel) for rel, _ in rels]
        groups = {u: g for u, (_, g) in zip(urls, rels, strict=True)}

        def remembered(registry: Any) -> None:
            def run(subset: Sequence[Granule], look: bool, _expected: bool) -> list[Any]:
                mode = "auto" if look else "never"
                return [one(g.url, groups[g.url], mode, registry) for g in subset]

            granules = [Granule(u, u, "r") for u in urls]
            sidecars.virtualize_looking(granules, sidecars.Memory(), run)

        def every(registry: Any) -> None:
            for u in urls:
                one(u, groups[u], "auto", registry)

        def hdfparser(registry: Any) -> None:
            for u in urls:
                store = HDFParser(group=groups[u] or None)(url=u, registry=registry)
                arrays = store._group.arrays
                dims = {n: tuple(a.metadata.dimension_names or ()) for n, a in arrays.items()}
                loadable = list(choose_loadable(dims, "time", None))
                store.to_virtual_dataset(loadable_variables=loadable).load()

        one(urls[0], groups[urls[0]], "never", http_registry(urls, None))  # warm imports
        for name, fn in (
            ("refstore_auto", remembered),
            ("refstore_auto_looking_every_granule", every),
            ("virtualizarr_hdfparser_defaults", hdfparser),
        ):
            times = []
            for _ in range(repeat):
                registry = http_registry(urls, None)
                srv.reset_stats()
                times.append(timed(lambda fn=fn, registry=registry: fn(registry))[0])
            seconds = min(times)
            stats = srv.all_stats()
            out[name] = {
                "seconds": round(seconds, 3),
                "requests": sum(st.requests for st in stats.values()),
                "sidecar_404s": sum(
                    st.statuses[404] for p, st in stats.items() if str(p).endswith(".dmrpp")
                ),
            }
    shutil.rmtree(served, ignore_errors=True)
    base = out["virtualizarr_hdfparser_defaults"]["seconds"]
    for name in ("refstore_auto", "refstore_auto_looking_every_granule"):
        out[name]["speedup_vs_hdfparser_defaults"] = ratio(base, out[name]["seconds"])
    return out


# -- the run ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import psutil

    pkgs = [
        "refstore",
        "icechunk",
        "virtualizarr",
        "zarr",
        "xarray",
        "dask",
        "distributed",
        "obstore",
        "obspec-utils",
        "kerchunk",
        "fastparquet",
        "h5py",
        "numpy",
    ]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": {p: version(p) for p in pkgs},
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N ≤ 1,000: CI smoke run.")
    parser.add_argument("--sizes", type=int, nargs="+", help="Store sizes (default by mode).")
    parser.add_argument("--out", type=Path, default=ROOT / "state" / "bench")
    parser.add_argument("--work", type=Path, help="Scratch folder (default <out>/work).")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--only", choices=("cli", "gc"), help="Only the operations section (bench_ops.py)."
    )
    parser.add_argument("--granules", type=int, default=10_000, help="Store size for --only cli.")
    parser.add_argument("--snapshots", type=int, default=500, help="Snapshots for --only gc.")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="--only cli: also time another checkout's src (e.g. main), runs interleaved.",
    )
    parser.add_argument(
        "--budget-only", action="store_true", help="Only the request budget (RB); JSON to --out."
    )
    args = parser.parse_args(argv)
    if args.budget_only:
        rb = request_budget()
        log("first sync's virtualization, no sidecar published, dmrpp = auto")
        rb["auto_sequence"] = auto_sequence(repeat=3)
        log("later IMERG and RSS SSMIS granules, derivations proved on earlier ones")
        rb["derived_later"] = derived_later()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "latest-budget.json").write_text(json.dumps(rb, indent=2))
        print_budget(rb)
        return 0
    import icechunk

    icechunk.set_logs_filter("error")
    if args.only:
        import bench_ops

        bench_ops.run(
            args.only,
            args.work or args.out / "work",
            args.out,
            args.granules,
            args.snapshots,
            args.baseline_src,
        )
        return 0
    sizes = sorted(args.sizes or ((100, 500) if args.quick else (100, 1000, 10_000)))
    n_max, n_min = sizes[-1], sizes[0]
    work = args.work or args.out / "work"
    files = ensure_pool(work, n_max + EXTRA)
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "sizes": sizes,
        "per_size": {},
    }
    for n in sizes:
        log(f"N={n}: first sync")
        source, state = work / f"src{n}", work / f"state{n}"
        link_source(files[:n], source)
        shutil.rmtree(state, ignore_errors=True)
        row: dict[str, Any] = {"first_sync": first_sync(state, source, args.batch_size)}
        config = make_config(state, source)
        log(f"N={n}: no-op sync, lazy opens")
        row["noop"] = noop(config)
        row["open"] = lazy_opens(config, files[:n], mfdataset=True)
        log(f"N={n}: incremental syncs")
        row["add_one"] = incremental(config, source, files[n : n + EXTRA])
        report["per_size"][str(n)] = row
    log(f"seed's way at N={n_max + 1}")
    report["seed_way"] = seed_way(files[: n_max + 1], work / "seed" / "refs.parquet")
    log("throughput")
    report["throughput"] = throughput(files[: 60 if args.quick else 200], work / "tput")
    log("bytes and requests of one GAMSSA granule")
    report["granule_io"] = granule_io()
    log(f"request budget per remote granule ({LATENCY * 1000:.0f} ms per request)")
    report["request_budget"] = request_budget(repeat=2 if args.quick else REPEAT)
    log("first sync's virtualization, no sidecar published, dmrpp = auto")
    report["request_budget"]["auto_sequence"] = auto_sequence(
        copies=1 if args.quick else 5, repeat=1 if args.quick else 3
    )
    report["request_budget"]["derived_later"] = derived_later(repeat=2 if args.quick else REPEAT)
    big, small = report["per_size"][str(n_max)], report["per_size"][str(n_min)]
    tp = report["throughput"]
    report["figures"] = {
        "P1_add_one_big_vs_small": ratio(big["add_one"]["median_s"], small["add_one"]["median_s"]),
        "P1_seed_vs_refstore_at_big": ratio(
            report["seed_way"]["seconds"], big["add_one"]["median_s"]
        ),
        "P1_commit_big_vs_small": ratio(_median_of(big, "commit"), _median_of(small, "commit")),
        "P1_discover_big_vs_small": ratio(
            _median_of(big, "discover"), _median_of(small, "discover")
        ),
        "P2_serial_vs_bare": ratio(tp["serial_per_s"], tp["bare_virtualizarr_per_s"]),
        "P2_pool2_vs_serial": ratio(tp["pool2_per_s"], tp["serial_per_s"]),
        "P2_dask2_vs_serial": ratio(tp["dask2_per_s"], tp["serial_per_s"]),
        "P3_noop_s_at_big": round(big["noop"]["median_s"], 3),
        "P4_icechunk_open_s_at_big": round(big["open"]["icechunk_s"], 3),
        "P4_parquet_open_s_at_big": round(big["open"]["parquet_s"], 3),
        "P4_mfdataset_vs_icechunk_at_big": ratio(
            big["open"]["open_mfdataset_s"], big["open"]["icechunk_s"]
        ),
        "P5_peak_rss_mib_at_big": round(big["first_sync"]["peak_rss_main_mib"], 1),
        "P5_peak_rss_tree_mib_at_big": round(big["first_sync"]["peak_rss_tree_mib"], 1),
        "RB_requests_max_refstore": report["request_budget"]["per_reader"]["refstore"][
            "requests_max"
        ],
        "RB_refstore_speedup_vs_hdfparser": report["request_budget"]["per_reader"]["refstore"][
            "speedup_vs_hdfparser_defaults"
        ],
        "RB_auto_first_sync_speedup_vs_hdfparser": report["request_budget"]["auto_sequence"][
            "refstore_auto"
        ]["speedup_vs_hdfparser_defaults"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    text = json.dumps(report, indent=2, default=str)
    (args.out / f"bench-{report['mode']}-{stamp}.json").write_text(text)
    (args.out / f"latest-{report['mode']}.json").write_text(text)
    print_summary(report)
    return 0


def _median_of(row: dict[str, Any], step: str) -> float:
    """Median seconds of one step (``commit``, ``discover``...) over the +1 runs."""
    return statistics.median(r.get(step, 0.0) for r in row["add_one"]["runs"])


def print_summary(report: dict[str, Any]) -> None:
    print(f"refstore benchmark ({report['mode']}), sizes {report['sizes']}")
    print(
        f"{'N':>7} {'first sync s':>12} {'RSS MiB':>8} {'no-op s':>8} {'+1 s':>7} "
        f"{'open ic s':>9} {'open pq s':>9} {'mfdataset s':>11}"
    )
    for n, row in report["per_size"].items():
        fs, op = row["first_sync"], row["open"]
        print(
            f"{n:>7} {fs['seconds']:>12.2f} {fs['peak_rss_main_mib']:>8.0f} "
            f"{row['noop']['median_s']:>8.3f} {row['add_one']['median_s']:>7.3f} "
            f"{op['icechunk_s']:>9.3f} {op['parquet_s']:>9.3f} {op['open_mfdataset_s']:>11.2f}"
        )
    for name, value in report["figures"].items():
        print(f"  {name:<36} {value}")
    io = report["granule_io"]
    for name, r in io.get("readers", {}).items():
        print(f"  IO {name:<34} {r['bytes']:>9} B in {r['requests']} request(s)")
    print_budget(report["request_budget"])


def print_budget(rb: dict[str, Any]) -> None:
    print(f"request budget per granule, {rb['latency_s'] * 1000:.0f} ms per request")
    for fname, row in rb["files"].items():
        print(f"  {fname} ({row['bytes']} B)")
        for name, r in row.items():
            if name != "bytes":
                req, size, sec = r["requests"], r["bytes"], r["seconds"]
                own = f"(granule: {r['granule_requests']} req {r['granule_bytes']} B)"
                print(f"    {name:<34} {req:>3} req {size:>9} B {sec:>7.3f} s {own}")
    for name, agg in rb["per_reader"].items():
        print(
            f"  {name:<34} max {agg['requests_max']} req, {agg['seconds_total']:.3f} s for all, "
            f"{agg['speedup_vs_hdfparser_defaults']}x vs HDFParser defaults"
        )
    later = rb.get("derived_later", {})
    for kind, row in later.items():
        if isinstance(row, dict):
            print(f"  the third {kind} granule, the first two proved")
            for name, r in row.items():
                print(
                    f"    {name:<34} {r['requests']:>3} req, {r['granule_bytes']:>6} B of the "
                    f"granule, {r['seconds']:.3f} s{' (derived)' if r['derived'] else ''}"
                )
    seq = rb.get("auto_sequence")
    if seq:
        print(f"first sync of {seq['granules']} granules without sidecars (virtualization only)")
        for name, r in seq.items():
            if isinstance(r, dict):
                vs = r.get("speedup_vs_hdfparser_defaults", 1.0)
                print(
                    f"  {name:<40} {r['seconds']:>7.3f} s {r['requests']:>4} req "
                    f"({r['sidecar_404s']} sidecar 404s), {vs}x vs HDFParser defaults"
                )


if __name__ == "__main__":
    sys.exit(main())
