"""``refstore verify``: prove that what the store serves equals the source files.

Reads N random steps through the repository and the export (raw values, so packing
cannot hide a difference, and decoded values: NaN mask and dtype included) and straight
from the source files with a netCDF reader, compares the export's variables and dtypes
with the repository's, reports the NaN fraction per variable, and checks every
referenced source's revision (size+mtime, ETag or CMR revision) against the ledger.
References are written with Icechunk's per-reference checksum (the parse time), so a
source file changed after ingest fails loudly on read instead of serving wrong bytes;
verify reports such chunks as changed.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from refstore.compare import difference
from refstore.config import Config
from refstore.hierarchy import group_of
from refstore.models import CommitInfo, Placement

__all__ = ["VerifyReport", "layout_at", "verify"]


@dataclass
class VerifyReport:
    """What ``verify`` checked and found."""

    snapshot: str
    granules: int
    chunks_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    nan_fraction: dict[str, float] = field(default_factory=dict)  # per variable, decoded
    published: list[str] = field(default_factory=list)  # publish's open snippets that ran
    notes: list[str] = field(default_factory=list)  # worth knowing, not a difference

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not (self.mismatches or self.changed or self.missing)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "snapshot": self.snapshot,
            "granules": self.granules,
            "chunks_checked": self.chunks_checked,
            "ok": self.ok,
            "mismatches": self.mismatches,
            "changed": self.changed,
            "missing": self.missing,
            "nan_fraction": self.nan_fraction,
            "published": self.published,
            "notes": self.notes,
        }


def layout_at(commits: Iterable[CommitInfo]) -> list[Placement]:
    """The granules in the store after ``commits`` (oldest first), in concat order.

    A commit that rewrote from an offset replaced every placement from there on.
    """
    placed: dict[str, Placement] = {}
    for c in commits:
        if c.placements:
            start = min(p.offset for p in c.placements)
            rewritten = {p.key for p in c.placements}
            placed = {k: p for k, p in placed.items() if p.offset < start and k not in rewritten}
            placed.update({p.key: p for p in c.placements})
    return sorted(placed.values(), key=lambda p: p.offset)


def _open_source(source: Any, url: str, **kwargs: Any) -> Any:
    import obstore
    import xarray as xr

    store, path = source.registry().resolve(url)
    data = bytes(obstore.get(store, path).bytes())
    engine = "scipy" if data[:3] == b"CDF" else "h5netcdf"
    return xr.open_dataset(io.BytesIO(data), engine=engine, **kwargs)


def _open_scoped(source: Any, url: str, group: str, name: str, **kwargs: Any) -> Any:
    """The file's ``group`` opened, or the nearest parent group holding ``name`` (a
    variable the store took from a parent group: netCDF scoping)."""
    from refstore.virtualize import parent_groups

    wheres = [group, *parent_groups(group)] if group else [""]
    for where in wheres[:-1]:
        ds = _open_source(source, url, group=where, **kwargs)
        if name in ds.variables:
            return ds
        ds.close()
    last = wheres[-1]
    return _open_source(source, url, **({"group": last} if last else {}), **kwargs)


def verify(
    config: Config,
    *,
    sample: int = 10,
    at: str | None = None,
    seed: int | None = None,
    published: str | None = None,
) -> VerifyReport:
    """Compare ``sample`` random chunks and every source revision; see the module doc.

    What ``refstore publish`` wrote (in ``published``, default: beside the export, when
    it is there) is checked at the head: its open code runs in fresh interpreters and
    must open what the repository holds.

    Raises
    ------
    NotFoundError
        No repository yet, or ``at`` matches nothing.
    """
    import numpy as np

    from refstore.api import open_store
    from refstore.ledger import Ledger
    from refstore.maintenance import check_not_expired, full_history

    store = open_store(config)
    source = store.source
    if at is not None:
        check_not_expired(config, store, at)
    snapshot = store.resolve(at)
    from refstore.errors import RefstoreError

    ledger = Ledger(config.ledger, readonly=True)
    try:
        known = ledger.rows()
        # gc may have expired the commits that placed the oldest granules: the ledger kept them
        layout = layout_at(full_history(store, ledger, snapshot))
    finally:
        ledger.close()
    report = VerifyReport(snapshot=snapshot, granules=len(layout))

    try:
        current = {g.key: g.revision for g in source.discover()}
    except RefstoreError as e:  # an unreachable source is a finding, not a crash
        report.missing.append(f"source: {e.message}")
        return report
    for p in layout:
        if p.key not in current:
            report.missing.append(f"{p.key}: no longer in the source")
        elif current[p.key] != p.revision:
            ledger_rev = known[p.key].revision if p.key in known else "?"
            report.changed.append(
                f"{p.key}: source revision {current[p.key]} differs from the one referenced "
                f"({p.revision}; ledger {ledger_rev})"
            )

    raw = {"mask_and_scale": False, "decode_times": False}
    groups = store.groups(snapshot) if config.hierarchy else []
    served = {"repository (raw)": _flat(store, snapshot, groups, **raw)}
    served["repository"] = _flat(store, snapshot, groups)
    if at is None or snapshot == store.head_snapshot():
        served.update(_export(config, served["repository"], report))
        _published(config, published, served["repository"], snapshot, report)
    ds = served["repository (raw)"]
    dim = config.concat_dim
    names = [str(n) for n, v in ds.data_vars.items() if dim in v.dims]
    rnd = random.Random(seed)
    total = sum(p.length for p in layout)
    unreadable = {m.split(":")[0] for m in report.missing + report.changed}
    nans: dict[str, list[int]] = {}
    picks = [
        (rnd.choice(names), rnd.randrange(total)) for _ in range(sample if names and total else 0)
    ]
    # Native chunks (partial boundary chunks of a rectilinear store) were decoded and
    # re-encoded by refstore: up to ``sample`` of them are checked besides.
    native = [(n, s) for p in layout for n, s, _ in p.native if n in names]
    picks += rnd.sample(native, min(sample, len(native)))
    for name, index in picks:
        p = next(p for p in layout if p.offset <= index < p.offset + p.length)
        where = f"{name}[{dim}={index}] ({p.key}, step {index - p.offset})"
        if p.key in unreadable:
            continue
        for label, view in served.items():
            decoded = "raw" not in label
            try:
                got = np.asarray(view[name].isel({dim: index}).values)
            except Exception as e:  # Icechunk refuses references to a modified source
                report.mismatches.append(f"{where}: unreadable through the {label}: {e}")
                continue
            group, base = group_of(name) if groups else (config.single_group, name)
            with _open_scoped(source, p.url, group, base, **({} if decoded else raw)) as direct:
                var = direct[base]
                # A file without the concat dim (concat_from) holds its one step whole.
                step = var.isel({dim: index - p.offset}) if dim in var.dims else var
                expected = np.asarray(step.values)
                # Decoded only: the store holds later granules' times in the first's units.
                coord = (
                    _coordinate_problem(view, direct, dim, index, index - p.offset)
                    if decoded
                    else None
                )
            problem = difference(got, expected)
            if problem:
                report.mismatches.append(f"{where}: {problem} through the {label}")
            if coord:
                report.mismatches.append(
                    f"{dim}[{index}] ({p.key}, step {index - p.offset}): {coord} through the "
                    f"{label}; if it was placed from its DMR++ sidecar (refstore.derive), the "
                    "sidecar's attributes disagree with the file: report it to its publisher "
                    "and re-place the granule from the file (sync with [source] dmrpp = "
                    '"never" into a new store)'
                )
            if label == "repository" and got.dtype.kind == "f":
                counts = nans.setdefault(name, [0, 0])
                counts[0] += int(np.isnan(got).sum())
                counts[1] += got.size
        report.chunks_checked += 1
    report.nan_fraction = {n: round(c[0] / c[1], 6) for n, c in sorted(nans.items()) if c[1]}
    return report


def _coordinate_problem(view: Any, direct: Any, dim: str, index: int, step: int) -> str | None:
    """How the concat coordinate at ``index`` of ``view`` differs from the file's at
    ``step`` (a sidecar-derived value is checked here: refstore.derive); None if equal or
    the file has no such coordinate (concat_from)."""
    import numpy as np

    if dim not in view.variables or dim not in direct.variables or dim not in direct[dim].dims:
        return None
    got = np.asarray(view[dim].isel({dim: index}).values)
    return difference(got, np.asarray(direct[dim].isel({dim: step}).values))


def _flat(store: Any, snapshot: str, groups: list[str], **kwargs: Any) -> Any:
    """The repository at ``snapshot`` as one dataset, a hierarchy's group variables
    named with their group path (:mod:`refstore.hierarchy`)."""
    ds = store.open_dataset(snapshot, **kwargs)
    if not groups:
        return ds
    import xarray as xr

    variables = dict(ds.variables)
    for group in groups:
        part = store.open_dataset(snapshot, group=group, **kwargs)
        variables.update({f"{group}/{n}": v for n, v in part.variables.items()})
    return xr.Dataset(variables, attrs=ds.attrs)


def _published(
    config: Config, folder: str | None, head: Any, snapshot: str, report: VerifyReport
) -> None:
    """Run what ``refstore publish`` wrote (see :func:`refstore.publish.check_published`)."""
    import json
    from pathlib import Path

    from refstore.errors import ConfigError
    from refstore.publish import STAC_FILE, check_published, default_folder
    from refstore.publish_render import SNIPPET_FILE

    if folder is None:
        try:
            where = default_folder(config)
        except ConfigError:
            return
        if not (where / SNIPPET_FILE).exists():
            return  # never published here
    else:
        where = Path(folder)
    checked, problems = check_published(config, where, head)
    report.published = checked
    report.mismatches += problems
    try:
        stac = json.loads((where / STAC_FILE).read_text())
        seen = (stac.get("refstore:last_snapshot") or {}).get("snapshot")
    except (OSError, ValueError):
        return
    if seen != snapshot:
        report.notes.append(
            f"published: {where / STAC_FILE} describes snapshot {seen}, the head is "
            f"{snapshot}; run `refstore publish` to refresh the page"
        )


def _export(config: Config, repo: Any, report: VerifyReport) -> dict[str, Any]:
    """The export opened as plain fsspec users open it, after checking that its variables,
    dims and dtypes are the repository's (reported as mismatches)."""
    import os

    from refstore.api import open_dataset

    if not str(config.export).startswith("s3://") and not os.path.exists(config.export):
        return {}
    try:
        export = open_dataset(config, source="export")
        export_raw = open_dataset(config, source="export", mask_and_scale=False, decode_times=False)
    except Exception as e:
        report.mismatches.append(f"export: cannot be opened: {type(e).__name__}: {e}")
        return {}
    for name, var in repo.variables.items():
        if name not in export.variables:
            report.mismatches.append(f"export: variable {name} is missing")
        elif export[name].dims != var.dims or export[name].dtype != var.dtype:
            report.mismatches.append(
                f"export: {name} is {export[name].dtype} {export[name].dims}, "
                f"the repository's is {var.dtype} {var.dims}"
            )
    return {"export": export, "export (raw)": export_raw}
