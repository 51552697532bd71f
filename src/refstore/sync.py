"""``refstore sync``: wiring only.

reconcile → discover → plan → virtualize (parallel) → admit → append + commit (one
snapshot per batch) → ledger → export. The logic lives in :mod:`refstore.plan`,
:mod:`refstore.admit`, :mod:`refstore.virtualize`; the I/O in :mod:`refstore.ledger`,
:mod:`refstore.store` and :mod:`refstore.export`.

Crash safety: the Icechunk commit is atomic and carries the granule keys; the ledger is
updated after it and reconciled from the history at the start of every run, so a crash
at any point neither loses nor duplicates a granule.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from refstore.admit import admit, from_json_value, stable_attrs, to_json_value
from refstore.config import Config
from refstore.executors import Result, virtualize_all
from refstore.ledger import Ledger
from refstore.lock import store_lock
from refstore.models import CommitInfo, Failure, Granule, Status, SyncResult
from refstore.plan import batches, plan_sync
from refstore.sources import Source, source_for
from refstore.store import Head, Store
from refstore.virtualize import DatasetSpec, VirtualGranule, format_value

__all__ = ["ProgressFactory", "export_head", "reconcile", "sync"]

log = logging.getLogger("refstore")

type ProgressFactory = Callable[[int, str], Callable[[Result], None]]

RECONCILED = "reconciled_snapshot"
EXPORTED = "exported_snapshot"
DEFAULT_COORD_CHUNK = 1024


def _fault(step: str) -> None:
    """Test hook: ``REFSTORE_FAULT=<step>`` kills the process at that step boundary."""
    if os.environ.get("REFSTORE_FAULT") == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def reconcile(store: Store, ledger: Ledger) -> int:
    """Bring the ledger up to the repository history; returns the rows healed."""
    if not store.exists():
        return 0
    head = store.head_snapshot()
    last = ledger.get_meta(RECONCILED)
    if last == head:
        return 0
    changed = ledger.apply_commits(store.commits(stop_at=last))
    ledger.set_meta(RECONCILED, head)
    return changed


def _coord_chunk(config: Config, accepted: Sequence[VirtualGranule]) -> int:
    """About a year of steps for the loaded concat coordinate (and manifest splits)."""
    import numpy as np

    if config.coord_chunk:
        return config.coord_chunk
    values = [
        v
        for vg in accepted
        for v in np.atleast_1d(vg.dataset[config.concat_dim].values)
        if config.concat_dim in vg.dataset.variables
    ]
    if len(values) >= 2 and isinstance(values[0], np.datetime64):
        steps = np.diff(np.array(values, dtype="datetime64[ns]")).astype(np.int64)
        step = float(np.median(steps[steps > 0])) if (steps > 0).any() else 0.0
        if step > 0:
            per_year = round(365.25 * 86400e9 / step)
            return max(16, min(per_year, 100_000))
    return DEFAULT_COORD_CHUNK


def _combine(accepted: Sequence[VirtualGranule], concat_dim: str, append: bool) -> Any:
    import xarray as xr

    datasets = [vg.dataset for vg in accepted]
    if len(datasets) == 1:
        ds = datasets[0]
    else:
        ds = xr.concat(
            datasets,
            dim=concat_dim,
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="override",
            combine_attrs="override",
        )
    if append:
        # Variables without the concat dim were checked equal to the store's: do not
        # rewrite them (an append would silently overwrite lat/lon for all past data).
        static = [n for n, v in ds.variables.items() if concat_dim not in v.dims]
        ds = ds.drop_vars(static)
    return ds


def _prepare_encoding(ds: Any, concat_dim: str, coord_chunk: int | None) -> None:
    for name, var in ds.variables.items():
        for key in ("preferred_chunks", "chunksizes"):
            var.encoding.pop(key, None)
        if name == concat_dim:
            if coord_chunk is None:
                var.encoding.pop("chunks", None)
            else:
                var.encoding["chunks"] = (coord_chunk,)


def _coverage(first: Any, last: Any) -> dict[str, str]:
    import numpy as np

    if isinstance(first, np.datetime64) and isinstance(last, np.datetime64):
        return {
            "time_coverage_start": f"{format_value(first)}Z",
            "time_coverage_end": f"{format_value(last)}Z",
        }
    return {}


def _commit_batch(
    store: Store,
    config: Config,
    accepted: Sequence[VirtualGranule],
    signature: dict[str, Any],
    head: Head | None,
    run_id: str,
) -> str:
    concat_dim = config.concat_dim
    append = head is not None
    ds = _combine(accepted, concat_dim, append)
    if append:
        assert head is not None
        _prepare_encoding(ds, concat_dim, None)
        store_first = from_json_value(head.first) if head.first is not None else accepted[0].first
        dropped = head.attrs_dropped
        # Stable attributes stay as first written; only the coverage moves.
        attrs = {k: v for k, v in store.root_attrs(head.snapshot).items() if k != "coordinates"}
        length = head.length
    else:
        coord_chunk = _coord_chunk(config, accepted)
        store.create(concat_dim, coord_chunk)
        _prepare_encoding(ds, concat_dim, coord_chunk)
        store_first = accepted[0].first
        attrs, dropped = stable_attrs([vg.dataset.attrs for vg in accepted])
        length = 0
    store_last = accepted[-1].last
    ds.attrs = {**attrs, **_coverage(store_first, store_last)}
    offsets, n = [], length
    for vg in accepted:
        offsets.append(n)
        n += vg.length
    metadata = {
        "version": 1,
        "run_id": run_id,
        "granules": [vg.granule.key for vg in accepted],
        "revisions": [vg.granule.revision for vg in accepted],
        "offsets": offsets,
        "start": accepted[0].start,
        "end": accepted[-1].end,
        "store_first": to_json_value(store_first),
        "store_last": to_json_value(store_last),
        "store_length": n,
        "signature": signature,
        "attrs_dropped": list(dropped),
    }
    span = f"{accepted[0].start} .. {accepted[-1].end}" if accepted[0].start else ""
    message = f"refstore sync: +{len(accepted)} granule(s) {span}".rstrip()
    _fault("before-commit")
    snapshot = store.write(
        ds, append_dim=concat_dim if append else None, message=message, metadata=metadata
    )
    return snapshot


def export_head(config: Config, store: Store, source: Source, ledger: Ledger) -> str:
    """Write the kerchunk Parquet export of the head snapshot; returns its path."""
    from refstore.export import build_refs, write_export

    head = store.head_snapshot()
    session = store.repo.readonly_session(snapshot_id=head)
    refs = build_refs(session, source.registry(), store.native_chunks_prefix)
    _fault("during-export")
    path = write_export(refs, config.export, "parquet")
    ledger.set_meta(EXPORTED, head)
    return str(path)


def sync(
    config: Config,
    *,
    tag: str | None = None,
    wait: float = 0,
    progress: ProgressFactory | None = None,
    source: Source | None = None,
) -> SyncResult:
    """Bring the store up to date with the source: one snapshot per batch of new granules.

    Parameters
    ----------
    config
        The run's configuration.
    tag
        Tag the resulting head snapshot (only if this run committed something).
    wait
        Seconds to wait for another sync on the same store to finish.
    progress
        ``progress(total, label)`` returns a callback invoked once per granule done.
    source
        Use this source instead of the one ``config`` names.

    Raises
    ------
    RefstoreError
        Configuration, source, store or lock problems (granule problems do not raise:
        those granules are quarantined).
    """
    source = source or source_for(config)
    timings: dict[str, float] = {}
    with store_lock(config.ledger, wait=wait):
        ledger = Ledger(config.ledger)
        run_id = ledger.start_run()
        store = Store(config.repo, (source.container(),), source)
        try:
            t0 = time.perf_counter()
            healed = reconcile(store, ledger)
            if healed:
                log.info("reconciled %d granule(s) from the repository history", healed)
            discovered = list(source.discover())
            rows = ledger.rows()
            plan = plan_sync(discovered, rows)
            # Committed granules changed upstream: their place is taken (until in-place
            # replacement lands), so they are reported instead of appended again.
            replaced = {
                g.key: rows[g.key].revision
                for g in plan.revised
                if rows[g.key].status is Status.COMMITTED
            }
            timings["discover"] = time.perf_counter() - t0
            _fault("after-discovery")
            ledger.record_seen(plan.todo, run_id)
            result = _run_batches(
                config, store, source, ledger, plan.todo, replaced, run_id, progress, timings
            )
            added, failures, snapshots, start, end = result
            if tag and snapshots:
                store.tag(tag, snapshots[-1])
            export_path = None
            if store.exists() and ledger.get_meta(EXPORTED) != store.head_snapshot():
                t = time.perf_counter()
                export_path = export_head(config, store, source, ledger)
                timings["export"] = time.perf_counter() - t
            ledger.finish_run(
                run_id,
                status="ok",
                discovered=len(discovered),
                added=len(added),
                quarantined=len(failures),
                snapshots=snapshots,
            )
        except BaseException as e:
            ledger.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            ledger.close()
    return SyncResult(
        run_id=run_id,
        discovered=len(discovered),
        added=tuple(added),
        quarantined=tuple(failures),
        snapshots=tuple(snapshots),
        missing=plan.missing,
        start=start,
        end=end,
        export=export_path,
        timings=timings,
    )


def _run_batches(
    config: Config,
    store: Store,
    source: Source,
    ledger: Ledger,
    todo: Sequence[Granule],
    replaced: dict[str, str],
    run_id: str,
    progress: ProgressFactory | None,
    timings: dict[str, float],
) -> tuple[list[str], list[Failure], list[str], str | None, str | None]:
    spec = DatasetSpec(
        concat_dim=config.concat_dim,
        loadable_variables=config.loadable_variables,
        drop_variables=config.drop_variables,
        group=config.group,
    )
    added: list[str] = []
    failures: list[Failure] = []
    snapshots: list[str] = []
    start = end = None
    on_done = progress(len(todo), "virtualizing") if progress and todo else None
    for batch in batches(todo, config.batch_size):
        t = time.perf_counter()
        # A committed granule whose file changed upstream cannot be re-appended: its
        # place is taken. Quarantine it loudly rather than serve changed bytes.
        revised = [g for g in batch if g.key in replaced]
        failures_now = [
            Failure(
                g.key,
                f"{g.key}: revised upstream after it was committed "
                f"(revision {replaced[g.key]} -> {g.revision}); the store keeps the "
                "old references",
            )
            for g in revised
        ]
        fresh = [g for g in batch if g.key not in replaced]
        results = virtualize_all(
            fresh,
            spec,
            source,
            executor=config.executor,
            workers=config.workers,
            dask_address=config.dask_address,
            on_done=on_done,
        )
        timings["virtualize"] = timings.get("virtualize", 0.0) + time.perf_counter() - t
        ok = [r for r in results if isinstance(r, VirtualGranule)]
        failures_now += [r for r in results if isinstance(r, Failure)]
        ledger.mark_virtualized(
            [vg.granule.key for vg in ok], {vg.granule.key: (vg.start, vg.end) for vg in ok}
        )
        _fault("after-virtualization")
        head = store.head() if store.exists() else None
        admission = admit(
            ok,
            store_signature=head.signature if head else None,
            store_last=from_json_value(head.last) if head else None,
            store_values=lambda lo, hi: store.concat_values(config.concat_dim, lo, hi),
        )
        failures_now += admission.rejected
        ledger.quarantine(failures_now, run_id)
        failures += failures_now
        if admission.accepted:
            t = time.perf_counter()
            accepted = admission.accepted
            snapshot = _commit_batch(store, config, accepted, admission.signature, head, run_id)
            timings["commit"] = timings.get("commit", 0.0) + time.perf_counter() - t
            _fault("after-commit")
            ledger.apply_commits(
                [
                    CommitInfo(
                        snapshot=snapshot,
                        message="",
                        written_at="",
                        granules=tuple(vg.granule.key for vg in accepted),
                        revisions=tuple(vg.granule.revision for vg in accepted),
                        run_id=run_id,
                    )
                ]
            )
            ledger.set_meta(RECONCILED, snapshot)
            snapshots.append(snapshot)
            added += [vg.granule.key for vg in accepted]
            start = start or accepted[0].start
            end = accepted[-1].end
    return added, failures, snapshots, start, end
