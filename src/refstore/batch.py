"""What one commit writes: the combined dataset and the commit metadata (no I/O).

The metadata is the source of truth the ledger is reconciled against: for every
granule whose references this commit wrote, its key, revision, url, offset and length
along the concat dim and its first/last concat values; plus the store's range, its
drift signature and the attributes dropped as per-granule.

Only the fixed-size part goes into the Icechunk commit metadata (:func:`split_metadata`):
Icechunk 2 keeps every snapshot's metadata in its one mutable ``repo`` object, which
every open reads and every commit rewrites, so per-granule lists there made each commit
cost O(granules ever committed) (measured: 26 MB decoded per commit at 100,000
granules, the commit 0.04 s -> 0.16 s). The per-granule part is written in the same
commit as one element of a native array (:mod:`refstore.details`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from refstore.admit import placed_value, to_json_value
from refstore.models import CommitInfo, Placement
from refstore.virtualize import VirtualGranule, format_value

__all__ = [
    "DEFAULT_COORD_CHUNK",
    "choose_coord_chunk",
    "combine",
    "commit_info",
    "commit_metadata",
    "coverage",
    "merge_metadata",
    "placements",
    "prepare_encoding",
    "split_metadata",
    "split_unchanged_tail",
]

DEFAULT_COORD_CHUNK = 1024
METADATA_VERSION = 3  # 3: the per-granule lists moved out (DETAIL_KEYS, "detail_at")
# Per-granule fields: written as a commit's detail element, not in its metadata.
DETAIL_KEYS = (
    "granules",
    "revisions",
    "urls",
    "offsets",
    "lengths",
    "firsts",
    "lasts",
    "native",
    "added",
    "replaced",
)


def choose_coord_chunk(configured: int | None, granules: Sequence[VirtualGranule]) -> int:
    """About a year of steps for the loaded concat coordinate (and manifest splits).

    A large chunk keeps opening a decades-long store to a few chunk reads (the files'
    own chunk is often 1 step, or 1,048,576). Inferred from the median step when the
    coordinate is a datetime; ``DEFAULT_COORD_CHUNK`` otherwise.
    """
    if configured:
        return configured
    values = [v for vg in granules if vg.values is not None for v in np.atleast_1d(vg.values)]
    if len(values) >= 2 and isinstance(values[0], np.datetime64):
        steps = np.diff(np.array(values, dtype="datetime64[ns]")).astype(np.int64)
        positive = steps[steps > 0]
        if positive.size:
            per_year = round(365.25 * 86400e9 / float(np.median(positive)))
            return max(16, min(per_year, 100_000))
    return DEFAULT_COORD_CHUNK


def combine(
    granules: Sequence[VirtualGranule],
    concat_dim: str,
    *,
    drop_static: bool,
    virtual: bool = True,
) -> Any:
    """Concatenate virtual datasets along ``concat_dim``.

    ``drop_static`` leaves out variables without the concat dim: they were checked
    equal to the store's and rewriting them on append would silently overwrite lat/lon
    for all past data. ``virtual=False`` leaves out the virtual variables with the
    concat dim (a rectilinear store writes them granule by granule).
    """
    import xarray as xr
    from virtualizarr.manifests import ManifestArray

    datasets = [vg.dataset for vg in granules]
    if not virtual:
        datasets = [
            d.drop_vars(
                [
                    n
                    for n, v in d.variables.items()
                    if isinstance(v.data, ManifestArray) and concat_dim in v.dims
                ]
            )
            for d in datasets
        ]
    ds = (
        datasets[0]
        if len(datasets) == 1 or concat_dim not in datasets[0].dims
        else xr.concat(
            datasets,
            dim=concat_dim,
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="override",
            combine_attrs="override",
        )
    )
    if drop_static:
        ds = ds.drop_vars([n for n, v in ds.variables.items() if concat_dim not in v.dims])
    return ds


def prepare_encoding(ds: Any, concat_dim: str, coord_chunk: int | None) -> None:
    """Drop the files' chunk hints; give the concat coordinate ``coord_chunk``."""
    for name, var in ds.variables.items():
        for key in ("preferred_chunks", "chunksizes"):
            var.encoding.pop(key, None)
        if name == concat_dim:
            if coord_chunk is None:
                var.encoding.pop("chunks", None)
            else:
                var.encoding["chunks"] = (coord_chunk,)


def coverage(first: Any, last: Any) -> dict[str, str]:
    """ACDD ``time_coverage_start``/``end`` for a datetime concat coordinate."""
    if isinstance(first, np.datetime64) and isinstance(last, np.datetime64):
        return {
            "time_coverage_start": f"{format_value(first)}Z",
            "time_coverage_end": f"{format_value(last)}Z",
        }
    return {}


def placements(granules: Sequence[VirtualGranule], offset: int) -> list[Placement]:
    """Where ``granules`` sit when written in order from ``offset``."""
    out = []
    for vg in granules:
        out.append(
            Placement(
                key=vg.granule.key,
                revision=vg.granule.revision,
                url=vg.granule.url,
                offset=offset,
                length=vg.length,
                first=json.dumps(to_json_value(vg.first)) if vg.first is not None else None,
                last=json.dumps(to_json_value(vg.last)) if vg.last is not None else None,
            )
        )
        offset += vg.length
    return out


def commit_metadata(
    *,
    run_id: str,
    placed: Sequence[Placement],
    added: Sequence[str],
    replaced: Sequence[str],
    rewrite_from: int | None,
    store_first: Any,
    store_last: Any,
    store_length: int,
    signature: dict[str, Any],
    attrs_dropped: Sequence[str],
    layout: str = "regular",
    native: Sequence[dict[str, tuple[int, int]]] = (),
) -> dict[str, Any]:
    """The JSON metadata of a refstore commit (see the module docstring)."""
    return {
        "version": METADATA_VERSION,
        "run_id": run_id,
        "count": len(placed),
        "granules": [p.key for p in placed],
        "revisions": [p.revision for p in placed],
        "urls": [p.url for p in placed],
        "offsets": [p.offset for p in placed],
        "lengths": [p.length for p in placed],
        "firsts": [p.first for p in placed],
        "lasts": [p.last for p in placed],
        "start": format_value(placed_value(placed[0].first)) if placed else None,
        "end": format_value(placed_value(placed[-1].last)) if placed else None,
        "added": list(added),
        "replaced": list(replaced),
        "rewrite_from": rewrite_from,
        "store_first": to_json_value(store_first),
        "store_last": to_json_value(store_last),
        "store_length": store_length,
        "signature": signature,
        "attrs_dropped": list(attrs_dropped),
        "concat_chunks": layout,
        # Per placed granule: variable -> [start, end) store steps held as native chunks.
        "native": [{k: list(v) for k, v in n.items()} for n in native],
    }


def split_metadata(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(summary, detail)`` of :func:`commit_metadata`'s dict: the summary (fixed size)
    is the Icechunk commit metadata, the detail (per-granule lists) its detail element."""
    summary = {k: v for k, v in meta.items() if k not in DETAIL_KEYS}
    return summary, {k: meta[k] for k in DETAIL_KEYS if k in meta}


def merge_metadata(summary: dict[str, Any], detail: dict[str, Any] | None) -> dict[str, Any]:
    """The whole metadata again from its two parts (``detail`` None: not loaded)."""
    return {**summary, **(detail or {})}


def commit_info(snapshot: str, message: str, written_at: str, meta: dict[str, Any]) -> CommitInfo:
    """Read a commit's metadata back (any version refstore wrote). Without its detail
    (version 3, not merged in), the commit's granules are a count and ``detail_at``."""
    keys = tuple(meta.get("granules", ()))
    n = len(keys)
    revisions = tuple(meta.get("revisions", ("",) * n))
    placed: tuple[Placement, ...] = ()
    if "offsets" in meta and "lengths" in meta:
        native: list[dict[str, list[int]]] = meta.get("native") or [{}] * n
        placed = tuple(
            Placement(
                key,
                rev,
                url,
                offset,
                length,
                first,
                last,
                tuple((name, int(s), int(e)) for name, (s, e) in sorted(rows.items())),
            )
            for key, rev, url, offset, length, first, last, rows in zip(
                keys,
                revisions,
                meta.get("urls", ("",) * n),
                meta["offsets"],
                meta["lengths"],
                meta.get("firsts", (None,) * n),
                meta.get("lasts", (None,) * n),
                native,
                strict=True,
            )
        )
    firsts = [p.first for p in placed if p.first]
    return CommitInfo(
        snapshot=snapshot,
        message=message,
        written_at=written_at,
        granules=keys,
        revisions=revisions,
        start=meta.get("start") or (format_value(placed_value(firsts[0])) if firsts else None),
        end=meta.get("end") or (format_value(placed_value(placed[-1].last)) if placed else None),
        run_id=meta.get("run_id"),
        placements=placed,
        count=int(meta.get("count", n)),
        detail_at=None if "granules" in meta else _int_or_none(meta.get("detail_at")),
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def split_unchanged_tail[T](
    sequence: Sequence[T | Placement], start: int
) -> tuple[list[T | Placement], list[Placement]]:
    """Split a rewrite's sequence into what must be written and the committed granules
    after the last change that keep their offsets (their references stay as they are).

    A revision of the same length changes one granule's references only: nothing after
    it moves, so nothing after it needs to be re-read from its source (which may be
    broken or gone meanwhile).
    """
    offset, last_change = start, -1
    for index, item in enumerate(sequence):
        if not isinstance(item, Placement) or item.offset != offset:
            last_change = index
        offset += item.length if isinstance(item, Placement) else _length(item)
    kept = list(sequence[: last_change + 1])
    tail = [p for p in sequence[last_change + 1 :] if isinstance(p, Placement)]
    return kept, tail


def _length(item: Any) -> int:
    return int(item.length)
