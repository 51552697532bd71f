"""Pure chunk-grid planning along the concat dim (no I/O).

A *regular* store has one chunk size along the concat dim, so every granule must cover a
whole number of chunks. A *rectilinear* store (zarr ≥ 3.4 rectilinear chunk grids) lists
one edge per chunk, so granules of any length stack: each granule contributes its own
chunks' edges — ``[c] * (n // c)`` plus a last, shorter edge ``n % c`` when its length is
not a multiple of its chunk ``c``. That shorter chunk is *padded* in the file (HDF5 stores
whole chunks), so its reference would decode to ``c`` steps, not ``n % c``: it is stored
as a native chunk (decoded from the file, re-encoded with the array's codecs) while every
other chunk stays virtual. Contiguous variables are one chunk of the granule's length.

The layout is decided when the repository is created (``[dataset] concat_chunks``) and
recorded in every refstore commit; see ``docs/layouts.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from refstore.errors import StoreError

__all__ = [
    "LAYOUTS",
    "RECTILINEAR",
    "REGULAR",
    "choose_layout",
    "granule_edges",
    "native_rows",
    "splice_edges",
    "whole_chunks_problem",
]

REGULAR = "regular"
RECTILINEAR = "rectilinear"
LAYOUTS = (REGULAR, RECTILINEAR)


def granule_edges(length: int, chunk: int) -> tuple[tuple[int, ...], bool]:
    """The chunk edges one granule of ``length`` steps in ``chunk``-step chunks gives,
    and whether its last chunk is partial (padded in the file, so stored natively)."""
    if length < 1 or chunk < 1:
        raise ValueError(f"length and chunk must be positive, got {length} and {chunk}")
    full, rest = divmod(length, chunk)
    return (chunk,) * full + ((rest,) if rest else ()), bool(rest)


def concat_chunks(signature: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Each virtual variable's chunk size along the concat dim, from a granule signature."""
    return {
        name: int(entry["concat_chunk"])
        for name, entry in signature.items()
        if entry.get("concat_chunk")
    }


def whole_chunks_problem(length: int, signature: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why a granule cannot join a *regular* store (None if it covers whole chunks)."""
    for name, chunk in concat_chunks(signature).items():
        if length % chunk:
            return (
                f"{name}: {length} steps along the concat dim are not a whole number of its "
                f"{chunk}-step chunks (a store created with [dataset] concat_chunks = "
                '"rectilinear" takes granules of any length)'
            )
    return None


def choose_layout(configured: str, granules: Iterable[tuple[int, Mapping[str, Any]]]) -> str:
    """The layout of a new store: ``configured`` unless it is ``"auto"``.

    ``auto`` gives a rectilinear grid when the first granules differ in length, or one of
    them does not cover a whole number of chunks; a regular grid otherwise (the kerchunk
    export, zarr v2, can only express a regular one).

    Parameters
    ----------
    configured
        ``[dataset] concat_chunks``.
    granules
        ``(length, signature)`` of the granules that create the store.
    """
    if configured in LAYOUTS:
        return configured
    lengths: set[int] = set()
    for length, sig in granules:
        lengths.add(length)
        if whole_chunks_problem(length, sig) is not None:
            return RECTILINEAR
    return RECTILINEAR if len(lengths) > 1 else REGULAR


def splice_edges(old: Sequence[int], start: int, new: Sequence[int]) -> tuple[int, int]:
    """Where a write from step ``start`` begins in an existing grid of edges ``old``.

    Returns ``(kept, removed)``: how many of the old chunks stay (the prefix before
    ``start``) and how many follow it (rewritten). The new grid is
    ``old[:kept] + new``.

    Raises
    ------
    StoreError
        ``start`` is not on a chunk edge (it is always a granule boundary, which a
        rectilinear store keeps as an edge).
    """
    total = 0
    for index, edge in enumerate(old):
        if total == start:
            return index, len(old) - index
        total += edge
    if total == start:
        return len(old), 0
    raise StoreError(f"Step {start} is not on a chunk edge of the store's rectilinear grid.")


def native_rows(offset: int, length: int, chunks: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """The store steps ``[start, end)`` held natively, per variable, for a granule placed
    at ``offset`` (its partial last chunk, if any)."""
    out: dict[str, tuple[int, int]] = {}
    for name, chunk in sorted(chunks.items()):
        full = length // chunk * chunk
        if full != length:
            out[name] = (offset + full, offset + length)
    return out
