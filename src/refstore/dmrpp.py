"""Granule manifests from DMR++ sidecars, and the checks that keep a wrong one out.

NASA DAACs publish ``<granule>.dmrpp`` next to many granules: an XML chunk manifest
made by OPeNDAP's ``build_dmrpp``. Reading it is one small GET and no byte of the
granule's metadata. VirtualiZarr's ``DMRParser`` turns it into a ``ManifestGroup``;
:func:`manifest_group` then makes that group say what the HDF5 parse of the same file
says, so both give one encoding signature and one readback:

- **codec order**: a sidecar names its filters (``compressionType="deflate shuffle"``),
  not their order; HDF5 (netCDF-4) applies shuffle before deflate, and VirtualiZarr
  2.8 keeps the listed order, which decodes to garbage. Put back in pipeline order.
- **byte order**: ``byteOrder="BE"`` is ignored by the parser (big-endian values would
  read byte-swapped); it becomes the zarr ``bytes`` codec's ``endian``.
- **typed CF attributes**: the XML types of ``_FillValue``, ``scale_factor``, ... are
  recorded in :data:`refstore.cf.ATTR_DTYPES`, as the HDF5 path does.
- **scalars**: the parser gives a stored scalar (``crs``) no chunk; it gets its one.

A variable the parser cannot read is a warning there; here it makes the sidecar
unusable (:class:`SidecarError`), and the granule falls back to its HDF5 metadata.
:func:`outside` checks every chunk lies inside the file (free: the listing gave the
size); :func:`disagreement` compares a sidecar-built granule with the HDF5-built one
(the first granule of each signature, in :mod:`refstore.sync`).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np

from refstore.cf import ATTR_DTYPES, CF_TYPED_ATTRS

__all__ = [
    "MODES",
    "NoSidecar",
    "SidecarError",
    "disagreement",
    "fetch_sidecar",
    "manifest_group",
    "outside",
    "sidecar_url",
]

MODES = ("auto", "never", "always")
_NS = {
    "dap": "http://xml.opendap.org/ns/DAP/4.0#",
    "dmrpp": "http://xml.opendap.org/dap/dmrpp/1.0.0#",
}
_DAP = "{" + _NS["dap"] + "}"
# Pipeline order of the filters a sidecar names (HDF5/netCDF-4 writes shuffle first).
_ORDER = {"numcodecs.fletcher32": 0, "numcodecs.shuffle": 1, "numcodecs.zlib": 2}


class SidecarError(Exception):
    """The sidecar cannot be used for this granule (the reason is the message)."""


class NoSidecar(SidecarError):
    """No sidecar is published where it was looked for (a 404, or a missing file)."""


def sidecar_url(url: str, named: str | None = None) -> str:
    """Where a granule's DMR++ sidecar is: the one its source names, else ``<url>.dmrpp``."""
    return named or f"{url}.dmrpp"


def fetch_sidecar(registry: Any, url: str, named: str | None = None) -> bytes:
    """The sidecar's bytes (one GET).

    Raises
    ------
    NoSidecar
        There is none at :func:`sidecar_url`.
    SidecarError
        It exists but could not be read.
    """
    where = sidecar_url(url, named)
    try:
        store, path = registry.resolve(where)
        return bytes(store.get(path).bytes())
    except FileNotFoundError as e:
        raise NoSidecar(f"no sidecar at {where}") from e
    except Exception as e:
        raise SidecarError(f"sidecar {where} could not be read ({type(e).__name__}: {e})") from e


def _var_tags(root: ET.Element, group: str) -> dict[str, ET.Element]:
    node: ET.Element | None = root
    for part in [p for p in group.split("/") if p]:
        node = node.find(f"dap:Group[@name='{part}']", _NS) if node is not None else None
    if node is None:
        return {}
    return {
        el.attrib["name"]: el
        for el in node
        if el.tag.startswith(_DAP)
        and el.tag[len(_DAP) :] not in ("Dimension", "Attribute", "Group")
        and "name" in el.attrib
    }


def _typed(tag: ET.Element) -> dict[str, str]:
    out = {}
    for el in tag.iterfind("dap:Attribute", _NS):
        name, kind = el.attrib.get("name"), el.attrib.get("type", "")
        if name in CF_TYPED_ATTRS and kind not in ("String", "Url", "Container", ""):
            out[str(name)] = str(np.dtype(kind.lower().replace("byte", "uint8")))
    return out


def _fix(arr: Any, tag: ET.Element, data_url: str) -> Any:
    from virtualizarr.manifests import ChunkManifest, ManifestArray
    from zarr.codecs import BytesCodec

    meta = arr.metadata
    chunks = tag.find("dmrpp:chunks", _NS)
    first, *rest = list(meta.codecs)
    rest.sort(key=lambda c: _ORDER.get(c.to_dict().get("name", ""), len(_ORDER)))
    if (
        chunks is not None
        and chunks.attrib.get("byteOrder") == "BE"
        and isinstance(first, BytesCodec)
    ):
        first = BytesCodec(endian="big")
    attrs = dict(meta.attributes)
    typed = _typed(tag)
    if typed:
        attrs[ATTR_DTYPES] = json.dumps(typed, sort_keys=True)
    manifest = arr.manifest
    if meta.shape == () and chunks is not None:
        one = chunks.find("dmrpp:chunk", _NS)
        if one is not None:
            manifest = ChunkManifest.from_arrays(
                paths=np.array(data_url, dtype=np.dtypes.StringDType()),  # type: ignore[arg-type]
                offsets=np.array(int(one.attrib["offset"]), dtype=np.uint64),
                lengths=np.array(int(one.attrib["nBytes"]), dtype=np.uint64),
            )
    meta = replace(meta, codecs=(first, *rest), attributes=attrs)
    return ManifestArray(metadata=meta, chunkmanifest=manifest)


def manifest_group(text: bytes, data_url: str, group: str = "", drop: tuple[str, ...] = ()) -> Any:
    """The granule's ``ManifestGroup`` from its sidecar, as the HDF5 parse would give it.

    Raises
    ------
    SidecarError
        The XML does not parse, lacks the group, or a variable cannot be read.
    """
    from virtualizarr.manifests import ManifestGroup

    from refstore import _compat

    try:
        root = ET.fromstring(text)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parsed = _compat.dmrpp_group(root, data_url, group or None, list(drop))
    except Exception as e:
        raise SidecarError(f"sidecar does not parse ({type(e).__name__}: {e})") from e
    for w in caught:
        message = " ".join(str(w.message).split())
        if any(p in message for p in ("could not be parsed", "No groups")):
            raise SidecarError(f"sidecar: {message}")
    tags = _var_tags(root, group)
    arrays = {
        name: _fix(arr, tags[name], data_url) if name in tags else arr
        for name, arr in parsed.arrays.items()
    }
    return ManifestGroup(arrays=arrays, attributes=parsed.metadata.attributes)


def outside(group: Any, size: int | None) -> str | None:
    """The first chunk that lies outside a file of ``size`` bytes, as a reason; else None."""
    if size is None:
        return None
    for name, arr in group.arrays.items():
        for key, entry in arr.manifest.dict().items():
            end = int(entry["offset"]) + int(entry["length"])
            if end > size:
                return (
                    f"{name}: sidecar chunk {key or '0'} ends at byte {end}, "
                    f"past the end of the file ({size} bytes)"
                )
    return None


def _same(a: Any, b: Any) -> bool:
    try:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(
            b, sort_keys=True, default=str
        )
    except ValueError:
        return bool(a == b)


def _fill_equal(a: Any, b: Any) -> bool:
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype.kind == "f" and y.dtype.kind == "f" and x.size == y.size == 1:
        return bool(x == y) or (math.isnan(float(x)) and math.isnan(float(y)))
    return bool(np.array_equal(x, y))


def _meta_difference(name: str, a: Any, b: Any) -> str | None:
    ma, mb = a.metadata, b.metadata
    for label, x, y in (
        ("shape", tuple(ma.shape), tuple(mb.shape)),
        ("chunks", tuple(ma.chunks), tuple(mb.chunks)),
        ("dtype", str(ma.data_type), str(mb.data_type)),
        ("codecs", [c.to_dict() for c in ma.codecs], [c.to_dict() for c in mb.codecs]),
    ):
        if not _same(x, y):
            return f"{name}: {label} {x} in the sidecar, {y} in the file"
    if not _fill_equal(ma.fill_value, mb.fill_value):
        return f"{name}: fill value {ma.fill_value} in the sidecar, {mb.fill_value} in the file"
    ea, eb = a.manifest.dict(), b.manifest.dict()
    for key in sorted(set(ea) | set(eb)):
        x, y = ea.get(key), eb.get(key)
        if x is None or y is None or (x["offset"], x["length"]) != (y["offset"], y["length"]):

            def show(e: Any) -> str:
                return "none" if e is None else f"offset {e['offset']} length {e['length']}"

            return f"{name}: chunk {key or '0'} at {show(x)} in the sidecar, {show(y)} in the file"
    return None


def disagreement(sidecar: Any, file: Any) -> str | None:
    """How a sidecar-built virtual dataset differs from the HDF5-built one; None if not.

    Compares the variable set, each virtual variable's shape, chunks, dtype, codecs, fill
    value and chunk references, each loaded variable's values and dtype, and every
    variable's attributes.
    """
    from virtualizarr.manifests import ManifestArray

    names_a, names_b = set(sidecar.variables), set(file.variables)
    missing, extra = sorted(map(str, names_b - names_a)), sorted(map(str, names_a - names_b))
    if missing:
        return f"variable(s) {', '.join(missing)} missing from the sidecar"
    if extra:
        return f"sidecar has variable(s) {', '.join(extra)} the file lacks"
    for name in sorted(map(str, names_b)):
        va, vb = sidecar.variables[name], file.variables[name]
        if va.dims != vb.dims:
            return f"{name}: dimensions {va.dims} in the sidecar, {vb.dims} in the file"
        virtual_a, virtual_b = (
            isinstance(va.data, ManifestArray),
            isinstance(vb.data, ManifestArray),
        )
        if virtual_a != virtual_b:
            return f"{name}: virtual in one parse, loaded in the other"
        if virtual_a:
            problem = _meta_difference(name, va.data, vb.data)
            if problem:
                return problem
        else:
            x, y = np.asarray(va.values), np.asarray(vb.values)
            if (
                x.dtype != y.dtype
                or x.shape != y.shape
                or not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
            ):
                return f"{name}: loaded values differ between the sidecar and the file"
        keys = set(va.attrs) | set(vb.attrs)
        for k in sorted(keys):
            x, y = va.attrs.get(k), vb.attrs.get(k)
            if not _same(x, y):
                return f"{name}: attribute {k} {x!r} in the sidecar, {y!r} in the file"
    return None
