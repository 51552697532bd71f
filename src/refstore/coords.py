"""Loaded variables travel as the file stores them, and are converted only exactly.

A loaded variable (the concat coordinate, lat/lon, bounds) used to be decoded at ingest
and re-encoded by xarray on write: float ``days since`` times came back off by one ulp
(and 1 ns decoded) at a few percent of steps. Now:

- :func:`raw_loaded` swaps each loaded variable of a granule's dataset for its raw,
  undecoded values and attributes (``units``, ``calendar``, packing), so the store holds
  the file's bytes and any reader decodes them as a netCDF reader does;
- :func:`express_in` puts a later granule's concat-dim variables into the store's
  encoding (``units``, ``calendar``, dtype, as the first granule had them). Values in
  other units are converted exactly (decode, encode in the store's units, decode again:
  equal) or the granule is refused with the reason — never rounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CoordEncoding", "express_in", "plain", "raw_loaded"]

# What decides how stored values decode (a _FillValue on a coordinate is left as is).
_ENCODING_ATTRS = ("units", "calendar", "scale_factor", "add_offset")


@dataclass(frozen=True)
class CoordEncoding:
    """How the store holds a loaded concat-dim variable."""

    dtype: str
    attrs: tuple[tuple[str, Any], ...]  # the _ENCODING_ATTRS present, sorted

    @classmethod
    def of(cls, dtype: Any, attrs: Mapping[str, Any]) -> CoordEncoding:
        """From an array's dtype and attributes."""
        found = {k: plain(attrs[k]) for k in _ENCODING_ATTRS if k in attrs}
        return cls(str(np.dtype(dtype)), tuple(sorted(found.items())))

    def get(self, key: str) -> Any:
        """One attribute, or None."""
        return dict(self.attrs).get(key)


def plain(value: Any) -> Any:
    """A numpy scalar/array or bytes as plain Python (JSON-ready) values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def raw_loaded(ds: Any, raw: Any, names: Iterable[str]) -> Any:
    """``ds`` with each of ``names`` replaced by its raw variable from ``raw`` (the same
    file opened with ``decode_cf=False``): values, dtype and attributes as stored."""
    import xarray as xr

    out = ds
    for name in names:
        var = raw.variables[name].load()
        attrs = dict(var.attrs)
        encoding = {k: attrs.pop(k) for k in ("_FillValue",) if k in attrs}
        plain = xr.Variable(var.dims, np.asarray(var.values), attrs, encoding)
        if name in out.indexes:
            out = out.drop_vars(name).assign_coords({name: plain})
        else:
            out[name] = plain
    return out


def _decode_times(values: Any, units: str, calendar: str | None) -> Any:
    from xarray.coding.times import decode_cf_datetime

    return np.asarray(decode_cf_datetime(np.asarray(values), units, calendar))


def _equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "M" and b.dtype.kind == "M":
        return bool(np.array_equal(a.astype("datetime64[ns]"), b.astype("datetime64[ns]")))
    return bool(
        a.shape == b.shape and all(x == y for x, y in zip(a.ravel(), b.ravel(), strict=True))
    )


def express_in(ds: Any, concat_dim: str, ref: CoordEncoding) -> tuple[Any, str | None]:
    """``ds`` with its loaded concat-dim variables in the store's encoding ``ref``.

    Returns the dataset and None, or the dataset unchanged and the reason it cannot be
    expressed exactly.
    """
    import xarray as xr
    from virtualizarr.manifests import ManifestArray

    out = ds
    for name, var in ds.variables.items():
        if isinstance(var.data, ManifestArray) or concat_dim not in var.dims:
            continue
        if name != concat_dim:
            continue  # other loaded variables along the concat dim are the user's choice
        mine = CoordEncoding.of(var.dtype, {**var.attrs, **var.encoding})
        if mine == ref:
            continue
        units, calendar = ref.get("units"), ref.get("calendar")
        their_units = mine.get("units")
        is_time = isinstance(units, str) and " since " in units
        if not (is_time and isinstance(their_units, str) and " since " in their_units):
            return ds, (
                f"{name}: stored as {ref.dtype} {dict(ref.attrs)} in the store, "
                f"{mine.dtype} {dict(mine.attrs)} in this granule (no exact conversion)"
            )
        if mine.get("scale_factor") is not None or ref.get("scale_factor") is not None:
            return ds, f"{name}: packed times in other units cannot be converted exactly"
        from xarray.coding.times import encode_cf_datetime

        decoded = _decode_times(var.values, their_units, mine.get("calendar"))
        try:
            wide, _, _ = encode_cf_datetime(decoded, units, calendar, dtype=np.dtype(ref.dtype))
            # xarray returns int64 for an integer dtype: narrowed only where nothing is lost.
            encoded = np.asarray(wide).astype(ref.dtype)
            back = _decode_times(encoded, units, calendar)
        except Exception as e:
            return ds, f"{name}: cannot be expressed in the store's units {units!r} ({e})"
        if not np.array_equal(encoded, np.asarray(wide)) or not _equal(back, decoded):
            return ds, (
                f"{name}: values in {their_units!r} cannot be expressed exactly in the "
                f"store's {units!r} as {ref.dtype}"
            )
        attrs = {k: v for k, v in var.attrs.items() if k not in _ENCODING_ATTRS}
        attrs.update(dict(ref.attrs))
        plain = xr.Variable(var.dims, np.asarray(encoded), attrs, dict(var.encoding))
        out = out.drop_vars(name).assign_coords({name: plain})
    return out, None
