"""Writing virtual references into a rectilinear chunk grid along the concat dim.

VirtualiZarr 2.8 concatenates and writes only regular grids (its issue #954), so for a
rectilinear store refstore writes each granule's references itself: the array's edges
along the concat dim are the granules' own chunk edges (planned in
:mod:`refstore.chunkgrid`), each granule's manifest goes in at its first chunk index,
and a granule's partial last chunk (padded in the file) is read through its reference,
cut to its real length and written as a native Icechunk chunk with the array's codecs.

Icechunk's ``shift_array``/``reindex_array`` refuse rectilinear arrays, so a late
granule is put in place by rewriting the grid's edges from the insertion point and the
references after it (the tail), as for regular stores.

Reading needs zarr's experimental switch ``array.rectilinear_chunks``:
:func:`enable` turns it on (``refstore.open_dataset`` does; plain readers set
``zarr.config.set({"array.rectilinear_chunks": True})`` once).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from refstore.chunkgrid import granule_edges, splice_edges
from refstore.errors import StoreError

__all__ = ["enable", "is_rectilinear", "rectilinear_arrays", "write_virtual"]


def enable() -> None:
    """Let zarr read and write rectilinear chunk grids (process-wide: reads are lazy)."""
    import zarr

    zarr.config.set({"array.rectilinear_chunks": True})


def is_rectilinear(array: Any) -> bool:
    """Whether a zarr array's metadata declares a rectilinear chunk grid."""
    grid = getattr(array.metadata, "chunk_grid", None)
    return type(grid).__name__.startswith("Rectilinear")


def rectilinear_arrays(store: Any) -> list[str]:
    """Names of the arrays of the root group with a rectilinear chunk grid."""
    import zarr

    enable()
    group = zarr.open_group(store, mode="r", zarr_format=3)
    return sorted(name for name, array in group.arrays() if is_rectilinear(array))


def _axis_edges(array: Any, axis: int) -> tuple[int, ...]:
    shapes = array.metadata.chunk_grid.chunk_shapes
    edges = shapes[axis]
    if isinstance(edges, int):  # a regular axis inside a rectilinear grid
        return granule_edges(int(array.shape[axis]), edges)[0]
    return tuple(int(e) for e in edges)


def _set_grid(store: Any, name: str, array: Any, axis: int, edges: Sequence[int]) -> None:
    """Rewrite an array's metadata with new edges along ``axis`` (chunks are kept)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.metadata.v3 import RectilinearChunkGridMetadata
    from zarr.core.sync import sync

    meta = array.metadata
    shapes = list(meta.chunk_grid.chunk_shapes)
    shapes[axis] = tuple(int(e) for e in edges)
    shape = list(meta.shape)
    shape[axis] = int(sum(edges))
    new = dataclasses.replace(
        meta,
        shape=tuple(shape),
        chunk_grid=RectilinearChunkGridMetadata(chunk_shapes=tuple(shapes)),
    )
    for key, buf in new.to_buffer_dict(default_buffer_prototype()).items():
        sync(store.set(f"{name}/{key}", buf))


def _delete_chunks(store: Any, name: str, array: Any, axis: int, indices: Iterable[int]) -> None:
    """Drop the (virtual or native) chunks at ``indices`` along ``axis``."""
    from zarr.core.sync import sync

    ranges: list[Iterable[int]] = []
    for dim, size in enumerate(array.shape):
        if dim == axis:
            ranges.append(list(indices))
        else:
            chunk = array.metadata.chunk_grid.chunk_shapes[dim]
            count = math.ceil(size / chunk) if isinstance(chunk, int) else len(chunk)
            ranges.append(range(max(count, 1)))
    for index in itertools.product(*ranges):
        sync(store.delete(f"{name}/c/" + "/".join(str(i) for i in index)))


def _create(group: Any, name: str, var: Any, axis: int, edges: Sequence[int]) -> Any:
    from virtualizarr.codecs import extract_codecs
    from virtualizarr.writers.icechunk import update_attributes

    meta = var.data.metadata
    filters, serializer, compressors = extract_codecs(meta.inner_codecs)
    shape = list(meta.shape)
    shape[axis] = int(sum(edges))
    # Every axis as explicit edges: Icechunk 2.3 cannot parse a bare chunk size in a
    # rectilinear grid's chunk_shapes.
    chunks: list[Any] = [
        list(granule_edges(int(n), int(c))[0]) if n else [int(c)]
        for n, c in zip(shape, meta.chunks, strict=True)
    ]
    chunks[axis] = [int(e) for e in edges]
    array = group.create_array(
        name=name,
        shape=tuple(shape),
        chunks=chunks,
        dtype=meta.data_type.to_native_dtype(),
        filters=filters,
        compressors=compressors,
        serializer=serializer,
        dimension_names=var.dims,
        fill_value=meta.fill_value,
    )
    update_attributes(array, var.attrs, encoding=var.encoding)
    return array


def _without_last(manifest: Any, axis: int) -> Any:
    """The manifest minus its last chunk along ``axis`` (the padded one)."""
    from virtualizarr.manifests import ChunkManifest

    n = manifest.shape_chunk_grid[axis]
    cut = tuple(
        slice(0, n - 1) if d == axis else slice(None) for d in range(manifest.ndim_chunk_grid)
    )
    inlined = {k: v for k, v in manifest._inlined.items() if k[axis] < n - 1}
    return ChunkManifest.from_arrays(
        paths=manifest._paths[cut],
        offsets=manifest._offsets[cut],
        lengths=manifest._lengths[cut],
        validate_paths=False,
        inlined=inlined,
    )


def _tail_values(var: Any, name: str, axis: int, start: int, registry: Any) -> Any:
    """The raw values of ``var`` from ``start`` along ``axis``, read through its
    references (the padded chunk decodes whole; zarr cuts it to the array's length)."""
    import zarr
    from virtualizarr.manifests import ManifestArray, ManifestGroup, ManifestStore

    meta = dataclasses.replace(var.data.metadata, dimension_names=var.dims, attributes={})
    array = ManifestArray(metadata=meta, chunkmanifest=var.data.manifest)
    store = ManifestStore(ManifestGroup(arrays={name: array}, attributes={}), registry=registry)
    source: Any = zarr.open_group(store, mode="r", zarr_format=3)[name]
    region = tuple(slice(start, None) if d == axis else slice(None) for d in range(var.ndim))
    return np.asarray(source[region])


def write_virtual(
    store: Any, datasets: Sequence[Any], concat_dim: str, start: int, registry: Any
) -> None:
    """Write the virtual concat-dim variables of ``datasets`` (granules, in order) into
    rectilinear arrays from step ``start`` on; create the arrays when ``start`` is 0
    and they do not exist yet.

    Raises
    ------
    StoreError
        An array to extend is not rectilinear, or ``start`` is not a granule boundary.
    """
    import zarr
    from virtualizarr.manifests import ManifestArray
    from virtualizarr.writers.icechunk import write_manifest_to_icechunk

    enable()
    group = zarr.open_group(store, mode="a", zarr_format=3)
    first = datasets[0]
    names = [
        str(n)
        for n, v in first.variables.items()
        if isinstance(v.data, ManifestArray) and concat_dim in v.dims
    ]
    for name in names:
        axis = first.variables[name].dims.index(concat_dim)
        plans = [
            granule_edges(
                int(ds.variables[name].shape[axis]),
                int(ds.variables[name].data.metadata.chunks[axis]),
            )
            for ds in datasets
        ]
        new_edges = [e for edges, _ in plans for e in edges]
        array: Any
        if name in group:
            array = group[name]
            if not is_rectilinear(array):
                raise StoreError(
                    f"Array {name!r} has a regular chunk grid; cannot place uneven steps."
                )
            old = _axis_edges(array, axis)
            kept, removed = splice_edges(old, start, new_edges)
            if removed:
                _delete_chunks(store, name, array, axis, range(kept, kept + removed))
            _set_grid(store, name, array, axis, [*old[:kept], *new_edges])
            array = zarr.open_group(store, mode="r+", zarr_format=3)[name]
        elif start == 0:
            kept = 0
            array = _create(group, name, first.variables[name], axis, new_edges)
        else:
            raise StoreError(f"Array {name!r} is missing from the store.")
        index, step = kept, start
        for ds, (edges, partial) in zip(datasets, plans, strict=True):
            var = ds.variables[name]
            manifest = var.data.manifest
            if partial:
                manifest = _without_last(manifest, axis)
            offsets = tuple(index if d == axis else 0 for d in range(var.ndim))
            if manifest.shape_chunk_grid[axis]:
                write_manifest_to_icechunk(
                    store=store,
                    group=group,
                    arr_name=name,
                    manifest=manifest,
                    chunk_index_offsets=offsets,
                )
            if partial:
                length = int(var.shape[axis])
                cut = length - edges[-1]
                values = _tail_values(var, name, axis, cut, registry)
                region = tuple(
                    slice(step + cut, step + length) if d == axis else slice(None)
                    for d in range(var.ndim)
                )
                array[region] = values
            index += len(edges)
            step += int(var.shape[axis])
