"""Per-granule virtualization with VirtualiZarr.

:func:`virtualize_granule` turns one file into a :class:`VirtualGranule` (a virtual
``xr.Dataset`` plus its concat-dim range and drift signature) or a :class:`Failure`
with a one-line reason. It never raises for a bad file: a bad file is quarantined,
the rest of the batch goes on. The parser is chosen from the file's magic bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from refstore.cf import record_attr_dtypes
from refstore.concat_from import parse_concat_from
from refstore.coords import raw_loaded
from refstore.errors import GranuleError, RefstoreError
from refstore.expand import expand_granule, loadable_expanded, value_source
from refstore.fetch import GranuleBytes
from refstore.models import Failure, Granule
from refstore.schema import signature

__all__ = [
    "ABSENT",
    "FOUND",
    "HINT_MARGIN",
    "DatasetSpec",
    "VirtualGranule",
    "choose_loadable",
    "detect_format",
    "format_value",
    "virtualize_granule",
]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
# Bytes read each side of a hinted coordinate range: the same producer's files differ by
# a few bytes of attributes (RSS SSMIS: 16 bytes a year apart).
HINT_MARGIN = 1024
# What looking for a granule's sidecar found (VirtualGranule.probe; refstore.sidecars).
FOUND, ABSENT = "found", "absent"
# HDF5 allows a user block before the superblock at 0, 512, 1024, 2048, ... bytes.
_HDF5_OFFSETS = (0, 512, 1024, 2048)


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """The [dataset] settings a worker needs (picklable)."""

    concat_dim: str
    loadable_variables: tuple[str, ...] | None = None
    drop_variables: tuple[str, ...] = ()
    group: str = ""
    groups: tuple[str, ...] = ()  # a whole hierarchy: ("*",) or the groups (refstore.hierarchy)
    dmrpp: str = "never"  # "auto" | "never" | "always": build from <url>.dmrpp (refstore.dmrpp)
    concat_from: str = "auto"  # a file without the concat dim: refstore.concat_from
    # Where the previous granule kept its loaded variables, ``(offset, length)``: read
    # while its sidecar is fetched, so a sidecar-built granule costs one round trip.
    coord_hint: tuple[tuple[int, int], ...] = ()
    # Use the hint for a guessed <url>.dmrpp too (the collection is known to publish them);
    # else only for a sidecar the source names, or with dmrpp = "always".
    hint_guessed: bool = False
    # Derivations proved on earlier granules (refstore.derive.Proof JSON): a sidecar that
    # describes its loaded variables as a proved one did is placed without reading them.
    proofs: tuple[str, ...] = ()


@dataclass(frozen=True)
class VirtualGranule:
    """A granule's virtual dataset, ready to append."""

    granule: Granule
    dataset: Any  # xr.Dataset; Any keeps xarray out of import time
    first: Any
    last: Any
    length: int
    signature: dict[str, dict[str, Any]]
    values: Any = None  # the concat coordinate's values (numpy), if it has one
    fmt: str = "hdf5"  # "hdf5" or "netcdf3": how the file is read back
    origin: str = "file"  # "file" (its own metadata) or "dmrpp" (its sidecar)
    note: str | None = None  # why a sidecar was not used, if one was looked for
    probe: str | None = None  # FOUND / ABSENT: what looking for its sidecar found; None: not looked
    coord_ranges: tuple[tuple[int, int], ...] = ()  # its loaded chunks in the file
    derived: bool = False  # loaded values from a proved derivation: no byte of the granule read
    proof: str | None = None  # a derivation proved on this granule (refstore.derive.Proof JSON)
    disproved: str | None = None  # the key of a proof this granule's real values contradict

    @property
    def start(self) -> str | None:
        """First concat-dim value as text (ISO for datetimes)."""
        return format_value(self.first)

    @property
    def end(self) -> str | None:
        """Last concat-dim value as text."""
        return format_value(self.last)


def format_value(value: Any) -> str | None:
    """Concat-dim value as text: ISO 8601 for datetimes, ``str`` otherwise."""
    if value is None:
        return None
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="s"))
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def detect_format(head: Mapping[int, bytes]) -> str | None:
    """``"hdf5"``, ``"netcdf3"`` or None, from bytes read at the candidate offsets."""
    first = head.get(0, b"")
    if first[:4] in NETCDF3_MAGICS:
        return "netcdf3"
    for offset in _HDF5_OFFSETS:
        if head.get(offset, b"")[:8] == HDF5_MAGIC:
            return "hdf5"
    return None


def choose_loadable(
    dims: Mapping[str, tuple[str, ...]], concat_dim: str, override: Iterable[str] | None
) -> tuple[str, ...]:
    """Variables to load rather than reference.

    Default: the concat-dim coordinate and every variable without the concat dim
    (1-D coordinates, bounds, scalar grid-mapping variables such as ``crs``). Those are
    written once and compared on later granules; everything with the concat dim stays
    virtual. An explicit ``override`` wins.
    """
    if override is not None:
        return tuple(v for v in override if v in dims)
    return tuple(
        sorted(name for name, d in dims.items() if name == concat_dim or concat_dim not in d)
    )


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _small_blocks(store: Any, path: str) -> Any:
    """VirtualiZarr's block reader with 64 KiB blocks instead of 1 MiB.

    The parser needs the HDF5 metadata only (tens of KB); with 1 MiB blocks a 1 MB
    GAMSSA granule is read whole (1.09 MB), with 64 KiB blocks 123 KB in the same
    8 requests (scripts/bench.py, "granule_io"): 9x fewer bytes from S3 or HTTPS.
    """
    from obspec_utils.readers import BlockStoreReader

    return BlockStoreReader(store, path, block_size=64 * 1024)


def shown_dims(dims: Iterable[str]) -> str:
    """Dimension names as xarray shows them, with the group path apart:
    ``dimensions: nscan, npixel (group FS)`` rather than ``FS/nscan``."""
    names = sorted({d.rsplit("/", 1)[-1] for d in dims})
    groups = sorted({d.rsplit("/", 1)[0].strip("/") for d in dims if "/" in d} - {""})
    text = f"dimensions: {', '.join(names) or 'none'}"
    return text + (f" (group {', '.join(groups)})" if groups else "")


def _culprit(manifest_store: Any, loadable: Iterable[str]) -> str | None:
    """The first loadable variable that fails to decode on its own (failure path only)."""
    import xarray as xr

    try:
        raw = xr.open_zarr(manifest_store, decode_cf=False, consolidated=False, chunks=None)
    except Exception:
        return None
    for name in loadable:
        try:
            xr.decode_cf(xr.Dataset({name: raw.variables[name].load()}))
        except Exception:
            return name
    return None


def _open_bytes(granule: Granule, registry: Any) -> GranuleBytes:
    """The granule's bytes, with the first 128 KiB read (one request; see refstore.fetch)."""
    from refstore.fetch import GranuleBytes

    store, path = registry.resolve(granule.url)
    data = GranuleBytes(store, path, granule.size)
    try:
        data.read_head()
    except FileNotFoundError as e:
        raise GranuleError(f"{granule.key}: file vanished before it was read ({_short(e)})") from e
    except Exception as e:
        raise GranuleError(f"{granule.key}: cannot be read: {_short(e)}") from e
    return data


def _sniff(data: GranuleBytes) -> str | None:
    head = data.read(0, max(_HDF5_OFFSETS) + 8)
    return detect_format({o: head[o : o + 8] for o in _HDF5_OFFSETS})


def _loaded_ranges(manifest_store: Any, url: str, names: Iterable[str]) -> list[tuple[int, int]]:
    """``(offset, length)`` of the chunks of ``names`` in the granule at ``url``."""
    arrays = manifest_store._group.arrays
    entries = [e for n in names if n in arrays for e in arrays[n].manifest.dict().values()]
    return [(int(e["offset"]), int(e["length"])) for e in entries if e["path"] == url]


def _hinted(data: GranuleBytes, hint: Iterable[tuple[int, int]]) -> Any:
    """Start reading ``hint`` (widened by :data:`HINT_MARGIN` each side) in a thread."""
    import threading

    ranges = [(max(o - HINT_MARGIN, 0), n + 2 * HINT_MARGIN) for o, n in hint]

    def read() -> None:
        try:
            data.prefetch(ranges)
        except Exception:  # a wasted guess: the exact read follows the sidecar
            return

    thread = threading.Thread(target=read, name="refstore-coord-hint", daemon=True)
    thread.start()
    return thread


def _only(manifest_store: Any, names: Iterable[str]) -> Any:
    """A manifest store of ``names`` alone (in the file's order): opening it lists only
    what is loaded."""
    from virtualizarr.manifests import ManifestGroup, ManifestStore

    group = manifest_store._group
    wanted = set(names)
    arrays = {n: a for n, a in group.arrays.items() if n in wanted}
    return ManifestStore(
        ManifestGroup(arrays=arrays, attributes=group.metadata.attributes),
        registry=manifest_store._registry,
    )


def _from_sidecar(granule: Granule, spec: DatasetSpec, registry: Any) -> VirtualGranule:
    """The granule built from its sidecar (the one its source names, else ``<url>.dmrpp``):
    one GET, then only its loaded variables.

    Raises
    ------
    SidecarError
        No sidecar, or one that cannot be used (the message says why).
    """
    from virtualizarr.manifests import ManifestStore

    from refstore import derive, dmrpp
    from refstore.fetch import GranuleBytes

    store, path = registry.resolve(granule.url)
    data = GranuleBytes(store, path, granule.size, block=512)  # the coordinates, near exact
    expected = granule.sidecar is not None or spec.dmrpp == "always" or spec.hint_guessed
    proofs = [p for p in map(derive.Proof.from_json, spec.proofs) if p is not None]
    # With a confirmed derivation, guessing would read what the derivation makes unneeded.
    applies = any(p.confirmed for p in proofs)
    hint = spec.coord_hint if expected and granule.size and not applies else ()
    guess = _hinted(data, hint) if hint else None  # no bytes wasted where a 404 is likely
    try:
        text = dmrpp.fetch_sidecar(registry, granule.url, granule.sidecar)
    finally:
        if guess is not None:
            guess.join()
    group = dmrpp.manifest_group(text, granule.url, spec.group, spec.drop_variables)
    if spec.group:  # the parents' coordinate, from the same sidecar (netCDF scoping)

        def parse(parent: str) -> Any:
            return dmrpp.manifest_group(text, granule.url, parent, spec.drop_variables).arrays

        group = with_parent_arrays(group, spec, parse)
    problem = dmrpp.outside(group, granule.size)
    if problem:
        raise dmrpp.SidecarError(problem)
    reads = data.registry(registry, granule.url)
    manifest_store = ManifestStore(group, registry=reads)  # type: ignore[arg-type]
    source, loadable = _plan_load(granule, spec, group.arrays)
    described = derive.describe(group, loadable, spec.concat_dim) if source is None else None
    proof_key = derive.key(described) if described is not None else None
    proof = next((p for p in proofs if p.key == proof_key), None)
    values = None
    if proof is not None and described is not None:
        names = tuple(described)
        values = derive.derived_values(proof, group, spec.concat_dim, names, granule.url)
    # Applied only where confirmed, and not on the sampled granules (read and compared).
    use = values if proof is not None and proof.confirmed else None
    try:
        if use is not None and not derive.sampled(granule.key):
            vg = _finish(
                granule, spec, manifest_store, "hdf5", None, derive.values_store(group, use)
            )
            return replace(vg, origin="dmrpp", derived=True)
        vg = replace(_finish(granule, spec, manifest_store, "hdf5", data), origin="dmrpp")
    except GranuleError as e:
        raise dmrpp.SidecarError(f"sidecar-built granule failed: {e.message}") from e
    if proof_key is None:
        return vg
    checked: VirtualGranule = derive.check_or_learn(
        vg, group, spec.concat_dim, (proof_key, proof), values
    )
    return checked


def _parse(granule: Granule, spec: DatasetSpec, registry: Any) -> VirtualGranule:
    from refstore import _compat
    from refstore.dmrpp import NoSidecar, SidecarError

    _compat.install()
    if spec.dmrpp == "never" or spec.groups:  # a hierarchy: from the file (docs/layouts.md)
        return _parse_file(granule, spec, registry)
    try:
        return replace(_from_sidecar(granule, spec, registry), probe=FOUND)
    except SidecarError as e:
        if spec.dmrpp == "always":
            raise GranuleError(
                f"{granule.key}: {e}",
                'Publish the sidecar, or set [source] dmrpp = "auto" to fall back to the file.',
            ) from e
        probe = ABSENT if isinstance(e, NoSidecar) else FOUND
        return replace(_parse_file(granule, spec, registry), note=str(e), probe=probe)


def _parse_file(granule: Granule, spec: DatasetSpec, registry: Any) -> VirtualGranule:
    """The granule built from its own HDF5/netCDF-3 metadata."""
    from virtualizarr.parsers import HDFParser, NetCDF3Parser

    data = _open_bytes(granule, registry)
    fmt = _sniff(data)
    registry = data.registry(registry, granule.url)
    drop = list(spec.drop_variables) or None
    group = spec.group or None
    parser: Any
    if fmt == "hdf5" and spec.groups:
        return _parse_hierarchy(granule, spec, data, registry)
    if fmt == "hdf5":
        parser = HDFParser(
            group=group, drop_variables=drop, reader_factory=lambda _s, _p: data.reader()
        )
    elif fmt == "netcdf3":
        parser = NetCDF3Parser(group=group, skip_variables=drop)
    else:
        raise GranuleError(
            f"{granule.key}: not an HDF5/NetCDF4 or NetCDF-3 file "
            f"(starts with {data.read(0, 8)!r})",
            "Remove the file from the source or fix the upload; then `refstore retry`.",
        )
    try:
        manifest_store = parser(url=granule.url, registry=registry)
        if fmt == "hdf5" and group:
            manifest_store = _with_parent_coordinate(manifest_store, granule, spec, data, registry)
    except Exception as e:
        raise GranuleError(f"{granule.key}: {fmt} parser failed: {_short(e)}") from e
    return _finish(granule, spec, manifest_store, fmt, data)


def _in_group(names: Iterable[str] | None, group: str) -> tuple[str, ...] | None:
    """The names (``product/no2``, or ``crs`` in the root) that belong to ``group``."""
    from refstore.hierarchy import group_of

    if names is None:
        return None
    return tuple(b for g, b in map(group_of, names) if g == group)


def _parse_hierarchy(
    granule: Granule, spec: DatasetSpec, data: GranuleBytes, registry: Any
) -> VirtualGranule:
    """Every wanted group of the granule as one flat dataset (:mod:`refstore.hierarchy`):
    a group along the concat dim is read as a store of that group alone would read it
    (with its parents' coordinate), one without it is loaded whole (static support data,
    compared on every later granule like any variable without the concat dim)."""
    from virtualizarr.parsers import HDFParser

    from refstore import _compat, hierarchy

    try:
        present = hierarchy.file_groups(data.reader())
    except Exception as e:
        raise GranuleError(f"{granule.key}: hdf5 groups cannot be listed: {_short(e)}") from e
    parts: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    along: list[VirtualGranule] = []
    dim = spec.concat_dim
    for group in hierarchy.wanted_groups(spec.groups, present, granule.key):
        own = replace(
            spec,
            group=group,
            groups=(),
            drop_variables=_in_group(spec.drop_variables, group) or (),
            loadable_variables=_in_group(spec.loadable_variables, group),
        )
        drop = list(own.drop_variables) or None
        try:
            parser = HDFParser(
                group=group or None,
                drop_variables=drop,
                reader_factory=lambda _s, _p: data.reader(),
            )
            manifest_store = parser(url=granule.url, registry=registry)
            parsed[group] = manifest_store._group.arrays  # parents come first: read once
            if group:
                manifest_store = _with_parent_coordinate(
                    manifest_store, granule, own, data, registry, parsed
                )
        except Exception as e:
            problem = f"group {group!r}: hdf5 parser failed: {_short(e)}"
            raise GranuleError(f"{granule.key}: {problem}") from e
        arrays = manifest_store._group.arrays
        if any(dim in (a.metadata.dimension_names or ()) for a in arrays.values()):
            vg = _finish(granule, own, manifest_store, "hdf5", data)
            along.append(vg)
            parts[group] = vg.dataset
            continue
        names = list(arrays)
        try:
            ds = _compat.virtual_dataset(manifest_store._group, _only(manifest_store, names), names)
            for name in names:
                ds.variables[name].load()
        except Exception as e:
            raise GranuleError(
                f"{granule.key}: group {group!r}: cannot read its variables: {_short(e)}",
                "Leave the group out of [dataset] group, or fix the file upstream.",
            ) from e
        record_attr_dtypes(ds)
        parts[group] = _raw(ds, manifest_store, names)
    if not along:
        raise GranuleError(
            f"{granule.key}: no group has the dimension {dim!r} "
            f"(groups: {', '.join(repr(g) for g in parts)})",
            "Fix [dataset] concat_dim, or the groups kept ([dataset] group).",
        )
    order = parse_concat_from(spec.concat_from).order_by(dim)
    flat = hierarchy.flatten(parts, dim, granule.key, order)
    main = along[0]
    return replace(main, dataset=flat, signature=signature(flat, dim), coord_ranges=())


def parent_groups(group: str) -> list[str]:
    """The groups above ``group``, nearest first: ``"a/b/c"`` -> ``["a/b", "a", ""]``."""
    parts = [p for p in group.strip("/").split("/") if p]
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def _with_parent_coordinate(
    manifest_store: Any,
    granule: Granule,
    spec: DatasetSpec,
    data: GranuleBytes,
    registry: Any,
    parsed: dict[str, Any] | None = None,
) -> Any:
    """``manifest_store`` plus the concat-dim coordinate from the nearest parent group
    that has it, when the group itself has the dim but not its coordinate (TEMPO keeps
    ``mirror_step`` in the root, the data in ``product/``): netCDF scoping, as a
    coordinate in a parent group applies to its children. Unchanged otherwise.
    ``parsed``: the arrays of groups parsed already, by path (a hierarchy's), added to."""
    from virtualizarr.manifests import ManifestStore
    from virtualizarr.parsers import HDFParser

    def read(_store: Any, _path: str) -> Any:
        return data.reader()

    def parse(parent: str) -> Any:
        parser = HDFParser(group=parent or None, reader_factory=read)
        return parser(url=granule.url, registry=registry)._group.arrays

    group = manifest_store._group
    scoped = with_parent_arrays(group, spec, parse, parsed)
    if scoped is group:
        return manifest_store
    return ManifestStore(scoped, registry=manifest_store._registry)


def with_parent_arrays(
    group: Any,
    spec: DatasetSpec,
    parse: Callable[[str], Mapping[str, Any]],
    parsed: dict[str, Any] | None = None,
) -> Any:
    """The ``ManifestGroup`` of ``spec.group`` with dims named as netCDF scoping sees
    them and, when it has the concat dim without its coordinate (or without the variable
    ``concat_from = "var:NAME"`` orders by), that 1-D array from the nearest parent group
    ``parse(parent)`` has it in; ``group`` itself when nothing changes."""
    from virtualizarr.manifests import ManifestGroup

    parents = parent_groups(spec.group)
    arrays = _scoped_dims(group.arrays, parents)
    dim = spec.concat_dim
    has_dim = any(dim in (a.metadata.dimension_names or ()) for a in arrays.values())
    # The dim's coordinate, and the variable that orders granules (concat_from = var:NAME)
    wanted = {dim, parse_concat_from(spec.concat_from).order_by(dim)} - set(arrays)
    parsed = {} if parsed is None else parsed
    for name in sorted(wanted) if has_dim else ():
        for parent in parents:
            if parent not in parsed:
                parsed[parent] = parse(parent)
            found = parsed[parent].get(name)
            if found is not None:
                found = _scoped_dims({name: found}, [*parent_groups(parent), parent])[name]
            if found is not None and tuple(found.metadata.dimension_names or ()) == (dim,):
                arrays = {**arrays, name: found}
                break
    if arrays == dict(group.arrays):
        return group
    return ManifestGroup(arrays=arrays, attributes=group.metadata.attributes)


def _scoped_dims(arrays: Mapping[str, Any], parents: list[str]) -> dict[str, Any]:
    """``arrays`` with dimensions defined in a parent group named as netCDF scoping sees
    them from the child: ``data_01/time`` -> ``time`` for ``data_01/ku`` (S6A)."""
    from virtualizarr.manifests import ManifestArray

    def local(d: str) -> str:
        head, _, base = d.strip("/").rpartition("/")
        return base if head in parents else d

    out: dict[str, Any] = {}
    for name, arr in arrays.items():
        dims = tuple(arr.metadata.dimension_names or ())
        scoped = tuple(local(str(d)) for d in dims)
        if scoped != dims:
            meta = replace(arr.metadata, dimension_names=scoped)
            arr = ManifestArray(metadata=meta, chunkmanifest=arr.manifest)
        out[name] = arr
    return out


def _raw(ds: Any, loaded: Any, loadable: Iterable[str]) -> Any:
    """``ds`` with its loaded variables as the file stores them (refstore.coords), from
    ``loaded`` (a store of them): decoding and re-encoding float times is off by an ulp
    at some steps."""
    import xarray as xr

    raw = xr.open_zarr(loaded, decode_cf=False, consolidated=False, chunks=None)
    return raw_loaded(ds, raw, loadable)


def _plan_load(
    granule: Granule, spec: DatasetSpec, arrays: Mapping[str, Any]
) -> tuple[Any, tuple[str, ...]]:
    """Where the concat value comes from if not the dim (refstore.concat_from; None: the
    dim), and which variables are loaded."""
    dims = {name: tuple(arr.metadata.dimension_names or ()) for name, arr in arrays.items()}
    all_dims = {d for ds in dims.values() for d in ds}
    source = value_source(
        granule, spec.concat_dim, spec.concat_from, dims, all_dims, shown_dims(all_dims)
    )
    order = parse_concat_from(spec.concat_from).order_by(spec.concat_dim)
    if source is None:
        loadable = choose_loadable(dims, spec.concat_dim, spec.loadable_variables)
        if order in dims and spec.loadable_variables is None:
            loadable = tuple(sorted({*loadable, order}))  # its values order the granule
        return None, loadable
    var_attrs = {name: arr.metadata.attributes for name, arr in arrays.items()}
    return source, tuple(
        loadable_expanded(spec.concat_dim, source, dims, var_attrs, spec.loadable_variables)
    )


def _finish(
    granule: Granule,
    spec: DatasetSpec,
    manifest_store: Any,
    fmt: str,
    data: GranuleBytes | None,
    values: Any = None,
) -> VirtualGranule:
    """From a parsed manifest store to a :class:`VirtualGranule` (loads what is loadable:
    from ``values``, a zarr store of them, when given, else through ``manifest_store``)."""
    source, loadable = _plan_load(granule, spec, manifest_store._group.arrays)
    order = parse_concat_from(spec.concat_from).order_by(spec.concat_dim)
    loaded = values if values is not None else _only(manifest_store, loadable)
    if data is not None:
        try:
            data.prefetch(_loaded_ranges(manifest_store, granule.url, loadable))
        except Exception as e:
            raise GranuleError(f"{granule.key}: cannot read loadable variables: {_short(e)}") from e
    from refstore import _compat

    try:
        ds = _compat.virtual_dataset(manifest_store._group, loaded, list(loadable))
    except Exception as e:
        culprit = _culprit(manifest_store, loadable)
        what = f"variable {culprit!r}" if culprit else "its variables"
        raise GranuleError(
            f"{granule.key}: cannot decode {what}: {_short(e)}",
            "Leave the variable out with [dataset] drop_variables, or fix the file upstream.",
        ) from e
    try:
        for name in loadable:
            ds.variables[name].load()  # materialize: the dataset travels between processes
    except Exception as e:
        raise GranuleError(f"{granule.key}: cannot read loadable variables: {_short(e)}") from e
    record_attr_dtypes(ds)  # typed CF attributes survive zarr's JSON (refstore.cf)
    first = last = values = None
    if source is not None:
        ds = _raw(ds, loaded, loadable)
        ds, values = expand_granule(
            granule, spec.concat_dim, source, ds, manifest_store._group.metadata.attributes
        )
        return VirtualGranule(
            granule=granule,
            dataset=ds,
            first=values[0],
            last=values[0],
            length=1,
            signature=signature(ds, spec.concat_dim),
            values=values,
            fmt=fmt,
        )
    length = int(ds.sizes[spec.concat_dim])
    if length == 0:
        raise GranuleError(
            f"{granule.key}: has no steps along {spec.concat_dim!r} (the dimension is empty)",
            "Nothing to append; if the file is incomplete, replace it upstream and retry.",
        )
    if order in ds.variables and ds[order].dims == (spec.concat_dim,):
        values = ds[order].values
        if values.size:
            if np.issubdtype(values.dtype, np.datetime64) and np.isnat(values).any():
                raise GranuleError(f"{granule.key}: {order} has missing values (NaT)")
            if values.size > 1 and not bool(np.all(values[1:] > values[:-1])):
                raise GranuleError(f"{granule.key}: {order} is not strictly increasing in the file")
            first, last = values[0], values[-1]
    elif order != spec.concat_dim:
        where = f"group {spec.group!r} or a parent group" if spec.group else "the file"
        found = f"dims {ds[order].dims}" if order in ds.variables else "no such variable"
        raise GranuleError(
            f"{granule.key}: concat_from = {spec.concat_from!r} needs a 1-D variable "
            f"{order!r} along {spec.concat_dim!r} in {where} ({found})",
            "Fix [dataset] concat_from (var:<a variable along the dim>) or the file.",
        )
    elif spec.concat_from != "arrival":
        where = f"group {spec.group!r} or a parent group" if spec.group else "the file"
        raise GranuleError(
            f"{granule.key}: no coordinate variable {spec.concat_dim!r} in {where} to order "
            f'granules by; set [dataset] concat_from = "arrival" to stack them in arrival '
            "order (by key within one sync), or a concat_dim that has a coordinate",
            'Granules are never stacked in arrival order unless concat_from = "arrival".',
        )
    ds = _raw(ds, loaded, loadable)
    return VirtualGranule(
        granule=granule,
        dataset=ds,
        first=first,
        last=last,
        length=length,
        signature=signature(ds, spec.concat_dim),
        values=values,
        fmt=fmt,
        coord_ranges=tuple(_loaded_ranges(manifest_store, granule.url, loadable)),
    )


def virtualize_granule(
    granule: Granule, spec: DatasetSpec, source: Any
) -> VirtualGranule | Failure:
    """Virtualize one granule; a failure comes back as a value, never raised.

    Parameters
    ----------
    granule
        What to read.
    spec
        The [dataset] settings.
    source
        The granule's :class:`~refstore.sources.Source` (gives the reader registry).
    """
    import warnings

    try:
        with warnings.catch_warnings():
            # Oversized-chunk, codec-spec and unstable-dtype warnings are advice, not
            # failures: the readback check decides whether the granule can be served.
            warnings.simplefilter("ignore")
            return _parse(granule, spec, source.registry())
    except RefstoreError as e:
        return Failure(key=granule.key, reason=e.message)
    except Exception as e:  # a bad file must never stop the batch
        return Failure(key=granule.key, reason=f"{granule.key}: {type(e).__name__}: {_short(e)}")
