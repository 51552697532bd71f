"""CF semantics that zarr metadata loses, carried across every layer refstore writes.

Two facts a netCDF reader knows and a zarr reader does not:

- **Attribute dtypes.** netCDF attributes are typed; zarr attributes are JSON. CF decoding
  follows the packing attributes' type (int16 with a float32 ``scale_factor`` unpacks to
  float32), so after a JSON round trip xarray unpacks to float64 and the values differ in
  the last digits. At ingest :func:`record_attr_dtypes` writes the numpy dtype of every
  CF attribute that decoding reads into one text attribute (``ATTR_DTYPES``);
  :func:`open_decoded` casts them back before CF decoding.
- **Fill values.** An HDF5 dataset's storage fill (what unwritten chunks hold, and what
  VirtualiZarr puts in zarr ``fill_value``) often differs from its CF ``_FillValue``
  (GHRSST: -32767 vs -32768; GPM IMERG: 0.0 vs -9999.9). Zarr v3 readers mask on the
  ``_FillValue`` attribute, zarr v2 readers on ``.zarray`` ``fill_value``:
  :func:`v2_fill_semantics` rewrites a v2 array's metadata so it masks what the netCDF
  reader masks, and says when unwritten chunks must be materialized to keep the storage
  fill they hold in the file.

Pure functions, except :func:`open_decoded`, which calls the opener it is given.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import numpy as np

__all__ = [
    "ATTR_DTYPES",
    "CF_TYPED_ATTRS",
    "DECODE_KEYWORDS",
    "as_netcdf_strings",
    "attr_dtypes",
    "decode_fill_attr",
    "open_decoded",
    "record_attr_dtypes",
    "restore_attr_dtypes",
    "v2_fill_semantics",
]

# The attributes CF decoding reads (plus the ranges and flags whose type users check).
CF_TYPED_ATTRS = (
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
    "valid_min",
    "valid_max",
    "valid_range",
    "actual_range",
    "flag_values",
    "flag_masks",
)
# One text attribute per variable, e.g. '{"add_offset": "float32", "scale_factor": "float32"}'.
# Text, not a mapping, so that writing the dataset to netCDF later still works.
ATTR_DTYPES = "_refstore_attr_dtypes"
# xarray.open_dataset keywords that belong to CF decoding (applied after the cast).
DECODE_KEYWORDS = (
    "mask_and_scale",
    "decode_times",
    "decode_timedelta",
    "use_cftime",
    "concat_characters",
    "decode_coords",
)


def attr_dtypes(attrs: Mapping[str, Any]) -> dict[str, str]:
    """The numpy dtype of each CF attribute in ``attrs`` that has one (numbers only)."""
    out: dict[str, str] = {}
    for key in CF_TYPED_ATTRS:
        value = attrs.get(key)
        if isinstance(value, np.generic | np.ndarray) and value.dtype.kind in "biuf":
            out[key] = str(value.dtype)
    return out


def record_attr_dtypes(ds: Any) -> None:
    """Write :data:`ATTR_DTYPES` on every variable of ``ds`` whose CF attributes have
    numpy dtypes (attributes and, for decoded variables, their encoding), merged with
    what the parser recorded from the file (:mod:`refstore._compat`)."""
    for var in ds.variables.values():
        try:
            known = json.loads(var.attrs.get(ATTR_DTYPES, "{}"))  # from the parser
        except ValueError:
            known = {}
        found = {**known, **attr_dtypes({**var.encoding, **var.attrs})}
        if found:
            var.attrs[ATTR_DTYPES] = json.dumps(found, sort_keys=True)


def _cast(value: Any, dtype: np.dtype[Any]) -> Any:
    if isinstance(value, str | bytes) or value is None:
        return value  # an encoded fill value (base64) or text: not ours to cast
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        return value
    cast = array.astype(dtype)
    if not np.array_equal(cast, array.astype(np.float64), equal_nan=True) and dtype.kind in "iu":
        return value  # never change a value to restore a type
    return cast[()] if cast.ndim == 0 else cast


def restore_attr_dtypes(ds: Any) -> Any:
    """Cast each variable's CF attributes back to the dtypes recorded at ingest, in place;
    drops :data:`ATTR_DTYPES`. Returns ``ds``."""
    for var in ds.variables.values():
        text = var.attrs.pop(ATTR_DTYPES, None)
        if not isinstance(text, str):
            continue
        try:
            dtypes = json.loads(text)
        except ValueError:
            continue
        for key, name in dtypes.items():
            for where in (var.attrs, var.encoding):
                if key in where:
                    where[key] = _cast(where[key], np.dtype(name))
    return ds


def open_decoded(open_raw: Callable[..., Any], **kwargs: Any) -> Any:
    """Open with ``open_raw(decode_cf=False, ...)``, restore attribute dtypes, then CF
    decode with the caller's decoding keywords: the dtypes a netCDF reader gives."""
    import xarray as xr

    decode_cf = kwargs.pop("decode_cf", True)
    decode = {k: kwargs.pop(k) for k in DECODE_KEYWORDS if k in kwargs}
    ds = as_netcdf_strings(restore_attr_dtypes(open_raw(decode_cf=False, **kwargs)))
    return xr.decode_cf(ds, **decode) if decode_cf else ds


def as_netcdf_strings(ds: Any) -> Any:
    """Variable-length strings as the object arrays netCDF readers give (zarr reads
    them as numpy's StringDType)."""
    for name, var in ds.variables.items():
        if var.dtype.kind == "T":
            ds[name] = var.astype(object)
    return ds


def decode_fill_attr(value: Any, dtype: np.dtype[Any]) -> Any:
    """A ``_FillValue`` attribute as stored by zarr v3 writers (base64 for floats) back
    to a number; other values pass through."""
    if isinstance(value, str) and dtype.kind in "fc":
        try:
            return struct.unpack("<d", base64.standard_b64decode(value))[0]
        except (ValueError, struct.error):
            return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value)
    return value


def _json_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
    return value


def _same_fill(a: Any, b: Any) -> bool:
    def num(v: Any) -> Any:
        if isinstance(v, str):
            return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v)
        return v

    a, b = num(a), num(b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def v2_fill_semantics(
    zarray: MutableMapping[str, Any], zattrs: MutableMapping[str, Any]
) -> tuple[bool, Any]:
    """Make a zarr v2 array mask exactly what a netCDF reader masks, in place.

    xarray's zarr v2 reader treats ``.zarray`` ``fill_value`` as ``_FillValue``. It is
    set to the CF ``_FillValue`` (decoded to a number, also in ``.zattrs``) or, without
    one, to null: a netCDF reader never masks the HDF5 storage fill by itself
    (``missing_value`` stays an attribute and is masked by CF decoding either way).

    Returns
    -------
    (materialize, storage_fill)
        ``storage_fill`` is what an unwritten chunk holds in the file; ``materialize``
        says that through the new v2 metadata an unwritten chunk would read otherwise
        (as the CF fill, or as zarr's default 0 for null), so unwritten chunks must be
        written out with ``storage_fill`` for the values to stay equal.
    """
    if not isinstance(zarray.get("dtype"), str):
        return False, zarray.get("fill_value")  # a compound type: no CF fill applies
    dtype = np.dtype(zarray["dtype"])
    storage = zarray.get("fill_value")
    cf = decode_fill_attr(zattrs.get("_FillValue"), dtype)
    served: Any = None
    if cf is not None and dtype.kind in "biufc":
        served = _json_number(cf)
        zattrs["_FillValue"] = served
    zarray["fill_value"] = served
    default = 0 if dtype.kind in "biufc" else None
    if storage is None:
        storage = default
    return not _same_fill(storage, default if served is None else served), storage
