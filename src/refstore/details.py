"""Each commit's per-granule lists, kept in the store as one element of a native array.

Icechunk 2 keeps the metadata of every snapshot in the repository's one mutable object
(``<repo>/repo``), which every open reads and every commit decodes and rewrites. A commit
metadata that lists its granules therefore makes every later commit and open pay for
every granule ever committed (at 100,000 granules in 1,000-granule batches: 26 MB decoded,
0.8 MB compressed, the +1 commit 0.04 s -> 0.16 s). So a commit's metadata holds only its
fixed-size summary (:func:`refstore.batch.split_metadata`), and its per-granule lists
(keys, revisions, urls, offsets, lengths, first/last values) are one JSON element of the
array :data:`ARRAY` in the same commit: written atomically with the references they
describe, read back only when the ledger is reconciled or the history audited, and never
by an open, a ``log`` or a commit.

The array lives in the group :data:`GROUP` (a name no granule's group has: a leading
dot), which :func:`refstore.hierarchy.stored_groups` leaves out; its one dimension is
:data:`DIM`, split in manifests of :data:`SPLIT` elements so each commit rewrites a
small manifest. Element ``i`` is the ``i``-th refstore commit in the ancestry of any
snapshot that holds it: a branch reset to an older snapshot also resets the array.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["ARRAY", "DIM", "GROUP", "SPLIT", "append", "read"]

GROUP = ".refstore"
ARRAY = f"{GROUP}/details"
DIM = "refstore_commit"
SPLIT = 1000  # elements per manifest split (one element a commit)


def append(store: Any, detail: dict[str, Any]) -> int:
    """Write ``detail`` as the next element in a writable session's ``store``; its index."""
    import zarr

    root = zarr.open_group(store, mode="r+", zarr_format=3)
    group = root.require_group(GROUP)
    if "details" in group:
        array = group["details"]
        assert isinstance(array, zarr.Array)
    else:
        array = group.create_array(
            "details", shape=(0,), chunks=(1,), dtype=str, dimension_names=[DIM]
        )
    at = int(array.shape[0])
    array.resize((at + 1,))
    array[at] = json.dumps(detail, separators=(",", ":"))
    return at


def read(store: Any, indices: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The elements ``indices`` of a session's ``store`` (those it holds), decoded."""
    import numpy as np
    import zarr

    wanted = sorted(set(indices))
    if not wanted:
        return {}
    root = zarr.open_group(store, mode="r", zarr_format=3)
    try:
        array = root[ARRAY]
    except KeyError:
        return {}
    assert isinstance(array, zarr.Array)
    held = [i for i in wanted if 0 <= i < array.shape[0]]
    if not held:
        return {}
    values = np.atleast_1d(np.asarray(array.get_coordinate_selection(held)))
    return {i: json.loads(str(v)) for i, v in zip(held, values.tolist(), strict=True)}
