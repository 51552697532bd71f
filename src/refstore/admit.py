"""Pure rules deciding which virtualized granules of a batch may be appended.

A granule is admitted when its drift signature equals the store's, its concat-dim
values come strictly after the store's last value and after the previous admitted
granule, and — in a store with a regular chunk grid along the concat dim — it covers a
whole number of chunks (a rectilinear store takes any length). Everything else
is quarantined with a one-line reason that names the granule, the variable and both
values. The store is never touched for a rejected granule.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refstore.chunkgrid import RECTILINEAR, REGULAR, whole_chunks_problem
from refstore.models import Failure, Placement
from refstore.schema import compare_signatures
from refstore.virtualize import VirtualGranule, format_value

__all__ = [
    "PER_GRANULE_ATTRS",
    "Admission",
    "admit",
    "from_json_value",
    "order_key",
    "placed_value",
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
    """The outcome of :func:`admit`.

    ``accepted`` are the batch's granules that land. With ``rewrite_from`` None they
    are appended in order; otherwise the store is rewritten from that index along the
    concat dim with ``sequence`` (new granules and the already committed ones after the
    first change, in order; the latter are :class:`Placement`s to re-read).
    """

    accepted: tuple[VirtualGranule, ...]
    rejected: tuple[Failure, ...]
    signature: dict[str, dict[str, Any]]
    rewrite_from: int | None = None
    sequence: tuple[VirtualGranule | Placement, ...] = ()


def _comparable(signature: Mapping[str, dict[str, Any]], layout: str) -> dict[str, dict[str, Any]]:
    """A signature as admission compares it: in a rectilinear store the chunk size along
    the concat dim is the granule's own business (each granule brings its edges)."""
    if layout != RECTILINEAR:
        return dict(signature)
    out: dict[str, dict[str, Any]] = {}
    for name, entry in signature.items():
        entry = dict(entry)
        if entry.pop("concat_chunk", None) is not None and "chunks" in entry:
            axis = entry["shape"].index(None)  # the concat dim's place (schema.signature)
            entry["chunks"] = [None if i == axis else c for i, c in enumerate(entry["chunks"])]
        out[name] = entry
    return out


def order_key(value: Any) -> Any:
    """A concat value as a plain comparable number (datetimes as int nanoseconds)."""
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ns]").astype(np.int64))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _sort_key(vg: VirtualGranule) -> tuple[int, Any, str]:
    first = order_key(vg.first)
    return (first is None, first if first is not None else 0, vg.granule.key)


def placed_value(text: str | None) -> Any:
    """A :class:`Placement` first/last JSON text back as a concat value."""
    return from_json_value(json.loads(text)) if text else None


@dataclass
class _Slot:
    """One granule on the timeline being built: committed (Placement) or new."""

    first: Any
    last: Any
    length: int
    item: VirtualGranule | Placement

    @property
    def key(self) -> str:
        return self.item.granule.key if isinstance(self.item, VirtualGranule) else self.item.key

    def shown(self, which: str) -> str | None:
        if isinstance(self.item, VirtualGranule):
            return format_value(self.item.first if which == "first" else self.item.last)
        return format_value(placed_value(self.item.first if which == "first" else self.item.last))


def _placed_slot(p: Placement) -> _Slot:
    first, last = placed_value(p.first), placed_value(p.last)
    return _Slot(order_key(first), order_key(last), p.length, p)


def _insert(timeline: list[_Slot], slot: _Slot) -> str | None:
    """Insert ``slot`` at its sorted place, or say why it cannot go there."""
    pos = 0
    while pos < len(timeline) and timeline[pos].first < slot.first:
        pos += 1
    for neighbour in timeline[max(0, pos - 1) : pos + 1]:
        if slot.last < neighbour.first or slot.first > neighbour.last:
            continue
        if slot.first == neighbour.first:
            return (
                f"duplicate: its steps from {slot.shown('first')} are already in the store "
                f"(granule {neighbour.key})"
            )
        return (
            f"overlaps granule {neighbour.key} "
            f"({neighbour.shown('first')} .. {neighbour.shown('last')})"
        )
    timeline.insert(pos, slot)
    return None


def admit(
    granules: Iterable[VirtualGranule],
    *,
    store_signature: Mapping[str, dict[str, Any]] | None,
    store_last: Any,
    store_length: int = 0,
    replaced: Collection[str] = (),
    placements: Callable[[], Sequence[Placement]] | None = None,
    layout: str = REGULAR,
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
    store_length
        The store's length along the concat dim.
    replaced
        Keys of committed granules whose source was revised (to replace in place).
    placements
        Returns the committed granules in order; asked only when a granule must go
        before the store's end (late, out of order, or revised).
    layout
        The store's chunk grid along the concat dim (:mod:`refstore.chunkgrid`): a
        regular one takes whole chunks only; a rectilinear one any length.
    """
    rejected: list[Failure] = []
    reference = _comparable(store_signature, layout) if store_signature else None
    good: list[VirtualGranule] = []
    for vg in sorted(granules, key=_sort_key):
        problem = whole_chunks_problem(vg.length, vg.signature) if layout == REGULAR else None
        if problem is None and reference is not None:
            diffs = compare_signatures(reference, _comparable(vg.signature, layout))
            if diffs:
                problem = "; ".join(diffs)
        if problem is not None:
            rejected.append(Failure(key=vg.granule.key, reason=f"{vg.granule.key}: {problem}"))
            continue
        if reference is None:
            reference = _comparable(vg.signature, layout)
        good.append(vg)

    appends: list[VirtualGranule] = []
    placed: list[VirtualGranule] = []  # late, out-of-order or revised
    last = order_key(store_last)
    for vg in good:
        first = order_key(vg.first)
        if vg.granule.key in replaced:
            placed.append(vg)
        elif first is None or last is None or first > last:
            appends.append(vg)
            last = order_key(vg.last) if vg.last is not None else last
        else:
            placed.append(vg)
    if not placed:
        return Admission(tuple(appends), tuple(rejected), reference or {})

    existing = list(placements()) if placements is not None else []
    if sum(p.length for p in existing) != store_length or any(not p.first for p in existing):
        rejected += [
            Failure(
                vg.granule.key,
                f"{vg.granule.key}: starts at {format_value(vg.first)}, before the store's end "
                f"{format_value(store_last)}, and the ledger lacks the positions needed to put "
                "it in place",
            )
            for vg in placed
        ]
        return Admission(tuple(appends), tuple(rejected), reference or {})

    # Only revisions that were re-read in this batch leave their old place; one that
    # failed to virtualize keeps its old references.
    replacing = {vg.granule.key for vg in placed} & set(replaced)
    timeline = [_placed_slot(p) for p in existing if p.key not in replacing]
    keep_old = {p.key: _placed_slot(p) for p in existing if p.key in replacing}
    accepted: list[VirtualGranule] = []
    for vg in sorted(placed + appends, key=_sort_key):
        problem = _insert(timeline, _Slot(order_key(vg.first), order_key(vg.last), vg.length, vg))
        if problem is None:
            accepted.append(vg)
            keep_old.pop(vg.granule.key, None)
            continue
        key = vg.granule.key
        rejected.append(Failure(key, f"{key}: {problem}"))
        if key in keep_old:  # a revision that does not fit keeps the old references
            _insert(timeline, keep_old.pop(key))
    if store_length == 0:  # a new store: overlapping granules of its first batch, all new
        return Admission(tuple(accepted), tuple(rejected), reference or {})
    # The unchanged prefix stays; everything from the first change on is rewritten.
    offset = 0
    for index, slot in enumerate(timeline):
        item = slot.item
        if isinstance(item, VirtualGranule) or item.offset != offset:
            return Admission(
                tuple(accepted),
                tuple(rejected),
                reference or {},
                rewrite_from=offset,
                sequence=tuple(s.item for s in timeline[index:]),
            )
        offset += slot.length
    return Admission((), tuple(rejected), reference or {})


def stable_attrs(attrs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Dataset attributes worth keeping from the granules of a new store.

    Drops the known per-file attributes and any attribute whose value differs between
    the given granules. Returns the attributes kept and the names dropped.
    """
    if not attrs:
        return {}, ()
    first = attrs[0]
    # A hierarchy's group attributes are named with their group path (refstore.hierarchy)
    dropped = {k for k in first if str(k).rpartition("/")[2] in PER_GRANULE_ATTRS}
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
