"""Pure drift checks: a granule's *signature* and its comparison with the store's.

A signature is a JSON-able summary of every variable that decides whether a granule can
be appended without decoding wrong: dimensions, shape off the concat dim, dtype, chunk
shape, codecs, fill value, CF packing (``scale_factor``/``add_offset``) and units, and a
hash of the values of variables without the concat dim (lat/lon, bounds, grid mapping).
VirtualiZarr's own append check compares codecs and encodings but not CF packing kept
in attributes, and an append silently overwrites lat/lon: both are caught here.
The signature of the store is kept in each refstore commit's metadata.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

__all__ = ["compare_signatures", "describe_values", "signature"]

_PACKING = ("scale_factor", "add_offset", "units")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and np.isnan(value):
        return "NaN"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def describe_values(values: np.ndarray[Any, Any]) -> str:
    """A short human summary of an array's values, for error messages."""
    flat = np.asarray(values).ravel()
    if flat.size == 0:
        return "[]"
    if flat.size <= 3:
        return str([_jsonable(v) for v in flat])
    return f"[{_jsonable(flat[0])}, {_jsonable(flat[1])}, … {_jsonable(flat[-1])}] ({flat.size})"


def _hash(values: np.ndarray[Any, Any]) -> str:
    arr = np.ascontiguousarray(values)
    h = hashlib.sha256(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    return h.hexdigest()[:16]


def signature(ds: Any, concat_dim: str) -> dict[str, dict[str, Any]]:
    """Summarize ``ds`` (a virtual dataset) variable by variable.

    Virtual variables contribute their Zarr metadata; loaded variables without the
    concat dim contribute a hash of their values.
    """
    from virtualizarr.manifests import ManifestArray

    sig: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        dims = [str(d) for d in var.dims]
        entry: dict[str, Any] = {
            "dims": dims,
            "shape": [
                None if d == concat_dim else int(n) for d, n in zip(dims, var.shape, strict=True)
            ],
        }
        attrs = {**var.encoding, **var.attrs}
        for key in _PACKING:
            if key in attrs and name != concat_dim:
                entry[key] = _jsonable(attrs[key])
        data = var.data
        if isinstance(data, ManifestArray):
            meta = data.metadata
            entry["dtype"] = str(meta.data_type)
            entry["chunks"] = [int(c) for c in meta.chunks]
            entry["codecs"] = json.dumps(
                [c.to_dict() for c in meta.codecs], sort_keys=True, default=str
            )
            entry["fill_value"] = _jsonable(meta.fill_value)
            if concat_dim in dims:
                axis = dims.index(concat_dim)
                entry["concat_chunk"] = int(meta.chunks[axis])
        else:
            entry["dtype"] = str(np.dtype(var.encoding.get("dtype", var.dtype)))
            if concat_dim not in dims:
                values = np.asarray(var.values)
                entry["values"] = _hash(values)
                entry["summary"] = describe_values(values)
        sig[str(name)] = entry
    return sig


_LABELS = {
    "dims": "dimensions",
    "shape": "shape (off the concat dim)",
    "dtype": "dtype",
    "chunks": "chunk shape",
    "codecs": "codecs",
    "fill_value": "fill value",
    "scale_factor": "scale_factor",
    "add_offset": "add_offset",
    "units": "units",
    "values": "values",
}


def compare_signatures(
    store: dict[str, dict[str, Any]], granule: dict[str, dict[str, Any]]
) -> list[str]:
    """Every difference that would make an append decode wrong, as one-line reasons.

    Each reason names the variable and both values (store first).
    """
    problems: list[str] = []
    missing = sorted(set(store) - set(granule))
    extra = sorted(set(granule) - set(store))
    if missing:
        problems.append(f"missing variable(s) {', '.join(missing)} that the store has")
    if extra:
        problems.append(f"variable(s) {', '.join(extra)} not in the store")
    for name in sorted(set(store) & set(granule)):
        s, g = store[name], granule[name]
        for key, label in _LABELS.items():
            sv, gv = s.get(key), g.get(key)
            if sv == gv:
                continue
            if key == "values":
                problems.append(
                    f"{name}: values differ from the store's "
                    f"(store {s.get('summary')}, granule {g.get('summary')})"
                )
            elif key == "codecs":
                problems.append(f"{name}: codecs differ (store {sv}, granule {gv})")
            else:
                problems.append(f"{name}: {label} {sv!r} in the store, {gv!r} in this granule")
            break  # one reason per variable is enough to act on
    return problems
