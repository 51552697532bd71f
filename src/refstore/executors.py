"""Where virtualization runs: in-process, a local process pool, or a dask cluster.

Workers only read granules and return :class:`VirtualGranule`s or :class:`Failure`s;
the main process alone writes the ledger and the repository. Process pools use the
``forkserver`` start method: forking after obstore started its runtime deadlocks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from refstore.errors import ConfigError
from refstore.models import Failure, Granule
from refstore.virtualize import DatasetSpec, VirtualGranule, virtualize_granule

__all__ = ["Result", "choose_executor", "virtualize_all"]

type Result = VirtualGranule | Failure
type OnDone = Callable[[Result], None]

# Below this many granules a pool costs more to start than it saves.
_MIN_FOR_POOL = 4


def choose_executor(executor: str, n: int, workers: int | None) -> str:
    """Resolve ``"auto"``: serial for a handful of granules, else a local pool."""
    if executor != "auto":
        return executor
    if n < _MIN_FOR_POOL or (workers or os.cpu_count() or 1) < 2:
        return "serial"
    return "processes"


def virtualize_all(
    granules: Sequence[Granule],
    spec: DatasetSpec,
    source: Any,
    *,
    executor: str = "auto",
    workers: int | None = None,
    dask_address: str | None = None,
    on_done: OnDone | None = None,
) -> list[Result]:
    """Virtualize ``granules``; results come back in the same order.

    Raises
    ------
    ConfigError
        Unknown executor, or a dask scheduler that cannot be reached.
    """
    mode = choose_executor(executor, len(granules), workers)
    done = on_done or (lambda _r: None)
    if mode == "serial":
        results = []
        for g in granules:
            r = virtualize_granule(g, spec, source)
            done(r)
            results.append(r)
        return results
    if mode == "processes":
        return _pool(granules, spec, source, workers or os.cpu_count() or 1, done)
    if mode == "dask":
        return _dask(granules, spec, source, workers, dask_address, done)
    raise ConfigError(f"Unknown executor {executor!r}.", "Use auto, serial, processes or dask.")


def _pool(
    granules: Sequence[Granule], spec: DatasetSpec, source: Any, workers: int, done: OnDone
) -> list[Result]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("forkserver")
    results: dict[int, Result] = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(granules)), mp_context=ctx) as pool:
        futures = {
            pool.submit(virtualize_granule, g, spec, source): i for i, g in enumerate(granules)
        }
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # a worker died (OOM, signal): quarantine, go on
                g = granules[i]
                r = Failure(g.key, f"{g.key}: worker failed: {type(e).__name__}: {e}")
            done(r)
            results[i] = r
    return [results[i] for i in range(len(granules))]


def _dask(
    granules: Sequence[Granule],
    spec: DatasetSpec,
    source: Any,
    workers: int | None,
    address: str | None,
    done: OnDone,
) -> list[Result]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    try:
        if address:
            client = Client(address, timeout="10s")
        else:
            cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            client = Client(cluster)
    except OSError as e:
        raise ConfigError(
            f"Cannot reach the dask scheduler at {address}: {e}.",
            "Check [sync] dask_address / --dask-address, or use --executor processes.",
        ) from e
    try:
        futures = client.map(
            virtualize_granule, list(granules), spec=spec, source=source, pure=False
        )
        index = {f.key: i for i, f in enumerate(futures)}
        results: dict[int, Result] = {}
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                r = fut.result()
            except Exception as e:
                g = granules[i]
                r = Failure(g.key, f"{g.key}: dask worker failed: {type(e).__name__}: {e}")
            done(r)
            results[i] = r
        return [results[i] for i in range(len(granules))]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
