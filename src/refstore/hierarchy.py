"""Whole hierarchies: every group of a granule in one store (``group = "*"`` or a list).

A granule's groups travel through the pipeline as **one flat dataset** whose variable
names carry their group path (``product/no2``; the root's variables keep their names).
Everything that works on one dataset (admission, combining, appends, late granules put
in place, revisions) then works unchanged, and writing ``product/no2`` into the
repository's root creates the array ``no2`` in the Zarr group ``product``: the store is
the files' hierarchy. The concat coordinate lives in the root group, and netCDF scoping
makes it the coordinate of every group below (xarray's DataTree inherits it the same way).

Pure helpers here; :func:`refstore.virtualize.virtualize_granule` reads the groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refstore.errors import ConfigError, GranuleError

__all__ = [
    "ALL",
    "file_groups",
    "flatten",
    "group_of",
    "parse_groups",
    "place_group_attrs",
    "split",
    "stored_groups",
    "wanted_groups",
]

ALL = "*"
# A group's attribute travels in the flat dataset's attributes under this prefix and its
# group path (stable across granules or dropped, like the root's), and is moved to its
# group when written (:func:`place_group_attrs`).
GROUP_ATTR = "refstore.group_attr:"


def parse_groups(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """The ``[dataset] group`` setting, checked: a group name (unchanged), ``"*"``, or a
    list of group paths (normalized: no leading or trailing ``/``).

    Raises
    ------
    ConfigError
        An empty list, an empty or repeated name, or ``"*"`` inside a list.
    """
    if isinstance(value, str):
        return value
    names = tuple(str(v).strip().strip("/") for v in value)
    hint = (
        'Use group = "*" for every group, or a list of group paths such as '
        'group = ["product", "geolocation"] (the root group is always included).'
    )
    if not names or any(not n or n == ALL for n in names):
        raise ConfigError(f"[dataset] group: bad list of groups {list(value)!r}.", hint)
    if len(set(names)) != len(names):
        raise ConfigError(f"[dataset] group lists a group twice: {list(value)!r}.", hint)
    return names


def group_of(name: str) -> tuple[str, str]:
    """``"a/b/var"`` -> ``("a/b", "var")``; a root variable -> ``("", name)``."""
    group, _, base = str(name).rpartition("/")
    return group, base


def file_groups(reader: Any) -> list[str]:
    """Every group of an HDF5 file that holds a variable, root first (``""``)."""
    import h5py

    found: list[str] = []
    with h5py.File(reader, mode="r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group) and any(
                isinstance(child, h5py.Dataset) for child in obj.values()
            ):
                found.append(name)

        f.visititems(visit)
    return ["", *sorted(found)]


def wanted_groups(setting: tuple[str, ...], present: list[str], key: str) -> list[str]:
    """The groups to read from a granule: all of ``present`` for ``("*",)``, else the
    root and the listed ones.

    Raises
    ------
    GranuleError
        A listed group is not in the file.
    """
    if setting == (ALL,):
        return present
    missing = [g for g in setting if g not in present]
    if missing:
        raise GranuleError(
            f"{key}: has no group {', '.join(map(repr, missing))} "
            f"(groups: {', '.join(repr(g) for g in present if g) or 'none'})",
            'Fix [dataset] group (a list of the groups to keep, or "*") or the file.',
        )
    return ["", *setting]


def flatten(groups: Mapping[str, Any], concat_dim: str, key: str, order: str = "") -> Any:
    """One dataset of every group's variables, named with their group path.

    ``groups`` maps a group path to its dataset (the root ``""`` first). A group's own
    copy of the concat coordinate (from the root by scoping, or its own equal copy) is
    left out: the root's serves every group; so is a copy of the root's ``order``
    variable (``concat_from = "var:NAME"``) equal to it (from the root by scoping).

    Raises
    ------
    GranuleError
        The concat coordinate is not in the root group while another group uses the dim,
        a group holds a different one, or a dimension has two sizes in two groups.
    """
    import numpy as np
    import xarray as xr

    root = groups.get("", xr.Dataset())
    coord = root.variables.get(concat_dim)
    variables: dict[str, Any] = dict(root.variables)
    coords = {str(c) for c in root.coords}
    for group, ds in groups.items():
        if not group:
            continue
        own = ds.variables.get(concat_dim)
        if own is not None:
            if coord is None:
                raise GranuleError(
                    f"{key}: group {group!r} has the coordinate {concat_dim!r} (its own or "
                    "a parent's below the root), the root group has none; a whole hierarchy "
                    "takes it from the root",
                    f'Use group = "{group}" (one group, its parents\' coordinate included).',
                )
            if not np.array_equal(np.asarray(own.values), np.asarray(coord.values)):
                raise GranuleError(
                    f"{key}: group {group!r} has its own {concat_dim!r}, different from the "
                    "root group's; one store needs one coordinate along the concat dim",
                    "Leave that group out of [dataset] group (a list of groups).",
                )
        for name, var in ds.variables.items():
            if name == concat_dim:
                continue
            if name == order and name in root.variables and var.equals(root.variables[name]):
                continue
            variables[f"{group}/{name}"] = var
            if name in ds.coords:
                coords.add(f"{group}/{name}")
    attrs = dict(root.attrs)
    for group, ds in groups.items():
        if group:
            attrs.update({f"{GROUP_ATTR}{group}/{k}": v for k, v in ds.attrs.items()})
    try:
        out = xr.Dataset(variables, attrs=attrs)
    except ValueError as e:
        raise GranuleError(
            f"{key}: its groups cannot share one set of dimensions ({e})",
            "A dimension of one name must have one length across the groups kept; "
            "list the groups to keep in [dataset] group.",
        ) from e
    return out.set_coords(sorted(coords & set(map(str, out.data_vars))))


def split(ds: Any, concat_dim: str) -> dict[str, Any]:
    """The flat dataset back as one dataset per group (``""``: the root), each group
    with the root's concat coordinate when it uses the dim (netCDF scoping)."""
    import xarray as xr

    names: dict[str, dict[str, Any]] = {}
    for name in ds.variables:
        group, base = group_of(str(name))
        names.setdefault(group, {})[base] = name
    out: dict[str, Any] = {}
    for group, members in sorted(names.items()):
        variables = {base: ds.variables[name] for base, name in members.items()}
        uses = any(concat_dim in v.dims for v in variables.values())
        if group and uses and concat_dim in ds.variables:
            variables.setdefault(concat_dim, ds.variables[concat_dim])
        part = xr.Dataset(variables, attrs=_group_attrs(ds.attrs, group))
        coords = {b for b, n in members.items() if n in ds.coords} | {concat_dim}
        out[group] = part.set_coords(sorted(coords & set(map(str, part.data_vars))))
    if "" not in out:
        out[""] = xr.Dataset(attrs=dict(ds.attrs))
    return out


def stored_groups(store: Any) -> list[str]:
    """The Zarr groups below the root of ``store`` (paths, sorted); none for a store of
    one group."""
    import zarr

    from refstore.rectilinear import enable

    enable()  # listing reads every array's metadata, a rectilinear grid's too
    from refstore.details import GROUP

    root = zarr.open_group(store, mode="r", zarr_format=3)
    return sorted(
        p
        for p, node in root.members(max_depth=None)
        if isinstance(node, zarr.Group) and p.split("/")[0] != GROUP  # refstore's own
    )


def _group_attrs(attrs: Mapping[str, Any], group: str) -> dict[str, Any]:
    """``group``'s attributes out of the flat dataset's (the root's: the unprefixed ones)."""
    if not group:
        return {k: v for k, v in attrs.items() if not str(k).startswith(GROUP_ATTR)}
    prefix = f"{GROUP_ATTR}{group}/"
    return {k[len(prefix) :]: v for k, v in attrs.items() if str(k).startswith(prefix)}


def place_group_attrs(store: Any) -> None:
    """Move the group attributes a write left in the root's attributes to their groups."""
    import zarr

    root = zarr.open_group(store, mode="r+", zarr_format=3)
    attrs = dict(root.attrs)
    moved = {k for k in attrs if k.startswith(GROUP_ATTR)}
    if not moved:
        return
    by_group: dict[str, dict[str, Any]] = {}
    for key in moved:
        group, name = group_of(key[len(GROUP_ATTR) :])
        by_group.setdefault(group, {})[name] = attrs[key]
    for group, values in by_group.items():
        node = root.get(group)
        if isinstance(node, zarr.Group):
            node.attrs.update(values)
    root.attrs.put({k: v for k, v in attrs.items() if k not in moved})
