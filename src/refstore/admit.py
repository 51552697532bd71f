"""Pure rules deciding which virtualized granules of a batch may be appended.

A granule is admitted when its drift signature equals the store's, its concat-dim
values come strictly after the store's last value and after the previous admitted
granule, and it covers a whole number of chunks along the concat dim. Everything else
is quarantined with a one-line reason that names the granule, the variable and both
values. The store is never touched for a rejected granule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refstore.models import Failure
from refstore.schema import compare_signatures
from refstore.virtualize import VirtualGranule, format_value

__all__ = [
    "PER_GRANULE_ATTRS",
    "Admission",
    "admit",
    "from_json_value",
    "stable_attrs",
    "to_json_value",
]

# ACDD/CF attributes that describe one file, not the dataset: an append would otherwise
# leave the last file's values on the whole store.
PER_GRANULE_ATTRS = frozenset(
    {
        "date_created",
        "date_modified",
        "date_issued",
        "date_metadata_modified",
        "uuid",
        "history",
        "time_coverage_start",
        "time_coverage_end",
        "time_coverage_duration",
        "start_time",
        "stop_time",
        "start_date",
        "stop_date",
        "production_date_time",
        "ProductionDateTime",
        "NCO",
        "history_of_appended_files",
    }
)


def to_json_value(value: Any) -> dict[str, Any] | None:
    """A concat-dim value in a JSON-able, exactly comparable form."""
    if value is None:
        return None
    if isinstance(value, np.datetime64):
        return {"datetime64": str(np.datetime_as_string(value.astype("datetime64[ns]")))}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int | float):
        return {"number": value}
    return {"text": str(value)}


def from_json_value(value: Mapping[str, Any] | None) -> Any:
    """Inverse of :func:`to_json_value`."""
    if not value:
        return None
    if "datetime64" in value:
        return np.datetime64(value["datetime64"], "ns")
    return value.get("number", value.get("text"))


@dataclass(frozen=True)
class Admission:
    """The outcome of :func:`admit`."""

    accepted: tuple[VirtualGranule, ...]
    rejected: tuple[Failure, ...]
    signature: dict[str, dict[str, Any]]


def _chunk_problem(vg: VirtualGranule) -> str | None:
    for name, entry in vg.signature.items():
        chunk = entry.get("concat_chunk")
        if chunk and vg.length % chunk:
            return (
                f"{name}: {vg.length} steps along the concat dim are not a whole number of "
                f"its {chunk}-step chunks (a partial chunk would misalign every later append)"
            )
    return None


def _sort_key(vg: VirtualGranule) -> tuple[int, Any, str]:
    first = vg.first
    if isinstance(first, np.datetime64):
        first = first.astype("datetime64[ns]").astype(np.int64)
    return (first is None, first if first is not None else 0, vg.granule.key)


def _as_keys(values: Any) -> set[Any]:
    """Concat values as hashable, exactly comparable keys (datetimes as int ns)."""
    if values is None:
        return set()
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.datetime64):
        arr = arr.astype("datetime64[ns]").astype(np.int64)
    return set(arr.ravel().tolist())


def admit(
    granules: Iterable[VirtualGranule],
    *,
    store_signature: Mapping[str, dict[str, Any]] | None,
    store_last: Any,
    store_values: Callable[[Any, Any], Sequence[Any]] | None = None,
) -> Admission:
    """Order a batch along the concat dim and decide, granule by granule, what lands.

    Parameters
    ----------
    granules
        Virtualized granules of this batch, in any order.
    store_signature
        The signature recorded by the newest commit (None for a new store: the first
        granule admitted sets it).
    store_last
        The store's last concat-dim value (None for a new store).
    store_values
        ``store_values(lo, hi)`` returns the store's concat values in ``[lo, hi]``; asked
        only for a granule that does not come after the store's end, to tell a
        duplicate from a late granule.
    """
    accepted: list[VirtualGranule] = []
    rejected: list[Failure] = []
    reference = dict(store_signature) if store_signature else None
    last = store_last
    batch_values: set[Any] = set()
    for vg in sorted(granules, key=_sort_key):
        key = vg.granule.key
        problem = _chunk_problem(vg)
        if problem is None and reference is not None:
            diffs = compare_signatures(reference, vg.signature)
            if diffs:
                problem = "; ".join(diffs)
        if problem is None and vg.first is not None and last is not None and vg.first <= last:
            known = batch_values.copy()
            if store_values is not None:
                known |= _as_keys(store_values(vg.first, vg.last))
            dup = _as_keys(vg.values) & known
            if dup:
                problem = (
                    f"duplicate: {len(dup)} of its step(s) from {format_value(vg.first)} "
                    "are already in the store"
                )
            else:
                problem = (
                    f"starts at {format_value(vg.first)}, before the store's end "
                    f"{format_value(last)} (a late or out-of-order granule)"
                )
        if problem is not None:
            rejected.append(Failure(key=key, reason=f"{key}: {problem}"))
            continue
        if reference is None:
            reference = dict(vg.signature)
        accepted.append(vg)
        batch_values |= _as_keys(vg.values)
        if vg.last is not None:
            last = vg.last
    return Admission(accepted=tuple(accepted), rejected=tuple(rejected), signature=reference or {})


def stable_attrs(attrs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Dataset attributes worth keeping from the granules of a new store.

    Drops the known per-file attributes and any attribute whose value differs between
    the given granules. Returns the attributes kept and the names dropped.
    """
    if not attrs:
        return {}, ()
    first = attrs[0]
    dropped = {k for k in first if k in PER_GRANULE_ATTRS}
    for other in attrs[1:]:
        for k, v in first.items():
            if k not in other or not _same(other[k], v):
                dropped.add(k)
    kept = {k: v for k, v in first.items() if k not in dropped}
    return kept, tuple(sorted(dropped))


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:
        return bool(a == b)
