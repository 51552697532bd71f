"""A granule without the concat dim, given a length-1 concat dim (``[dataset] concat_from``).

:mod:`refstore.concat_from` parses the setting and the values; this module applies them
to a parsed granule: which variables to load (those ``expand_dims`` leaves alone), and
the expanded virtual dataset with its one-step coordinate in the file's own encoding
(a scalar coordinate) or in ``seconds since 1970`` (an attribute or the file name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from refstore.concat_from import (
    ConcatFrom,
    coordinate_names,
    encode_derived,
    parse_concat_from,
    value_from_attr,
    value_from_name,
)
from refstore.errors import GranuleError
from refstore.models import Granule

__all__ = ["expand_granule", "loadable_expanded", "value_source"]


def _hint(concat_dim: str) -> str:
    return (
        f"Set [dataset] concat_dim to the dimension granules stack along, or [dataset] "
        f'concat_from to where a file without {concat_dim!r} keeps its value ("scalar", '
        '"attr:time_coverage_start", "filename:%Y%m%d"; docs/layouts.md).'
    )


def value_source(
    granule: Granule,
    concat_dim: str,
    concat_from: str,
    dims: Mapping[str, tuple[str, ...]],
    all_dims: Iterable[str],
    shown: str,
) -> ConcatFrom | None:
    """How this granule gets its concat value: None when it has the concat dim.

    Raises
    ------
    GranuleError
        The file has no concat dim and ``concat_from`` finds nothing to make one from,
        or it has the dim while ``concat_from`` says to derive it.
    """
    how = parse_concat_from(concat_from)
    if concat_dim in set(all_dims):
        if how.kind in ("auto", "arrival", "var"):
            return None
        raise GranuleError(
            f"{granule.key}: has a dimension {concat_dim!r}, but concat_from = "
            f"{concat_from!r} is for files without one",
            'Set [dataset] concat_from = "auto" (the default) for files that have the dim.',
        )
    if how.kind in ("auto", "arrival", "var"):
        if how.kind == "auto" and dims.get(concat_dim) == ():
            return ConcatFrom("scalar", concat_dim)
        raise GranuleError(
            f"{granule.key}: has no dimension {concat_dim!r} ({shown}); if each file holds "
            f"one step, set [dataset] concat_from to where its {concat_dim} value is",
            _hint(concat_dim),
        )
    if how.kind == "scalar":
        name = how.arg or concat_dim
        if dims.get(name) != ():
            found = "not a scalar" if name in dims else "no such variable"
            raise GranuleError(
                f"{granule.key}: concat_from = {concat_from!r} needs a scalar variable "
                f"{name!r} ({found}); fix the file or [dataset] concat_from",
                _hint(concat_dim),
            )
        return ConcatFrom("scalar", name)
    return how


def loadable_expanded(
    concat_dim: str,
    source: ConcatFrom,
    dims: Mapping[str, tuple[str, ...]],
    attrs: Mapping[str, Mapping[str, Any]],
    override: Iterable[str] | None,
) -> tuple[str, ...]:
    """What to load in a granule about to be expanded: the scalar source, coordinates
    (``expand_dims`` leaves them without the new dim: compared, not appended) and scalar
    variables (tiny; expanded to one value per granule). ``override`` wins, plus the
    source."""
    scalar = source.arg if source.kind == "scalar" else None
    if override is not None:
        chosen = [v for v in override if v in dims]
    else:
        coords = coordinate_names(dims, attrs)
        chosen = [n for n, d in dims.items() if n in coords or d == ()]
    if scalar is not None and scalar not in chosen:
        chosen.append(scalar)
    return tuple(sorted(set(chosen)))


def _decoded(var: Any) -> Any:
    import xarray as xr

    return np.asarray(xr.decode_cf(xr.Dataset({"v": var})).variables["v"].values)


def expand_granule(
    granule: Granule, concat_dim: str, source: ConcatFrom, ds: Any, attrs: Mapping[str, Any]
) -> tuple[Any, np.ndarray]:
    """``ds`` (loaded variables raw, refstore.coords) with a length-1 ``concat_dim``:
    every data variable gains it, and its coordinate holds the granule's value. Returns
    the dataset and the decoded coordinate values.

    Raises
    ------
    GranuleError
        The value cannot be found, parsed, or stored exactly; the reason names the
        granule and the fix.
    """
    import xarray as xr

    if source.kind == "scalar":
        var = ds.variables[source.arg]
        raw = np.asarray(var.values).reshape(1)
        coord = xr.Variable((concat_dim,), raw, dict(var.attrs), dict(var.encoding))
        ds = ds.drop_vars(source.arg)
    else:
        if source.kind == "attr":
            value, problem = value_from_attr(attrs, source.arg)
            fix = "fix the attribute upstream and `refstore retry`, or [dataset] concat_from"
        else:
            name = granule.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            value, problem = value_from_name(name, source.arg)
            fix = (
                "rename the file to match [dataset] concat_from (strptime codes, searched "
                "in the name) or fix the pattern; then `refstore retry`"
            )
        if value is not None:
            encoded, cf_attrs, problem = encode_derived(value)
        if value is None or problem is not None:
            raise GranuleError(
                f"{granule.key}: no {concat_dim} value from concat_from = "
                f"{source.kind}:{source.arg}: {problem}; {fix}",
                fix[0].upper() + fix[1:] + ".",
            )
        coord = xr.Variable((concat_dim,), encoded, cf_attrs)
    values = _decoded(coord)
    missing = (values.dtype.kind == "M" and bool(np.isnat(values).any())) or (
        values.dtype.kind == "f" and bool(np.isnan(values).any())
    )
    if missing:
        raise GranuleError(
            f"{granule.key}: its {concat_dim} value ({source.arg}) is missing (fill value); "
            "fix the file upstream and `refstore retry`, or set [dataset] concat_from",
            "Fix the file upstream and `refstore retry`, or set [dataset] concat_from.",
        )
    expanded = ds.expand_dims(concat_dim).assign_coords({concat_dim: coord})
    return expanded, values
