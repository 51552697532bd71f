"""A small DMR++ writer for tests: the sidecar OPeNDAP's ``build_dmrpp`` would publish.

It reads the file's chunk index with h5py (``dataset.id.get_chunk_info``), names,
dimensions and attributes with h5netcdf (netCDF semantics), and writes the DMR++ XML
elements VirtualiZarr's ``DMRPPParser`` reads: ``<Dimension>``, typed variables with
``<Dim>``/``<Attribute>``, and ``<dmrpp:chunks>`` with ``compressionType`` (in the
order real sidecars list it, ``"deflate shuffle"``), ``deflateLevel``, ``fillValue``,
``byteOrder``, ``<dmrpp:chunkDimensionSizes>`` and one ``<dmrpp:chunk>`` per stored
chunk. ``edit`` lets a test plant a disagreement (a wrong offset, a missing variable).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

__all__ = ["DAP_TYPES", "dmrpp_text", "write_dmrpp"]

DAP_TYPES = {
    "int8": "Int8",
    "uint8": "UInt8",
    "int16": "Int16",
    "uint16": "UInt16",
    "int32": "Int32",
    "uint32": "UInt32",
    "int64": "Int64",
    "uint64": "UInt64",
    "float32": "Float32",
    "float64": "Float64",
}
_FILTERS = {1: "deflate", 2: "shuffle"}


def _attr(name: str, value: Any) -> str:
    arr = np.asarray(value)
    if arr.dtype.kind in "SUO":
        items = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.ravel(arr)
        ]
        kind = "String"
    else:
        kind = DAP_TYPES[arr.dtype.newbyteorder("=").name]
        items = [repr(v.item()) for v in np.ravel(arr)]
    values = "".join(f"<Value>{escape(v)}</Value>" for v in items)
    return f"<Attribute name={quoteattr(name)} type={quoteattr(kind)}>{values}</Attribute>"


def _chunks(dataset: Any) -> str:
    dsid = dataset.id
    plist = dsid.get_create_plist()
    names, level = [], None
    for i in range(plist.get_nfilters()):
        code, _flags, values, _name = plist.get_filter(i)
        if code not in _FILTERS:
            raise NotImplementedError(f"filter {code} has no DMR++ name here")
        names.append(_FILTERS[code])
        if code == 1:
            level = int(values[0]) if values else None
    names.sort()  # real sidecars list "deflate shuffle", whatever the pipeline order
    order = "BE" if dataset.dtype.byteorder == ">" else "LE"
    attrs = f' byteOrder="{order}"'
    if names:
        attrs += f' compressionType="{" ".join(names)}"'
    if level is not None:
        attrs += f' deflateLevel="{level}"'
    fill = dataset.fillvalue
    attrs += f" fillValue={quoteattr(repr(np.asarray(fill).item()))}"
    parts = [f"<dmrpp:chunks{attrs}>"]
    if dataset.chunks is not None:
        parts.append(
            f"<dmrpp:chunkDimensionSizes>{' '.join(map(str, dataset.chunks))}"
            "</dmrpp:chunkDimensionSizes>"
        )
        for i in range(dsid.get_num_chunks()):
            info = dsid.get_chunk_info(i)
            pos = ",".join(str(int(p)) for p in info.chunk_offset)
            parts.append(
                f'<dmrpp:chunk offset="{info.byte_offset}" nBytes="{info.size}" '
                f'chunkPositionInArray="[{pos}]"/>'
            )
    elif dsid.get_offset() is not None:
        parts.append(
            f'<dmrpp:chunk offset="{dsid.get_offset()}" nBytes="{dsid.get_storage_size()}"/>'
        )
    parts.append("</dmrpp:chunks>")
    return "".join(parts)


def dmrpp_text(path: str | Path, group: str = "") -> str:
    """The DMR++ XML of the file at ``path`` (its root group, or ``group``)."""
    import h5netcdf

    path = Path(path)
    with h5netcdf.File(path, "r", phony_dims="access") as f:
        g = f[group] if group else f
        prefix = f"/{group}" if group else ""
        body = [f'<Dimension name="{name}" size="{d.size}"/>' for name, d in g.dimensions.items()]
        for name, var in g.variables.items():
            ds = var._h5ds
            kind = DAP_TYPES[ds.dtype.newbyteorder("=").name]
            dims = "".join(f'<Dim name="{prefix}/{d}"/>' for d in var.dimensions)
            # h5py's values (h5netcdf's names): h5netcdf decodes some text with surrogates.
            attrs = "".join(_attr(k, ds.attrs[k]) for k in var.attrs)
            body.append(f'<{kind} name="{name}">{dims}{attrs}{_chunks(ds)}</{kind}>')
        body += [_attr(k, g._h5group.attrs[k]) for k in g.attrs]
        inner = "".join(body)
        if group:
            inner = f'<Group name="{group}">{inner}</Group>'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Dataset xmlns="http://xml.opendap.org/ns/DAP/4.0#" '
        'xmlns:dmrpp="http://xml.opendap.org/dap/dmrpp/1.0.0#" dapVersion="4.0" '
        f'dmrVersion="1.0" name="{path.name}" dmrpp:href="OPeNDAP_DMRpp_DATA_ACCESS_URL">'
        f"{inner}</Dataset>\n"
    )


def write_dmrpp(
    path: str | Path,
    group: str = "",
    out: str | Path | None = None,
    edit: Callable[[str], str] | None = None,
) -> Path:
    """Write ``<path>.dmrpp`` (or ``out``) beside the file; ``edit`` changes the text first."""
    text = dmrpp_text(path, group)
    if edit is not None:
        text = edit(text)
    target = Path(out) if out is not None else Path(f"{path}.dmrpp")
    target.write_text(text, encoding="utf-8")
    return target
