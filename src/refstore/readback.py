"""Readback at admission: a granule's references must decode to what the file holds.

Before a granule of a new *encoding signature* lands (variables x dtype x codec chain x
chunk shape x fill value x packing), one chunk at each corner of every virtual variable
is read through its references, the way each output serves it — as the Icechunk store
does (zarr v3 metadata) and as the kerchunk export does (zarr v2 metadata with refstore's
fill rules) — and compared with the file's own read (``xr.open_dataset`` with h5netcdf,
or scipy for netCDF-3): raw values, decoded values, NaN mask and dtype. Any difference
quarantines the granule with the variable and what differs; a granule whose references
cannot be decoded never reaches a commit. A signature that passed is remembered, so the
cost is paid once per signature, not once per granule.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from refstore.compare import difference
from refstore.virtualize import VirtualGranule

__all__ = ["encoding_key", "readback"]

# What decides how a chunk decodes; lat/lon values and shapes off the concat dim do not.
_ENCODING = (
    "dims",
    "dtype",
    "chunks",
    "codecs",
    "fill_value",
    "scale_factor",
    "add_offset",
    "units",
)


def encoding_key(signature: dict[str, dict[str, Any]]) -> str:
    """A stable hash of a granule signature's encoding part (see the module doc)."""
    part = {
        name: {k: entry[k] for k in _ENCODING if k in entry}
        for name, entry in sorted(signature.items())
    }
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:20]


def _regions(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """The first and the last chunk of an array, as index regions."""
    if not shape or 0 in shape:
        yield tuple(slice(None) for _ in shape)
        return
    yield tuple(slice(0, min(c, s)) for s, c in zip(shape, chunks, strict=True))
    last = tuple(slice((s - 1) // c * c, s) for s, c in zip(shape, chunks, strict=True))
    if any(r.start for r in last):
        yield last


def _open_file(registry: Any, url: str, fmt: str, group: str, **kwargs: Any) -> Any:
    import xarray as xr

    from refstore.virtualize import _small_blocks

    store, path = registry.resolve(url)
    reader = _small_blocks(store, path)
    engine = "scipy" if fmt == "netcdf3" else "h5netcdf"
    extra: dict[str, Any] = {"group": group} if group else {}
    if engine == "h5netcdf":
        extra["phony_dims"] = "access"
    return xr.open_dataset(reader, engine=engine, chunks=None, **extra, **kwargs)


def _served(vg: VirtualGranule, registry: Any, names: list[str]) -> dict[str, Any]:
    """The virtual variables opened as the store and as the export serve them."""
    import fsspec
    import xarray as xr
    from virtualizarr.manifests import ManifestArray, ManifestGroup, ManifestStore

    from refstore.api import open_refs
    from refstore.cf import open_decoded
    from refstore.export import fix_fill_values, fix_scalar_keys

    arrays = {}
    for n in names:
        var = vg.dataset.variables[n]
        # The dataset keeps dims and attrs on the variable, not in the array metadata.
        meta = replace(var.data.metadata, dimension_names=var.dims, attributes=dict(var.attrs))
        arrays[n] = ManifestArray(metadata=meta, chunkmanifest=var.data.manifest)
    manifest = ManifestStore(ManifestGroup(arrays=arrays, attributes={}), registry=registry)

    def repo(**kw: Any) -> Any:
        return open_decoded(xr.open_zarr, store=manifest, consolidated=False, zarr_format=3, **kw)

    refs = fix_fill_values(fix_scalar_keys(vg.dataset[names].vz.to_kerchunk(format="dict")))
    fs = fsspec.filesystem("reference", fo=refs, remote_protocol="file")

    def export(**kw: Any) -> Any:
        return open_refs(fs.get_mapper(""), **kw)

    return {"repository": repo, "export": export}


def readback(
    vg: VirtualGranule, registry: Any, fmt: str, group: str = "", concat_dim: str = ""
) -> str | None:
    """Compare ``vg``'s references with the file; None if equal, else the reason.

    Never raises: a check that cannot run is a reason too (nothing unverified lands).

    Parameters
    ----------
    vg
        The virtualized granule.
    registry
        Reader registry for its URL (the source's).
    fmt
        ``"hdf5"`` or ``"netcdf3"``.
    group
        The group the dataset was read from.
    concat_dim
        The concat dim: a dataset of a whole hierarchy (variable names with a group
        path, :mod:`refstore.hierarchy`) is compared group by group with the file's.
    """
    from refstore.hierarchy import split

    try:
        if not any("/" in str(n) for n in vg.dataset.variables):
            return _readback(vg, registry, fmt, group)
        for path, ds in split(vg.dataset, concat_dim).items():
            problem = _readback(replace(vg, dataset=ds), registry, fmt, path)
            if problem:
                return f"group {path or '/'!r}: {problem}"
        return None
    except Exception as e:
        return f"the readback check failed ({type(e).__name__}: {e})"


def _readback(vg: VirtualGranule, registry: Any, fmt: str, group: str) -> str | None:
    from virtualizarr.manifests import ManifestArray

    names = [str(n) for n, v in vg.dataset.variables.items() if isinstance(v.data, ManifestArray)]
    if not names:
        return None
    local = vg.granule.url.startswith("file://")
    served = _served(vg, registry, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode, kwargs in (("raw", {"decode_cf": False}), ("decoded", {})):
            try:
                file_ds = _open_file(registry, vg.granule.url, fmt, group, **kwargs)
            except Exception as e:
                return f"cannot be read by a netCDF reader for the readback check ({e})"
            with file_ds:
                for label, opener in served.items():
                    if label == "export" and not local:
                        continue  # the export of remote granules is checked by verify
                    try:
                        ds = opener(chunks=None, **kwargs)
                    except Exception as e:
                        return f"its references cannot be opened as the {label} serves them ({e})"
                    # A bounds variable decodes with its coordinate's units and calendar,
                    # which are loaded, not virtual: compared raw here, decoded by verify.
                    bounds = {v.attrs.get("bounds") for v in file_ds.variables.values()}
                    for name in names:
                        if mode == "decoded" and name in bounds:
                            continue
                        problem = _compare_var(ds, file_ds, name, vg)
                        if problem:
                            return f"{name}: {mode} {problem} through the {label}"
    return None


def _compare_var(ds: Any, file_ds: Any, name: str, vg: VirtualGranule) -> str | None:
    data = vg.dataset[name].data
    chunks = tuple(int(c) for c in data.metadata.chunks)
    codecs = [c.to_dict().get("name", "?") for c in data.metadata.codecs]
    for region in _regions(tuple(data.shape), chunks):
        try:
            served = np.asarray(ds[name].variable[region].values)
        except Exception as e:
            return (
                f"values cannot be read through its references ({type(e).__name__}: {e}); "
                f"codec chain not representable: {' -> '.join(codecs)}"
            )
        file_var = file_ds[name].variable
        if len(region) == file_var.ndim + 1:  # given a length-1 concat dim (concat_from)
            file_var = file_var.set_dims(("_concat", *file_var.dims))
        expected = np.asarray(file_var[region].values)
        problem = difference(served, expected)
        if problem:
            return problem
    return None
