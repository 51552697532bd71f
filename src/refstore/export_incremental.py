"""Append the references of newly committed granules to the kerchunk Parquet export.

A full export (:mod:`refstore.export`) rebuilds every reference of the store: its cost
grows with the store. When the export already holds the parent snapshot of a commit,
only the tail changes: the new chunks along the concat dim (which, with the concat dim
first, come after every existing chunk in kerchunk's C-order record layout), the
one-chunk inlined coordinates (``time``) and the dataset attributes (coverage). This
module writes exactly that:

- a new version folder beside the old one, whose untouched ``refs.<n>.parq`` files are
  hard links to the old version's (no bytes copied, the old version stays intact for
  readers that have it open);
- the record files the new chunks fall into, rewritten from the old rows plus the new;
- a new ``.zmetadata`` with the grown shapes and the store's root attributes;
- published by the same atomic symlink swap as the full export.

Anything unexpected (no export, another layout, the concat dim not first, an inlined
chunk in a manifest) makes :func:`append_export` return False, and the caller falls back
to the full export, which is always correct.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TailRefs", "append_export", "plan_records", "tail_refs"]


@dataclass(frozen=True)
class TailRefs:
    """New virtual references of one variable, in C order of the appended chunks."""

    paths: np.ndarray[Any, Any]  # str; "" for a missing chunk
    offsets: np.ndarray[Any, Any]
    lengths: np.ndarray[Any, Any]


def _strip_file(path: str) -> str:
    # As VirtualiZarr's kerchunk writer renders local URLs (file:///a -> /a).
    return path.removeprefix("file://") if path.startswith("file:///") else path


def tail_refs(datasets: Sequence[Any], name: str) -> TailRefs | None:
    """Concatenate the manifests of ``name`` over granule datasets (in append order).

    Returns None if the variable is not virtual in every dataset, or a manifest holds
    inlined chunks (rare; the full export handles them).
    """
    from virtualizarr.manifests import ManifestArray
    from virtualizarr.manifests.manifest import INLINED_CHUNK_PATH

    paths, offsets, lengths = [], [], []
    for ds in datasets:
        data = ds.variables[name].data if name in ds.variables else None
        if not isinstance(data, ManifestArray):
            return None
        m = data.manifest
        p = np.asarray(m._paths).ravel()
        if (p == INLINED_CHUNK_PATH).any():
            return None
        paths.append(p)
        offsets.append(np.asarray(m._offsets).ravel())
        lengths.append(np.asarray(m._lengths).ravel())
    if not paths:
        return None
    return TailRefs(
        paths=np.concatenate(paths),
        offsets=np.concatenate(offsets).astype(np.int64),
        lengths=np.concatenate(lengths).astype(np.int64),
    )


def plan_records(
    shape: Sequence[int], chunks: Sequence[int], old_len: int, record_size: int
) -> tuple[int, int, list[int]] | None:
    """Flat chunk-index range ``[start, stop)`` of the rows appended along axis 0, and
    the record files they fall into. None when the old length is not a whole number of
    chunks (the last old chunk would change, not just new ones appear)."""
    if not shape or old_len % chunks[0]:
        return None
    rest = math.prod(math.ceil(s / c) for s, c in zip(shape[1:], chunks[1:], strict=True))
    start = old_len // chunks[0] * rest
    stop = math.ceil(shape[0] / chunks[0]) * rest
    if stop <= start:
        return start, stop, []
    return start, stop, list(range(start // record_size, (stop - 1) // record_size + 1))


def _unravel(flat: int, grid: Sequence[int]) -> str:
    return ".".join(str(int(i)) for i in np.unravel_index(flat, tuple(grid)))


def append_export(
    path: str | Path,
    session: Any,
    datasets: Sequence[Any],
    concat_dim: str,
    old_len: int,
) -> bool:
    """Append the refs of ``datasets`` (the granules just committed) to the export.

    Parameters
    ----------
    path
        The published export (a symlink to a version folder, as the full export writes).
    session
        A read-only Icechunk session at the new snapshot (for the grown coordinate and
        root attributes; only the appended slice is read).
    datasets
        The committed granules' virtual datasets, in append order.
    concat_dim
        The dimension appended along.
    old_len
        The store's length along ``concat_dim`` before the commit; the export must hold
        exactly that (it is checked).

    Returns
    -------
    bool
        True if the export now holds the new snapshot; False if it was left untouched
        and a full export is needed.
    """
    path = Path(path)
    if not path.is_symlink() or not datasets:
        return False
    old_dir = path.parent / os.readlink(path)
    try:
        meta = json.loads((old_dir / ".zmetadata").read_bytes())
    except (OSError, ValueError):
        return False
    record_size = int(meta.get("record_size", 0))
    zmeta: dict[str, Any] = dict(meta.get("metadata", {}))
    if record_size <= 0:
        return False
    plan = _plan(zmeta, session, datasets, concat_dim, old_len, record_size)
    if plan is None:
        return False
    new_dir = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.v{time.time_ns():020d}-", dir=path.parent)
    )
    from refstore.export import respect_umask
    from refstore.faults import checkpoint

    respect_umask(new_dir, 0o777)
    try:
        _write(old_dir, new_dir, zmeta, plan, record_size)
        checkpoint("during-incremental-export")
        _publish(path, new_dir)
    except BaseException:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise
    # Keep the version just replaced for readers that opened it a moment ago.
    for old in sorted(path.parent.glob(f".{path.name}.v*")):
        if old not in (new_dir, old_dir):
            shutil.rmtree(old, ignore_errors=True)
    return True


@dataclass
class _Plan:
    meta: dict[str, dict[str, Any]]  # metadata keys to replace
    refs: dict[str, tuple[int, list[int], TailRefs | bytes]]  # name -> start, records, refs


def _plan(
    zmeta: dict[str, Any],
    session: Any,
    datasets: Sequence[Any],
    concat_dim: str,
    old_len: int,
    record_size: int,
) -> _Plan | None:
    import zarr

    group = zarr.open_group(session.store, mode="r", zarr_format=3)
    new_meta: dict[str, dict[str, Any]] = {}
    refs: dict[str, tuple[int, list[int], TailRefs | bytes]] = {}
    for key, zarray in zmeta.items():
        if not key.endswith("/.zarray"):
            continue
        name = key[: -len("/.zarray")]
        dims = zmeta.get(f"{name}/.zattrs", {}).get("_ARRAY_DIMENSIONS", [])
        if concat_dim not in dims:
            continue  # static: lat/lon/crs are not rewritten by an append either
        if dims[0] != concat_dim or zarray["shape"][0] != old_len:
            return None
        arr: Any = group[name]
        new_len = int(arr.shape[0])
        shape = [new_len, *zarray["shape"][1:]]
        if list(arr.shape) != shape:
            return None
        tail = tail_refs(datasets, name)
        if tail is not None:
            span = plan_records(shape, zarray["chunks"], old_len, record_size)
            if span is None or span[1] - span[0] != tail.paths.size:
                return None
            if (tail.paths == "").any():
                return None  # unwritten chunks may need the storage fill inline (full export)
            refs[name] = (span[0], span[2], tail)
            new_meta[key] = {**zarray, "shape": shape}
        elif _one_inlined_chunk(zarray):
            # A loaded coordinate: the full export inlines it as one chunk of raw values.
            values = np.asarray(arr[old_len:new_len])
            if values.dtype != np.dtype(zarray["dtype"]):
                return None
            refs[name] = (0, [0], values.tobytes(order="C"))
            new_meta[key] = {**zarray, "shape": shape, "chunks": shape}
        else:
            return None
    if not refs:
        return None
    attrs = dict(group.attrs)
    if "coordinates" not in zmeta.get(".zattrs", {}):
        attrs.pop("coordinates", None)
    new_meta[".zattrs"] = attrs
    return _Plan(meta=new_meta, refs=refs)


def _one_inlined_chunk(zarray: dict[str, Any]) -> bool:
    return (
        list(zarray["chunks"]) == list(zarray["shape"])
        and not zarray.get("compressor")
        and not zarray.get("filters")
    )


def _write(
    old_dir: Path, new_dir: Path, zmeta: dict[str, Any], plan: _Plan, record_size: int
) -> None:
    import fsspec
    from fsspec.implementations.reference import LazyReferenceMapper

    rewritten = {
        (new_dir / name / f"refs.{r}.parq")
        for name, (_s, recs, _t) in plan.refs.items()
        for r in recs
    }
    # Hard links: the untouched records cost a directory entry each, not a copy.
    for src in old_dir.rglob("*"):
        dest = new_dir / src.relative_to(old_dir)
        if src.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif src.name != ".zmetadata" and dest not in rewritten:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dest)
    fs = fsspec.filesystem("file")
    mapper = LazyReferenceMapper(str(old_dir), fs=fs, out_root=str(new_dir))
    mapper.zmetadata.update(plan.meta)  # shapes first: they place the chunk keys
    for name, (start, _recs, tail) in plan.refs.items():
        zarray = mapper.zmetadata[f"{name}/.zarray"]
        grid = [math.ceil(s / c) for s, c in zip(zarray["shape"], zarray["chunks"], strict=True)]
        if isinstance(tail, bytes):
            old_raw = mapper[f"{name}/{_unravel(0, grid or [1])}"]
            mapper[f"{name}/{_unravel(0, grid or [1])}"] = _raw(old_raw) + tail
            continue
        for j in np.flatnonzero(tail.paths != ""):
            mapper[f"{name}/{_unravel(start + int(j), grid)}"] = [
                _strip_file(str(tail.paths[j])),
                int(tail.offsets[j]),
                int(tail.lengths[j]),
            ]
    mapper.flush()


def _raw(value: Any) -> bytes:
    from kerchunk.df import _proc_raw

    return bytes(_proc_raw(value))


def _publish(path: Path, target: Path) -> None:
    link = path.with_name(f".{path.name}.link-{os.getpid()}")
    link.unlink(missing_ok=True)
    link.symlink_to(target.name)
    os.replace(link, path)  # atomic: readers see the old or the new version, whole
