"""``refstore sync``: wiring only.

reconcile → discover → plan → virtualize (parallel) → admit → write + commit (one
snapshot per batch) → ledger → export. The rules live in :mod:`refstore.plan`,
:mod:`refstore.admit` and :mod:`refstore.batch`; the I/O in :mod:`refstore.ledger`,
:mod:`refstore.store` and :mod:`refstore.export`.

Crash safety: the Icechunk commit is atomic and its metadata names every granule it
placed; the ledger is updated after it and reconciled from the history at the start of
every run, so a crash at any point neither loses nor duplicates a granule. Every
``checkpoint`` below is a step boundary the fault-injection tests kill the process at.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from refstore import batch as batching
from refstore import mirror
from refstore.access import bind, open_bound, scopes_hosts
from refstore.admit import (
    Admission,
    admit,
    from_json_value,
    order_key,
    placed_value,
    stable_attrs,
)
from refstore.chunkgrid import RECTILINEAR, REGULAR, choose_layout, concat_chunks, native_rows
from refstore.concurrency import backoff, still_to_place
from refstore.config import Config
from refstore.errors import ConfigError, ConflictError, TagExistsError
from refstore.executors import Executor, Result, open_executor, virtualize_all
from refstore.faults import checkpoint
from refstore.hosts import HostPolicy, host_of
from refstore.ledger import Ledger
from refstore.lock import store_lock
from refstore.models import Failure, Granule, LedgerRow, Placement, SyncPlan, SyncResult
from refstore.plan import WAITING, batches, common_failure, dataset_fingerprint, plan_sync
from refstore.sources import Source, source_for
from refstore.storage import export_registry, store_options
from refstore.store import Head, Store
from refstore.virtualize import DatasetSpec, VirtualGranule

__all__ = ["ProgressFactory", "export_head", "export_snapshot", "reconcile", "sync"]

log = logging.getLogger("refstore")

type ProgressFactory = Callable[[int, str], Callable[[Result], None]]

RECONCILED = mirror.RECONCILED
EXPORTED = "exported_snapshot"
VERIFIED = "readback_verified_encodings"  # encoding keys whose references read back equal
SIDECARS = "dmrpp_looks"  # what looking for <url>.dmrpp found so far (refstore.sidecars)
COORD_HINT = "coord_ranges_hint"  # where the last granule kept its loaded variables (JSON)
PROOFS = "dmrpp_derivations"  # proved derivations of loaded values, by sidecar key (JSON)


def _read_proofs(text: str | None) -> dict[str, str]:
    """Proved derivations kept in the ledger (sidecar key -> proof JSON); none if unreadable."""
    try:
        found = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _learn_proofs(proofs: dict[str, str], granules: Sequence[VirtualGranule]) -> bool:
    """Add the derivations ``granules`` proved to ``proofs``, drop those they contradict;
    whether anything changed. A known one is replaced only by a confirmed one: an
    unconfirmed rule learnt again on every granule (raw values that never repeat) would
    rewrite the ledger per granule for nothing."""
    from refstore.derive import Proof

    changed = False
    for vg in granules:
        if vg.disproved is not None and proofs.pop(vg.disproved, None) is not None:
            changed = True
        made = Proof.from_json(vg.proof) if vg.proof else None
        if made is None or proofs.get(made.key) == vg.proof:
            continue
        if made.key not in proofs or made.confirmed:
            proofs[made.key] = vg.proof or ""
            changed = True
    return changed


def _waiting(proofs: Mapping[str, str]) -> bool:
    """Whether derivations are known and none is confirmed yet (refstore.derive.Proof)."""
    from refstore.derive import Proof

    known = [Proof.from_json(p) for p in proofs.values()]
    return bool(known) and not any(p is not None and p.confirmed for p in known)


def _read_hint(text: str | None) -> tuple[tuple[int, int], ...]:
    """The coordinate-ranges hint kept in the ledger; none if absent or unreadable."""
    try:
        return tuple((int(o), int(n)) for o, n in json.loads(text or "[]"))
    except (ValueError, TypeError):
        return ()


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


def export_snapshot(
    config: Config,
    store: Store,
    source: Source,
    snapshot: str,
    path: str | None = None,
    fmt: str = "parquet",
) -> str:
    """Write a kerchunk export of ``snapshot`` (default place: ``[store] export``)."""
    from refstore.export import build_refs, write_export

    session = store.repo.readonly_session(snapshot_id=snapshot)
    registry = export_registry(source.registry(), store.url, store.options)
    refs = build_refs(session, registry, store.native_chunks_prefix)
    written = write_export(refs, path or config.export, fmt, options=store_options(config))
    return str(written)


def export_head(config: Config, store: Store, source: Source, ledger: Ledger) -> str | None:
    """Write the Parquet export of the head snapshot and remember it; returns its path,
    or None for a store the export cannot express (a one-line warning says why)."""
    from refstore.errors import LayoutError

    head = store.head_snapshot()
    try:
        path = export_snapshot(config, store, source, head)
    except LayoutError as e:
        log.warning("export skipped: %s %s", e.message, e.hint)
        ledger.set_meta(EXPORTED, head)
        return None
    ledger.set_meta(EXPORTED, head)
    return path


@dataclass
class _Run:
    """State of one sync run while its batches are processed."""

    config: Config
    store: Store
    source: Source
    ledger: Ledger
    run_id: str
    replaced: dict[str, str]
    progress: Callable[[Result], None] | None
    fingerprint: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    start: str | None = None
    end: str | None = None
    pool: Executor | None = None  # opened once per run, reused by every batch
    conflicts: int = 0  # commit races lost to other writers (each retried)
    placed_elsewhere: list[str] = field(default_factory=list)  # by another writer first

    @property
    def spec(self) -> DatasetSpec:
        c = self.config
        return DatasetSpec(
            c.concat_dim,
            c.loadable_variables,
            c.drop_variables,
            c.single_group,
            groups=c.hierarchy,
            dmrpp=c.dmrpp,
            concat_from=c.concat_from,
        )

    def _time(self, name: str, since: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - since

    def virtualize(self, granules: Sequence[Granule], on_done: Any = None) -> list[Result]:
        """Virtualize ``granules`` (in order); with ``dmrpp = "auto"``, sidecars are looked
        for as :mod:`refstore.sidecars` remembers they were found."""
        from dataclasses import replace

        from refstore import sidecars

        c = self.config

        def run(subset: Sequence[Granule], spec: DatasetSpec) -> list[Result]:
            return virtualize_all(
                subset,
                spec,
                self.source,
                executor=self.pool or c.executor,
                workers=c.workers,
                dask_address=c.dask_address,
                on_done=on_done,
            )

        if c.dmrpp == "never":
            return run(granules, self.spec)
        hint = _read_hint(self.ledger.get_meta(COORD_HINT))
        before, alone = hint, 2  # granules that may still go alone (below)
        proofs = _read_proofs(self.ledger.get_meta(PROOFS))

        def hinted(subset: Sequence[Granule], spec: DatasetSpec) -> list[Result]:
            # Each phase reads its sidecar-built granules' coordinates at the offsets the
            # last granule had them, while the sidecar is fetched (refstore.virtualize),
            # or reads nothing where a derivation is proved (refstore.derive). With
            # neither known yet, the first granule goes alone (once) to give the rest one;
            # so does the next while the only derivations known wait for a second granule
            # to confirm them (repeated raw values: RSS SSMIS), so the rest can apply them.
            nonlocal hint, alone
            if alone and spec.dmrpp != "never" and len(subset) > 1:
                alone -= 1
                if _waiting(proofs) or (alone == 1 and not (hint and proofs)):
                    return hinted(subset[:1], spec) + hinted(subset[1:], spec)
            known = tuple(proofs[k] for k in sorted(proofs))
            results = run(subset, replace(spec, coord_hint=hint, proofs=known))
            ranges = [r.coord_ranges for r in results if isinstance(r, VirtualGranule)]
            hint = next((r for r in reversed(ranges) if r), hint)
            # Used in this run before its granule is read back: a granule of a signature
            # not yet verified is compared with its file anyway (_read_back).
            _learn_proofs(proofs, [r for r in results if isinstance(r, VirtualGranule)])
            return results

        if c.dmrpp == "always":
            results = hinted(granules, self.spec)
        else:
            never = replace(self.spec, dmrpp="never")
            memory = sidecars.Memory.from_json(self.ledger.get_meta(SIDECARS))
            looking = self.spec

            def phase(subset: Sequence[Granule], look: bool, expected: bool) -> list[Result]:
                return hinted(subset, replace(looking, hint_guessed=expected) if look else never)

            results, after = sidecars.virtualize_looking(granules, memory, phase)
            if after != memory:
                self.ledger.set_meta(SIDECARS, after.to_json())
        if hint != before:
            self.ledger.set_meta(COORD_HINT, json.dumps([list(r) for r in hint]))
        return results

    def process(self, todo: Sequence[Granule]) -> None:
        t = time.perf_counter()
        results = self.virtualize(todo, self.progress)
        self._time("virtualize", t)
        ok = [r for r in results if isinstance(r, VirtualGranule)]
        failures = [r for r in results if isinstance(r, Failure)]
        t = time.perf_counter()
        ok, unreadable = self._read_back(ok)
        failures += unreadable
        self._time("readback", t)
        self.ledger.mark_virtualized(
            [vg.granule.key for vg in ok], {vg.granule.key: (vg.start, vg.end) for vg in ok}
        )
        checkpoint("after-virtualization")
        self._place_with_retries(ok, failures)

    def _place_with_retries(
        self, granules: Sequence[VirtualGranule], failures: Sequence[Failure]
    ) -> None:
        """Place a virtualized batch; after losing a commit race to another writer,
        wait (jittered backoff) and place what that writer did not (each attempt
        reconciles first), up to ``[sync] commit_retries`` times."""
        rng = random.Random()
        attempts = self.config.commit_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self._place(granules, failures)
                return
            except ConflictError as e:
                lost = e
            if attempt == attempts:
                break
            delay = backoff(attempt, rng)
            log.info("lost a commit race (%s); retrying in %.2f s", lost.message, delay)
            self.conflicts += 1
            time.sleep(delay)
        raise ConflictError(
            f"Gave up placing {len(granules)} granule(s) in {self.store.url} after "
            f"{attempts} attempt(s): other writers committed first every time ({lost.message})",
            "Nothing of this batch was committed and the ledger is consistent; run "
            "`refstore sync` again, or raise [sync] commit_retries if writers often overlap.",
        ) from lost

    def _reconciled_tip(self) -> str | None:
        """Reconcile the ledger with ``main``; the tip it now reflects (None: no repository)."""
        if not self.store.exists():
            return None
        reconcile(self.store, self.ledger)
        return self.ledger.get_meta(RECONCILED)

    def _place(self, granules: Sequence[VirtualGranule], failures: Sequence[Failure]) -> None:
        """Admit and commit one batch on top of the tip the ledger is reconciled to,
        then quarantine what was refused. A granule another writer placed already (at the
        revision read here) is dropped; one it placed at another revision is replaced.

        Raises
        ------
        ConflictError
            ``main`` moved after it was reconciled; nothing was recorded.
        """
        tip = self._reconciled_tip()
        rows = {vg.granule.key: self.ledger.row(vg.granule.key) for vg in granules}
        rest = still_to_place(
            [vg.granule for vg in granules], {k: r for k, r in rows.items() if r is not None}
        )
        self.placed_elsewhere += rest.placed_by_others
        if rest.placed_by_others:
            log.info(
                "%d granule(s) already placed by another writer: %s",
                len(rest.placed_by_others),
                ", ".join(rest.placed_by_others[:5]),
            )
        self.replaced.update(rest.replacing)
        keep = set(rest.keys)
        ok = [vg for vg in granules if vg.granule.key in keep]
        failures = list(failures)
        # The head as of the reconciled tip, never newer: a commit that lands meanwhile
        # makes this batch's commit conflict, and the retry sees it reconciled.
        head = self.store.head(at=tip) if tip is not None else None
        expressed = self._express(ok, head)
        ok = [r for r in expressed if isinstance(r, VirtualGranule)]
        failures += [r for r in expressed if isinstance(r, Failure)]
        layout = self._layout(ok, head)  # admitted and written by the same rules
        admission = admit(
            ok,
            store_signature=head.signature if head else None,
            store_last=from_json_value(head.last) if head else None,
            store_length=head.length if head else 0,
            replaced=self.replaced,
            placements=self.ledger.placements,
            layout=layout,
        )
        failures += admission.rejected
        tail: list[Placement] = []
        if admission.rewrite_from is not None:
            if layout == REGULAR:  # a rectilinear rewrite re-splices every edge after it
                kept, tail = batching.split_unchanged_tail(
                    admission.sequence, admission.rewrite_from
                )
                admission = replace(admission, sequence=tuple(kept))
            store_last = from_json_value(head.last) if head else None
            admission, tail_failures = self._reread_tail(admission, store_last)
            failures += tail_failures
        if admission.accepted:
            t = time.perf_counter()
            snapshot, appended = self._commit(admission, head, layout, tail, parent=tip)
            self._time("commit", t)
            if head is not None and appended and layout == REGULAR:
                self._export_tail(head, snapshot, appended)
        # Recorded once the batch is settled: a lost race re-decides every granule.
        waiting = [f for f in failures if f.waiting]
        self.ledger.quarantine(
            [f for f in failures if not f.waiting], self.run_id, self.fingerprint
        )
        self.ledger.quarantine(waiting, self.run_id, WAITING)
        self.failures += failures

    def _layout(self, granules: Sequence[VirtualGranule], head: Head | None) -> str:
        """The store's chunk grid along the concat dim: recorded, or chosen for a new one."""
        if head is not None:
            return head.layout
        return choose_layout(self.config.concat_chunks, [(g.length, g.signature) for g in granules])

    def _express(self, results: Sequence[Result], head: Head | None) -> list[Result]:
        """Put each granule's loaded concat coordinate in the store's encoding (the first
        granule's), exactly, or turn it into a failure (:func:`refstore.coords.express_in`).
        Same order and length as ``results``."""
        from dataclasses import replace

        from refstore.coords import CoordEncoding, express_in

        dim = self.config.concat_dim
        good = [r for r in results if isinstance(r, VirtualGranule)]
        ref = self.store.coord_encoding(head.snapshot, dim) if head else None
        if ref is None:
            with_dim = [vg for vg in good if dim in vg.dataset.variables]
            if not with_dim:
                return list(results)
            first = min(with_dim, key=lambda vg: (vg.first is None, order_key(vg.first) or 0))
            var = first.dataset.variables[dim]
            ref = CoordEncoding.of(var.dtype, {**var.attrs, **var.encoding})
        out: list[Result] = []
        for r in results:
            if not isinstance(r, VirtualGranule):
                out.append(r)
                continue
            ds, problem = express_in(r.dataset, dim, ref)
            if problem is not None:
                out.append(Failure(r.granule.key, f"{r.granule.key}: {problem}"))
            else:
                out.append(r if ds is r.dataset else replace(r, dataset=ds))
        return out

    def _read_back(
        self, granules: Sequence[VirtualGranule]
    ) -> tuple[list[VirtualGranule], list[Failure]]:
        """Check each granule of an encoding signature not yet verified against its file
        (:mod:`refstore.readback`) until one passes; later ones of a passed signature
        are trusted (the cost is once per signature). A granule built from a DMR++
        sidecar is first compared with its own HDF5 parse, once per signature too
        (kept apart from the file-built signatures): if they disagree, the file's
        parse is used and the reason logged."""
        from refstore.readback import encoding_key, readback

        def key_of(vg: VirtualGranule) -> str:
            origin = "dmrpp:" if vg.origin == "dmrpp" else ""
            return origin + encoding_key(vg.signature)

        verified = set(json.loads(self.ledger.get_meta(VERIFIED) or "[]"))
        proofs = _read_proofs(self.ledger.get_meta(PROOFS))
        ok: list[VirtualGranule] = []
        failures: list[Failure] = []
        for first in granules:
            vg: VirtualGranule | Failure = first
            if first.disproved is not None:
                log.warning(
                    "%s: %s. The derivation is dropped: the next granule of its kind is read "
                    "and proves one anew. Granules placed with it since it was proved may hold "
                    "wrong values: run `refstore verify --sample N` to compare them with "
                    "their files.",
                    first.granule.key,
                    first.note,
                )
                if _learn_proofs(proofs, [replace(first, proof=None)]):
                    self.ledger.set_meta(PROOFS, json.dumps(proofs, sort_keys=True))
            if first.origin == "dmrpp" and key_of(first) not in verified:
                vg = self._cross_check(first)
            if isinstance(vg, Failure):
                failures.append(vg)
                continue
            if vg.note and vg.origin != "dmrpp":
                log.info("%s: from its own metadata: %s", vg.granule.key, vg.note)
            key = key_of(vg)
            if key not in verified:
                c = self.config
                problem = readback(vg, self.source.registry(), vg.fmt, c.single_group, c.concat_dim)
                if problem is not None:
                    failures.append(Failure(vg.granule.key, f"{vg.granule.key}: {problem}"))
                    continue
                verified.add(key)
                self.ledger.set_meta(VERIFIED, json.dumps(sorted(verified)))
            # A derivation is kept across syncs once its granule passed both checks.
            if vg.proof and _learn_proofs(proofs, [vg]):
                self.ledger.set_meta(PROOFS, json.dumps(proofs, sort_keys=True))
            ok.append(vg)
        return ok, failures

    def _cross_check(self, vg: VirtualGranule) -> VirtualGranule | Failure:
        """``vg`` (built from its sidecar) if it equals the file's own parse, else that parse."""
        from dataclasses import replace

        from refstore.dmrpp import disagreement
        from refstore.virtualize import virtualize_granule

        own = virtualize_granule(vg.granule, replace(self.spec, dmrpp="never"), self.source)
        if isinstance(own, Failure):
            return own
        problem = disagreement(vg.dataset, own.dataset)
        if problem is None:
            return vg
        note = f"its DMR++ sidecar disagrees with the file ({problem}); built from the file"
        log.warning("%s: %s", vg.granule.key, note)
        return replace(own, note=note)

    def _reread_tail(
        self, admission: Admission, store_last: Any
    ) -> tuple[Admission, list[Failure]]:
        """Re-virtualize the committed granules after the insertion point.

        Putting a granule in place rewrites the references from there to the end; the
        committed ones come back from their sources (cost ∝ the tail, not the store).
        If one cannot be re-read, the late/revised granules wait (quarantined with the
        reason) and the plain appends still land.
        """
        tail = [p for p in admission.sequence if isinstance(p, Placement)]
        reread = self._express(
            self.virtualize([Granule(p.key, p.url, p.revision) for p in tail]), self.store.head()
        )
        problems = []
        by_key: dict[str, VirtualGranule] = {}
        for p, r in zip(tail, reread, strict=True):
            if isinstance(r, Failure):
                problems.append(f"{p.key} ({r.reason})")
            elif r.length != p.length:
                problems.append(f"{p.key} (now {r.length} steps, committed with {p.length})")
            else:
                by_key[p.key] = r
        if not problems:
            sequence = tuple(
                by_key[item.key] if isinstance(item, Placement) else item
                for item in admission.sequence
            )
            return Admission(
                admission.accepted,
                admission.rejected,
                admission.signature,
                admission.rewrite_from,
                sequence,
            ), []
        last = order_key(store_last)
        appends = [
            vg
            for vg in admission.accepted
            if vg.granule.key not in self.replaced
            and (vg.first is None or last is None or order_key(vg.first) > last)
        ]
        reason = "cannot be put in place: committed granule(s) after it could not be re-read: "
        failures = [
            Failure(
                vg.granule.key, f"{vg.granule.key}: {reason}{'; '.join(problems)}", waiting=True
            )
            for vg in admission.accepted
            if vg not in appends
        ]
        return Admission(tuple(appends), admission.rejected, admission.signature), failures

    def _export_tail(self, head: Head, snapshot: str, sequence: Sequence[VirtualGranule]) -> None:
        """Append this commit's refs to an export that holds its parent snapshot (cost ∝
        the batch); otherwise the full export at the end of the run rewrites it."""
        from refstore.export_incremental import append_export

        if self.ledger.get_meta(EXPORTED) != head.snapshot or self.config.hierarchy:
            return  # a hierarchy has no export (refstore.export.build_refs says why)
        t = time.perf_counter()
        session = self.store.repo.readonly_session(snapshot_id=snapshot)
        datasets = [vg.dataset for vg in sequence]
        c = self.config
        if append_export(c.export, session, datasets, c.concat_dim, head.length):
            self.ledger.set_meta(EXPORTED, snapshot)
        self._time("export", t)

    def _commit(
        self,
        admission: Admission,
        head: Head | None,
        layout: str,
        tail: Sequence[Placement] = (),
        *,
        parent: str | None,
    ) -> tuple[str, list[VirtualGranule]]:
        """Write and commit one batch; returns the snapshot and what was appended.

        ``tail``: committed granules after the last change of a rewrite, left in place;
        ``parent``: the tip of ``main`` this batch was planned on (None: no repository).
        """
        c, store = self.config, self.store
        accepted = admission.accepted
        added_keys = [vg.granule.key for vg in accepted if vg.granule.key not in self.replaced]
        replaced_keys = [vg.granule.key for vg in accepted if vg.granule.key in self.replaced]
        if head is None:
            mode, offset, sequence = "create", 0, list(accepted)
            coord_chunk = batching.choose_coord_chunk(c.coord_chunk, accepted)
            store.create(c.concat_dim, coord_chunk)
            attrs, dropped = stable_attrs([vg.dataset.attrs for vg in accepted])
            store_first = accepted[0].first
        else:
            coord_chunk = None
            dropped = head.attrs_dropped
            attrs = {k: v for k, v in store.root_attrs(head.snapshot).items() if k != "coordinates"}
            store_first = from_json_value(head.first)
            if admission.rewrite_from is None:
                mode, offset, sequence = "append", head.length, list(accepted)
            else:
                mode, offset = "rewrite", admission.rewrite_from
                sequence = [vg for vg in admission.sequence if isinstance(vg, VirtualGranule)]
        placed = batching.placements(sequence, offset) + list(tail)
        new_length = offset + sum(vg.length for vg in sequence) + sum(p.length for p in tail)
        firsts = [vg.first for vg in sequence if vg.first is not None]
        if offset == 0 and firsts:
            store_first = firsts[0]
        store_last = placed_value(tail[-1].last) if tail else sequence[-1].last
        rectilinear = layout == RECTILINEAR
        ds = batching.combine(
            sequence, c.concat_dim, drop_static=head is not None, virtual=not rectilinear
        )
        batching.prepare_encoding(ds, c.concat_dim, coord_chunk)
        ds.attrs = {**attrs, **batching.coverage(store_first, store_last)}
        metadata = batching.commit_metadata(
            run_id=self.run_id,
            placed=placed,
            added=added_keys,
            replaced=replaced_keys,
            rewrite_from=admission.rewrite_from,
            store_first=store_first,
            store_last=store_last,
            store_length=new_length,
            signature=admission.signature,
            attrs_dropped=dropped,
            layout=layout,
            native=[
                native_rows(p.offset, p.length, concat_chunks(vg.signature))
                for p, vg in zip(placed, sequence, strict=True)
            ]
            if rectilinear
            else (),
        )
        verb = {"create": "create", "append": "append", "rewrite": "place"}[mode]
        span = f" {metadata['start']} .. {metadata['end']}" if metadata["start"] else ""
        message = f"refstore sync: {verb} +{len(added_keys)} ~{len(replaced_keys)}{span}"
        snapshot = store.write(
            ds,
            concat_dim=c.concat_dim,
            mode=mode,
            message=message,
            metadata=metadata,
            parent=parent,
            region_start=offset,
            new_length=new_length,
            granules=[vg.dataset for vg in sequence] if rectilinear else (),
            registry=self.source.registry() if rectilinear else None,
        )
        checkpoint("after-commit")
        self.ledger.apply_commits([batching.commit_info(snapshot, message, "", metadata)])
        self.ledger.set_meta(RECONCILED, snapshot)
        self.snapshots.append(snapshot)
        self.added += added_keys + replaced_keys
        self.start = self.start or accepted[0].start
        self.end = accepted[-1].end
        return snapshot, sequence if mode == "append" else []


def _keep_to_hosts(
    config: Config, store: Store, policy: HostPolicy, todo: Sequence[Granule]
) -> tuple[Store, list[Granule], list[Failure]]:
    """Settle the hosts the login may reach and set aside granules on any other host.

    A new repository without ``allowed_hosts`` takes the one host of its first granules;
    allowed hosts not yet recorded in the repository are recorded now (a deliberate
    change of ``allowed_hosts``, never a side effect of what CMR lists).
    """
    if not scopes_hosts(store.source):
        return store, list(todo), []
    settled = policy.settle(g.url for g in todo)
    if settled is not policy:
        store = bind(config, store.source, settled, known=store.known)
    allowed, refused = settled.split(todo)
    new = settled.unrecorded()
    if new and store.exists():
        store.record_containers(tuple(c for c in store.containers if host_of(c.url_prefix) in new))
        log.info("recorded host(s) %s for the login ([source] allowed_hosts)", ", ".join(new))
    return store, allowed, refused


def _readable_names(todo: Sequence[Granule]) -> tuple[list[Granule], list[Failure]]:
    """Set aside local files whose names VirtualiZarr's readers cannot open (a name that
    needs escaping in a ``file://`` URL: they would look for the escaped name)."""
    from refstore.sources.local import URL_SAFE, needs_escape

    keep, refused = [], []
    for g in todo:
        bad = needs_escape(g.url)
        if not bad:
            keep.append(g)
            continue
        shown = ", ".join(repr(c) for c in bad)
        refused.append(
            Failure(
                g.key,
                f"{g.key}: its path has character(s) {shown} that a file:// URL must escape, "
                "and VirtualiZarr's reader does not unescape them; rename the file or "
                f"folder (letters, digits and -._~{URL_SAFE.lstrip('/')} are fine)",
            )
        )
    return keep, refused


def _plan_listing(
    source: Source, ledger: Ledger, fingerprint: str, *, trust_cache: bool
) -> tuple[int, dict[str, LedgerRow], SyncPlan, Callable[[], None]]:
    """Plan from a listing that remembers what it saw (a local folder; the cache lives
    in the ledger, see :mod:`refstore.sources.listing_cache`).

    With a cache the ledger agrees with (``trust_cache``: saved by an earlier run after
    it recorded what it listed, and no other writer's commits healed in since), only
    what changed is planned: the files the listing did not see before (new, replaced,
    changed), the rows of names gone since, and the ledger's unsettled rows (pending,
    quarantined as waiting or under other settings, missing). Every other file is a
    committed or settled quarantined row at the revision listed, which the plan would
    leave alone: the cost is the changes, not the folder. Otherwise every row is read.

    Returns the number of files listed, the rows the plan read, the plan, and the
    function that saves the listing (call it once the ledger recorded the plan's todo:
    a cache saved earlier could hide a revision from the next run).
    """
    from refstore.sources.listing_cache import FolderHead, ListingCache

    tree = _plan_tree(source, ledger, fingerprint, trust_cache=trust_cache)
    if tree is not None:
        return tree
    meta = f"listing:{source.url}"
    head = FolderHead.from_json(ledger.get_meta(meta + ":head")) if trust_cache else None
    state = source.folder_state() if head is not None else None  # type: ignore[attr-defined]
    if head is not None and state and head.holds(state, time.time(), source.rescan_hours):  # type: ignore[attr-defined]
        return _plan_unlisted(source, ledger, fingerprint, meta, head)
    cache = ListingCache.from_json(ledger.get_meta(meta))
    if head is not None and head.full_at == cache.full_at and head.count == len(cache.files):
        cache.was_recent = set(head.recent)  # the same listing's: trusted() by set ops
    previous, full_at = cache.files, cache.full_at
    delta = trust_cache and bool(previous)
    changed = list(source.discover(cache=cache, changed_only=delta))  # type: ignore[call-arg]
    seen = {g.key for g in changed}
    present = cache.files.keys() | seen
    if delta:
        rows = ledger.unsettled(fingerprint, WAITING)
        again = [
            source.granule(k, cache.files[k][1])  # type: ignore[attr-defined]
            for k in sorted(rows.keys() - seen)
            if k in cache.files
        ]
        rows |= ledger.rows_for(seen | (previous.keys() - present))
        listed = changed + again
    else:
        rows, listed = ledger.rows(), changed

    def remember() -> None:
        if (cache.files, cache.full_at) != (previous, full_at):
            ledger.set_meta(meta, cache.to_json())
        folder = cache.head()
        ledger.set_meta(meta + ":head", folder.to_json() if folder else "")

    plan = plan_sync(listed, rows, complete=True, fingerprint=fingerprint)
    return len(present), rows, plan, remember


def _plan_tree(
    source: Source, ledger: Ledger, fingerprint: str, *, trust_cache: bool
) -> tuple[int, dict[str, LedgerRow], SyncPlan, Callable[[], None]] | None:
    """:func:`_plan_listing` for a glob across folders, listed folder by folder
    (:mod:`refstore.sources.tree`): the plan reads the rows of what changed in the
    folders that moved, and the unsettled ones. None for a flat folder."""
    import json

    if not getattr(source, "across_folders", False):
        return None

    from refstore.sources.tree import TreeState

    meta = f"tree:{source.url}"

    def files_of(folder: str) -> dict[str, tuple[int, str]]:
        text = ledger.get_meta(f"{meta}:{folder}")
        try:
            return {k: (int(v[0]), str(v[1])) for k, v in json.loads(text or "{}").items()}
        except (ValueError, TypeError, IndexError, AttributeError):
            return {}  # unreadable: every file of the folder is stat'ed and compared

    old = TreeState.from_json(ledger.get_meta(meta)) if trust_cache else TreeState()
    listing = source.walk_tree(old, files_of)  # type: ignore[attr-defined]
    changed = listing.changed
    if old.folders:  # only what changed, and the unsettled rows
        rows = ledger.unsettled(fingerprint, WAITING)
        # Unsettled rows still there, at their current revision (not in a folder that moved).
        again = source.restat(sorted(rows.keys() - changed.keys()))  # type: ignore[attr-defined]
        rows |= ledger.rows_for(changed.keys() | listing.gone)
        listed = {**changed, **again}
    else:
        rows, listed = ledger.rows(), changed
    granules = source.granules((k, v[1]) for k, v in sorted(listed.items()))  # type: ignore[attr-defined]

    def remember() -> None:
        values: dict[str, str | None] = {meta: listing.state.to_json()}
        for folder, files in listing.files.items():
            values[f"{meta}:{folder}"] = json.dumps(
                {k: list(v) for k, v in files.items()}, separators=(",", ":")
            )
        for folder in listing.removed:
            values[f"{meta}:{folder}"] = None
        ledger.set_metas(values)

    plan = plan_sync(granules, rows, complete=True, fingerprint=fingerprint)
    return listing.count, rows, plan, remember


def _plan_unlisted(
    source: Source, ledger: Ledger, fingerprint: str, meta: str, head: Any
) -> tuple[int, dict[str, LedgerRow], SyncPlan, Callable[[], None]]:
    """:func:`_plan_listing` for a flat folder no name was added to or removed from
    since its last listing (:class:`~refstore.sources.listing_cache.FolderHead`): only
    the recently changed files and the ledger's unsettled rows are stat'ed; the folder
    is not listed and its per-file cache not loaded."""
    rows = ledger.unsettled(fingerprint, WAITING)
    from refstore.sources.listing_cache import recheck

    now = source.restat(head.recent.keys() | rows.keys())  # type: ignore[attr-defined]
    recent, changed, gone = recheck(head.recent, now)  # gone: the folder would have moved
    listed = source.granules(  # type: ignore[attr-defined]
        (k, v[1]) for k, v in sorted(now.items()) if k in changed or k in rows
    )
    rows |= ledger.rows_for(changed.keys() | gone)

    def remember() -> None:
        if recent != head.recent:
            head.recent = recent
            ledger.set_meta(meta + ":head", head.to_json())

    plan = plan_sync(listed, rows, complete=True, fingerprint=fingerprint)
    return head.count, rows, plan, remember


def sync(
    config: Config,
    *,
    tag: str | None = None,
    wait: float = 0,
    progress: ProgressFactory | None = None,
    source: Source | None = None,
) -> SyncResult:
    """Bring the store up to date with the source: one snapshot per batch of changes.

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
    with store_lock(config.ledger, wait=wait):
        ledger = Ledger(config.ledger)
        run_id = ledger.start_run()
        # A current mirror answers the head and containers without Icechunk (a no-op sync).
        known = mirror.load(config, ledger.get_meta(mirror.KEY))
        store, policy = open_bound(config, source, known=known)
        try:
            t0 = time.perf_counter()
            healed = reconcile(store, ledger)
            if healed:
                log.info("reconciled %d granule(s) from the repository history", healed)
            # An incremental source (CMR) lists only what changed since its high-water
            # mark: nothing is "missing" then, and uncommitted rows are retried.
            incremental = getattr(source, "incremental", False)
            fingerprint = dataset_fingerprint(
                config.concat_dim,
                config.group_key,
                config.loadable_variables,
                config.drop_variables,
                config.concat_from,
            )
            discovered: list[Granule] = []
            remember: Callable[[], None] | None = None
            if getattr(source, "caches_listing", False) and not incremental:
                listed, rows, plan, remember = _plan_listing(
                    source, ledger, fingerprint, trust_cache=not healed
                )
            else:
                since = ledger.high_water(source.url) if incremental else None
                listing = source.discover(since=since) if incremental else source.discover()
                discovered = list(listing)
                listed, rows = len(discovered), ledger.rows()
                plan = plan_sync(
                    discovered, rows, complete=not incremental, fingerprint=fingerprint
                )
            if not incremental:
                ledger.mark_missing(plan.missing, run_id)
            ledger.revert(plan.reverted, run_id)
            waited = [k for k in plan.requeued if rows[k].fingerprint == WAITING]
            ledger.requeue_quarantined(
                waited, reason="tried again: it was waiting for another granule"
            )
            ledger.requeue_quarantined(
                [k for k in plan.requeued if k not in waited],
                reason="the dataset settings changed",
            )
            # Granules in the store (placed by the history) are replaced in place.
            replaced = {k: rows[k].placed_revision or rows[k].revision for k in plan.replacing}
            checkpoint("after-discovery")
            ledger.record_seen(plan.todo, run_id)
            if remember is not None:
                remember()
            store, todo, refused = _keep_to_hosts(config, store, policy, plan.todo)
            todo, unnamed = _readable_names(todo)
            refused += unnamed
            ledger.quarantine(refused, run_id, fingerprint)
            on_done = progress(len(todo), "virtualizing") if progress and todo else None
            run = _Run(config, store, store.source, ledger, run_id, replaced, on_done, fingerprint)
            run.failures += refused
            run.timings["discover"] = time.perf_counter() - t0
            with open_executor(
                config.executor,
                len(todo),
                workers=config.workers,
                dask_address=config.dask_address,
            ) as run.pool:
                for chunk in batches(todo, config.batch_size):
                    run.process(chunk)
            if incremental:  # every granule listed is now committed, quarantined or queued
                marks = [g.modified for g in discovered if g.modified]
                ledger.raise_high_water(source.url, max(marks, default=None))
            export_path = None
            if store.exists() and ledger.get_meta(EXPORTED) != store.head_snapshot():
                t = time.perf_counter()
                export_path = export_head(config, store, store.source, ledger)
                run.timings["export"] = time.perf_counter() - t
            tag_refused = None
            if tag and run.snapshots:
                try:
                    store.tag(tag, run.snapshots[-1])
                except TagExistsError as e:  # the data landed; only the name is refused
                    tag_refused = e.message
                    run.warnings.append(e.message)
            mirror.refresh(config, ledger, known)  # after every commit and tag of the run
            bad = [f for f in run.failures if not f.waiting]
            problem = common_failure(bad, len(plan.todo)) if not run.added else None
            if problem is not None:
                raise ConfigError(
                    f"Every granule of this run ({len(plan.todo)}) was quarantined for the same "
                    f"reason, a configuration problem rather than bad files: {problem}",
                    "Fix [dataset] in refstore.toml (concat_dim, concat_from, group, variables); "
                    "the granules quarantined under the old settings are retried by the next "
                    "sync.",
                )
            ledger.finish_run(
                run_id,
                status="ok",
                discovered=listed,
                added=len(run.added),
                quarantined=len(run.failures),
                snapshots=run.snapshots,
                error="; ".join(run.warnings) or None,
            )
        except BaseException as e:
            ledger.finish_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            ledger.close()
    return SyncResult(
        run_id=run_id,
        discovered=listed,
        added=tuple(run.added),
        quarantined=tuple(run.failures),
        snapshots=tuple(run.snapshots),
        missing=plan.missing,
        start=run.start,
        end=run.end,
        export=export_path,
        timings=run.timings,
        warnings=tuple(run.warnings),
        tag_refused=tag_refused,
        conflicts=run.conflicts,
        placed_elsewhere=tuple(run.placed_elsewhere),
    )
