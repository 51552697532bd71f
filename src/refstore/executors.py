"""Where virtualization runs: in-process, a local process pool, or a dask cluster.

Workers only read granules and return :class:`VirtualGranule`s or :class:`Failure`s;
the main process alone writes the ledger and the repository. Process pools use the
``forkserver`` start method: forking after obstore started its runtime deadlocks.

An :class:`Executor` is opened once per sync and reused for every batch, so a backlog of
tens of thousands of granules pays the pool's (or the cluster connection's) start-up once,
not once per batch.

Processes started here (forkserver, resource tracker, pool workers, a local dask cluster's
workers) die with the sync, even a SIGKILLed one, and never hold its stdout/stderr: see
:mod:`refstore.orphans`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, Self

from refstore.errors import ConfigError
from refstore.models import Failure, Granule
from refstore.orphans import start_pool_helpers, start_resource_tracker, use_pdeathsig, watch_parent
from refstore.virtualize import DatasetSpec, VirtualGranule, virtualize_granule

log = logging.getLogger("refstore")

__all__ = [
    "Executor",
    "OnDone",
    "Result",
    "choose_executor",
    "open_executor",
    "virtualize_all",
]

type Result = VirtualGranule | Failure
type OnDone = Callable[[Result], None]

# Below this many granules a pool costs more to start than it saves.
_MIN_FOR_POOL = 4
# Imported once in the forkserver, so every worker it forks starts warm (about 1 s of
# imports per worker otherwise, paid again whenever a pool is restarted).
# Seconds a new pool may take to run one trivial task (a worker imports _PRELOAD first).
PROBE_TIMEOUT = 120.0
_PRELOAD = ["refstore.virtualize", "virtualizarr.parsers", "xarray", "h5py", "obstore"]


def choose_executor(
    executor: str, n: int, workers: int | None, dask_address: str | None = None
) -> str:
    """Resolve ``"auto"``: dask if a scheduler is configured, serial for a handful of
    granules or a single core, else a local process pool."""
    if executor != "auto":
        return executor
    if dask_address:
        return "dask"
    if n < _MIN_FOR_POOL or (workers or os.cpu_count() or 1) < 2:
        return "serial"
    return "processes"


class Executor(Protocol):
    """Runs :func:`virtualize_granule` over granules; opened once, used per batch."""

    mode: str

    def map(
        self, granules: Sequence[Granule], spec: DatasetSpec, source: Any, on_done: OnDone
    ) -> list[Result]:
        """Virtualize ``granules``; results come back in the same order."""
        ...

    def close(self) -> None:
        """Release workers (idempotent)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class _Base:
    mode = "serial"

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialExecutor(_Base):
    """In this process, one granule after another (no start-up cost)."""

    mode = "serial"

    def map(
        self, granules: Sequence[Granule], spec: DatasetSpec, source: Any, on_done: OnDone
    ) -> list[Result]:
        results: list[Result] = []
        for g in granules:
            r = virtualize_granule(g, spec, source)
            on_done(r)
            results.append(r)
        return results


class PoolExecutor(_Base):
    """A local ``forkserver`` process pool, started lazily and kept across batches."""

    mode = "processes"

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: Any = None

    def _start(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            # The forkserver and resource tracker are started here, detached from our
            # stdout/stderr, and every worker watches for our death (see refstore.orphans):
            # a killed sync leaves no process behind and no pipe open.
            start_pool_helpers(_PRELOAD)
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=watch_parent,
                initargs=(use_pdeathsig(),),
            )
            self._probe()
        return self._pool

    def _probe(self) -> None:
        """Fail with the cause, blaming no granule, when workers cannot even start.

        Python starts each worker by re-running the caller's main script (multiprocessing's
        forkserver/spawn), so a script that calls ``refstore.sync`` from unguarded top-level
        code runs again in every worker, which dies; without this check every granule of
        the run would be quarantined as "worker process died".
        """
        from concurrent.futures.process import BrokenProcessPool

        try:
            self._pool.submit(os.getpid).result(timeout=PROBE_TIMEOUT)
        except (BrokenProcessPool, TimeoutError) as e:
            self.close()
            raise ConfigError(
                f"refstore's worker processes could not start ({type(e).__name__}), so no "
                "granule was read. A script that calls refstore.sync must keep its top-level "
                'code under `if __name__ == "__main__":`: Python re-runs the main script in '
                "every worker process.",
                'Add that guard to the script, or use executor = "serial".',
            ) from e

    def map(
        self, granules: Sequence[Granule], spec: DatasetSpec, source: Any, on_done: OnDone
    ) -> list[Result]:

        results: dict[int, Result] = {}
        pending = list(range(len(granules)))
        # A worker that dies (OOM, a crash in the HDF5 library) breaks the whole pool
        # and fails every granule in flight, most of them innocent: restart the pool
        # once and resubmit them. A second break leaves suspects only; each is then read
        # alone, so the one that kills its worker is failed and no innocent one is.
        for _ in range(2):
            pending = self._round(granules, pending, spec, source, on_done, results)
            if not pending:
                break
            self.close()  # a broken pool never recovers: the next round or batch starts anew
        else:
            self._isolate(granules, pending, spec, source, on_done, results)
        return [results[i] for i in range(len(granules))]

    def _isolate(
        self,
        granules: Sequence[Granule],
        indices: list[int],
        spec: DatasetSpec,
        source: Any,
        on_done: OnDone,
        results: dict[int, Result],
    ) -> None:
        """Read each of ``indices`` alone in a one-worker pool (restarted after a death)."""
        from concurrent.futures.process import BrokenProcessPool

        log.warning(
            "a worker process died twice; reading %d granule(s) one at a time to find "
            "which one kills it",
            len(indices),
        )
        single = PoolExecutor(1)
        try:
            for i in indices:
                try:
                    r = single._start().submit(virtualize_granule, granules[i], spec, source)
                    r = r.result()
                except BrokenProcessPool as e:
                    single.close()
                    r = _failure(granules[i], "worker process died reading it alone", e)
                except Exception as e:  # an unpicklable result, a worker-side crash
                    r = _failure(granules[i], "worker failed", e)
                on_done(r)
                results[i] = r
        finally:
            single.close()

    def _round(
        self,
        granules: Sequence[Granule],
        indices: list[int],
        spec: DatasetSpec,
        source: Any,
        on_done: OnDone,
        results: dict[int, Result],
    ) -> list[int]:
        """One pass over ``indices``; returns those lost to a broken pool (none if it held)."""
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        pool = self._start()
        futures: dict[Any, int] = {}
        broken: list[int] = []
        for n, i in enumerate(indices):
            try:
                futures[pool.submit(virtualize_granule, granules[i], spec, source)] = i
            except BrokenProcessPool:  # the pool broke while work was being queued
                broken += indices[n:]
                break
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                r = fut.result()
            except BrokenProcessPool:
                broken.append(i)
                continue
            except Exception as e:  # an unpicklable result, a worker-side crash
                r = _failure(granules[i], "worker failed", e)
            on_done(r)
            results[i] = r
        return broken

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskExecutor(_Base):
    """A dask.distributed cluster: the one at ``address``, or a local one on 127.0.0.1."""

    mode = "dask"

    def __init__(self, address: str | None, workers: int | None, timeout: str = "10s") -> None:
        self.address = address
        self.workers = workers
        self.timeout = timeout
        self._client: Any = None
        self._cluster: Any = None

    def _start(self) -> Any:
        if self._client is not None:
            return self._client
        import distributed

        dd: Any = distributed  # untyped package: keep mypy --strict quiet at one place
        try:
            if self.address:
                self._client = dd.Client(self.address, timeout=self.timeout)
            else:
                # Workers are spawned by in-process nannies that already end them if we
                # die; the preload also detaches their stdio (see refstore.orphans).
                start_resource_tracker()
                self._cluster = dd.LocalCluster(
                    host="127.0.0.1",
                    n_workers=self.workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    preload=["refstore.orphans"],
                )
                self._client = dd.Client(self._cluster)
        except (OSError, TimeoutError) as e:
            self.close()
            raise ConfigError(
                f"Cannot reach the dask scheduler at {self.address}: {e}.",
                "Start the scheduler (dask scheduler --host 127.0.0.1) or fix [sync] "
                "dask_address / --dask-address, or use --executor processes.",
            ) from e
        return self._client

    def map(
        self, granules: Sequence[Granule], spec: DatasetSpec, source: Any, on_done: OnDone
    ) -> list[Result]:
        import distributed

        as_completed: Any = distributed.as_completed
        if not granules:
            return []
        client = self._start()
        futures = client.map(
            virtualize_granule, list(granules), spec=spec, source=source, pure=False
        )
        index = {f.key: i for i, f in enumerate(futures)}
        results: dict[int, Result] = {}
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                r = fut.result()
            except Exception as e:  # KilledWorker, a lost connection, a worker crash
                r = _failure(granules[i], "dask worker failed", e)
            on_done(r)
            results[i] = r
            fut.release()  # drop the result from the cluster's memory at once
        return [results[i] for i in range(len(granules))]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _failure(granule: Granule, what: str, e: BaseException) -> Failure:
    return Failure(granule.key, f"{granule.key}: {what}: {type(e).__name__}: {e}")


def open_executor(
    executor: str = "auto",
    n: int = _MIN_FOR_POOL,
    *,
    workers: int | None = None,
    dask_address: str | None = None,
) -> Executor:
    """The executor for ``n`` granules; use it as a context manager.

    Parameters
    ----------
    executor
        ``auto``, ``serial``, ``processes`` or ``dask``.
    n
        How many granules the run will virtualize (``auto`` picks serial for a few).
    workers
        Pool size or local dask workers (default: the machine's cores).
    dask_address
        A running scheduler, e.g. ``tcp://127.0.0.1:8786``; without one ``dask`` starts
        a local cluster on 127.0.0.1.

    Raises
    ------
    ConfigError
        Unknown executor (a dask scheduler that cannot be reached raises on first use).
    """
    mode = choose_executor(executor, n, workers, dask_address)
    if mode == "serial":
        return SerialExecutor()
    if mode == "processes":
        return PoolExecutor(min(workers or os.cpu_count() or 1, max(n, 1)))
    if mode == "dask":
        return DaskExecutor(dask_address, workers)
    raise ConfigError(f"Unknown executor {executor!r}.", "Use auto, serial, processes or dask.")


def virtualize_all(
    granules: Sequence[Granule],
    spec: DatasetSpec,
    source: Any,
    *,
    executor: str | Executor = "auto",
    workers: int | None = None,
    dask_address: str | None = None,
    on_done: OnDone | None = None,
) -> list[Result]:
    """Virtualize ``granules``; results come back in the same order.

    ``executor`` is a mode name (an executor is started and closed for this call) or an
    open :class:`Executor` reused across calls.

    Raises
    ------
    ConfigError
        Unknown executor, or a dask scheduler that cannot be reached.
    """
    done = on_done or (lambda _r: None)
    if not isinstance(executor, str):
        return executor.map(granules, spec, source, done)
    with open_executor(executor, len(granules), workers=workers, dask_address=dask_address) as ex:
        return ex.map(granules, spec, source, done)
