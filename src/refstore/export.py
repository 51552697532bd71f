"""The kerchunk export: build refs from a snapshot (pure), then write them atomically.

Parquet exports (a folder) are written under a hidden versioned name and published by
swapping a symlink, so a reader never sees a half-written export. JSON exports are
written to a temporary file and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from refstore.errors import LayoutError, StoreError
from refstore.storage import S3Options

__all__ = [
    "build_refs",
    "fix_fill_values",
    "fix_scalar_keys",
    "unwritten_chunks",
    "write_export",
]

FORMATS = ("parquet", "json")


def build_refs(session: Any, registry: Any, native_chunks_prefix: str) -> dict[str, Any]:
    """Kerchunk refs (version 1 dict) for the dataset in an Icechunk ``session``.

    Raises
    ------
    LayoutError
        The store has a rectilinear chunk grid: zarr v2 has one chunk shape per array,
        so any export would misplace steps; refused rather than written wrong. Or the
        store is a whole hierarchy of groups (not exported; docs/layouts.md).
    """
    import warnings

    from virtualizarr.parsers import IcechunkParser

    from refstore.hierarchy import stored_groups
    from refstore.rectilinear import rectilinear_arrays

    groups = stored_groups(session.store)
    if groups:
        raise LayoutError(
            f"Not exported: the store is a hierarchy of groups ({', '.join(groups)}); "
            "refstore writes kerchunk exports of one group only.",
            "Open the Icechunk repository instead: refstore.open_datatree(config), or "
            "refstore.open_dataset(config, group=...).",
        )
    uneven = rectilinear_arrays(session.store)
    if uneven:
        raise LayoutError(
            f"Not exported: {', '.join(uneven)} have a rectilinear chunk grid (granules of "
            "uneven length), which a kerchunk export (zarr v2) cannot express."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        manifest_store = IcechunkParser().parse_session(
            session, registry, native_chunks_prefix=native_chunks_prefix
        )
        # Loaded coordinates stay as stored (decoding then re-encoding float times moves
        # them by an ulp): the export inlines the repository's own values.
        vds = manifest_store.to_virtual_dataset(decode_times=False)
        refs: dict[str, Any] = vds.vz.to_kerchunk(format="dict")
    return fix_fill_values(fix_scalar_keys(refs))


def fix_scalar_keys(refs: dict[str, Any]) -> dict[str, Any]:
    """Name the chunk of a 0-d array ``<name>/0`` as zarr v2 does (not ``<name>/``).

    VirtualiZarr renders a scalar's chunk key as ``crs/``, which kerchunk's Parquet
    writer and zarr v2 readers do not recognise.
    """
    table = {(k + "0" if k.endswith("/") else k): v for k, v in refs["refs"].items()}
    return {**refs, "refs": table}


def fix_fill_values(refs: dict[str, Any]) -> dict[str, Any]:
    """Make every zarr v2 array mask what a netCDF reader masks (CF ``_FillValue`` wins
    over the HDF5 storage fill; see :func:`refstore.cf.v2_fill_semantics`).

    Where the new ``fill_value`` differs from the storage fill, chunks the file never
    wrote (absent from the refs) are written inline, holding the storage fill as the
    file does: otherwise they would read as the CF fill (NaN) through the export.
    """
    from refstore.cf import v2_fill_semantics

    table = dict(refs["refs"])
    for key, value in refs["refs"].items():
        if not key.endswith(".zarray"):
            continue
        prefix = key[: -len(".zarray")]
        attrs = json.loads(table.get(prefix + ".zattrs", "{}"))
        meta = json.loads(value)
        materialize, storage_fill = v2_fill_semantics(meta, attrs)
        table[key] = json.dumps(meta)
        if prefix + ".zattrs" in table:
            table[prefix + ".zattrs"] = json.dumps(attrs)
        if materialize:
            table.update(unwritten_chunks(prefix, meta, storage_fill, table))
    return {**refs, "refs": table}


def unwritten_chunks(
    prefix: str, zarray: dict[str, Any], fill: Any, refs: dict[str, Any]
) -> dict[str, str]:
    """Inline refs (``base64:``) for every chunk of a v2 array absent from ``refs``,
    each holding ``fill`` encoded with the array's filters and compressor."""
    import base64
    import itertools
    import math

    import numpy as np
    from numcodecs import get_codec

    shape, chunks = zarray["shape"], zarray["chunks"]
    sep = zarray.get("dimension_separator", ".")
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    keys = (
        [f"{prefix}{sep.join(map(str, i))}" for i in itertools.product(*map(range, grid))]
        if shape
        else [f"{prefix}0"]
    )
    missing = [k for k in keys if k not in refs]
    if not missing:
        return {}
    data: Any = np.full(chunks, fill, dtype=np.dtype(zarray["dtype"])).tobytes(order="C")
    for conf in zarray.get("filters") or ():
        data = get_codec(dict(conf)).encode(data)
    if zarray.get("compressor"):
        data = get_codec(dict(zarray["compressor"])).encode(data)
    inline = "base64:" + base64.b64encode(bytes(data)).decode()
    return dict.fromkeys(missing, inline)


def write_export(
    refs: dict[str, Any],
    path: str | Path,
    fmt: str = "parquet",
    *,
    options: S3Options | None = None,
) -> Path | str:
    """Write ``refs`` to ``path`` atomically and return it.

    An ``s3://`` path is written by :func:`refstore.export_s3.write_export_s3` (a new
    version prefix, then a one-line ``LATEST`` pointer); ``options`` reach its bucket.

    Raises
    ------
    StoreError
        The export could not be written; the previous export is left untouched.
    """
    if fmt not in FORMATS:
        raise StoreError(f"Unknown export format {fmt!r}.", "Use --format parquet or json.")
    if str(path).startswith("s3://"):
        from refstore.export_s3 import write_export_s3

        return write_export_s3(refs, str(path), fmt, options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "json":
            _write_json(refs, path)
        else:
            _write_parquet(refs, path)
    except OSError as e:
        raise StoreError(
            f"Cannot write the export {path}: {e}",
            "Check that [store] export points at a writable place with free space.",
        ) from e
    return path


def respect_umask(path: Path, mode: int) -> None:
    """Give a file/folder made by ``tempfile`` (0600/0700) the mode a plain one would
    get, so other users of a shared store can read the export."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def _write_json(refs: dict[str, Any], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    respect_umask(Path(tmp), 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(refs, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# References per Parquet record file (kerchunk's default is 100,000). An append rewrites
# the record its new references fall into (:mod:`refstore.export_incremental`), so this
# bounds the cost of a +1 export: 10,000 rows, not up to 100,000 as the store grows.
RECORD_SIZE = 10_000


def _write_parquet(refs: dict[str, Any], path: Path) -> None:
    from kerchunk.df import refs_to_dataframe

    from refstore.faults import checkpoint

    if path.exists() and not path.is_symlink():
        # An export from elsewhere (or an older refstore) sits there as a real folder:
        # move it aside once so it can be swapped atomically from now on.
        legacy = path.with_name(f".{path.name}.legacy")
        shutil.rmtree(legacy, ignore_errors=True)
        path.rename(legacy)
    versions = sorted(path.parent.glob(f".{path.name}.v*"))
    import time

    # Versions are named by creation time so that sorting them by name orders them.
    target = Path(tempfile.mkdtemp(prefix=f".{path.name}.v{time.time_ns():020d}-", dir=path.parent))
    shutil.rmtree(target)  # refs_to_dataframe creates the folder itself
    try:
        refs_to_dataframe(refs, str(target), record_size=RECORD_SIZE)
        checkpoint("during-export")
        link = path.with_name(f".{path.name}.link-{os.getpid()}")
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)
        os.replace(link, path)  # atomic publish
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    # Keep the previous version for readers that opened it a moment ago.
    for old in versions[:-1]:
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    legacy = path.with_name(f".{path.name}.legacy")
    shutil.rmtree(legacy, ignore_errors=True)
