"""The one place refstore reaches into third-party internals (VirtualiZarr 2.8 parsers).

Each patch fixes a fidelity gap of the installed parser and has a smoke test in
``tests/test_compat.py``, so a new VirtualiZarr release that moves a name breaks here,
loudly, and nowhere else. :func:`install` is idempotent and runs in every process that
parses (worker processes included).

- **HDF5 filter pipelines** (``codecs_from_dataset``): VirtualiZarr reads h5py's
  ``dataset._filters``, a dict keyed by filter name, so a repeated filter collapses into
  one (shuffle + deflate + deflate, a real NOAA VIIRS L3U encoding, lands as shuffle +
  deflate and cannot be read). Rebuilt here from the low-level pipeline, in order, with
  each filter's own parameters (shuffle element size, deflate level, fletcher32).
- **Typed CF attributes** (``_extract_attrs`` and the netCDF-3 attribute reader): the
  parsers turn attributes into JSON values; the numpy dtypes CF decoding depends on are
  kept in :data:`refstore.cf.ATTR_DTYPES`.
- **Opening only what is loaded** (:func:`virtual_dataset`): VirtualiZarr's
  ``to_virtual_dataset`` opens every variable with xarray to keep the loaded ones.
"""

from __future__ import annotations

import json
from typing import Any

from refstore.cf import ATTR_DTYPES, CF_TYPED_ATTRS, attr_dtypes

__all__ = ["dmrpp_group", "hdf5_codecs", "install", "virtual_dataset"]

_INSTALLED = False

# HDF5 filter ids (H5Zpublic.h) with a numcodecs equivalent.
_DEFLATE, _SHUFFLE, _FLETCHER32 = 1, 2, 3
_NO_CODEC = {4: "szip", 5: "nbit", 6: "scaleoffset"}


def hdf5_codecs(dataset: Any) -> list[Any]:
    """numcodecs codecs for ``dataset``'s HDF5 filter pipeline, in pipeline order.

    Raises
    ------
    NotImplementedError
        A filter has no numcodecs equivalent (szip, nbit, scale-offset, unknown plugins).
    """
    from numcodecs import get_codec
    from virtualizarr.parsers.hdf.filters import _filter_to_codec

    plist = dataset.id.get_create_plist()
    codecs = []
    for i in range(plist.get_nfilters()):
        code, _flags, values, name = plist.get_filter(i)
        text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        if code == _DEFLATE:
            codecs.append(get_codec({"id": "zlib", "level": int(values[0]) if values else 6}))
        elif code == _SHUFFLE:
            size = int(values[0]) if values else dataset.dtype.itemsize
            codecs.append(get_codec({"id": "shuffle", "elementsize": size}))
        elif code == _FLETCHER32:
            codecs.append(get_codec({"id": "fletcher32"}))
        elif code in _NO_CODEC:
            raise NotImplementedError(
                f"HDF5 filter {_NO_CODEC[code]} (id {code}) has no numcodecs codec"
            )
        else:
            try:
                codecs.append(_filter_to_codec(str(code), tuple(values)))
            except Exception as e:
                raise NotImplementedError(
                    f"HDF5 filter {text or code} (id {code}) is not available: {e}"
                ) from e
    return codecs


def _typed_attrs(original: Any) -> Any:
    def extract(h5obj: Any, *args: Any, **kwargs: Any) -> Any:
        attrs = original(h5obj, *args, **kwargs)
        found = attr_dtypes({k: h5obj.attrs[k] for k in CF_TYPED_ATTRS if k in h5obj.attrs})
        if found:
            attrs[ATTR_DTYPES] = json.dumps(found, sort_keys=True)
        return attrs

    return extract


def _typed_nc3_att_list(reader_cls: Any, nc_types: dict[int, Any], attribute_tag: int) -> Any:
    original = reader_cls.values

    def att_list(self: Any) -> dict[str, Any]:
        # As the parser's own att_list, also noting each CF attribute's netCDF type.
        tag, nelems = self.int32(), self.size()
        if tag == 0:
            if nelems != 0:
                raise ValueError(f"expected an empty attribute list, got {nelems}")
            return {}
        if tag != attribute_tag:
            raise ValueError(f"expected an attribute list, got tag {tag}")
        attrs: dict[str, Any] = {}
        dtypes: dict[str, str] = {}
        for _ in range(nelems):
            name = self.name()
            nc_type = self.int32()
            self._check_type(nc_type)
            attrs[name] = original(self, nc_type, self.size())
            if name in CF_TYPED_ATTRS and nc_type != 2:
                dtypes[name] = str(nc_types[nc_type].newbyteorder("="))
        if dtypes:
            attrs[ATTR_DTYPES] = json.dumps(dtypes, sort_keys=True)
        return attrs

    return att_list


def dmrpp_group(root: Any, data_url: str, group: str | None, skip: list[str]) -> Any:
    """VirtualiZarr's ``ManifestGroup`` for a parsed DMR++ XML tree (its ``DMRParser``,
    which the public ``DMRPPParser`` only reaches by fetching the sidecar itself).

    Raises
    ------
    ValueError
        The tree has no such group, or a required attribute is missing.
    """
    from obstore.store import MemoryStore
    from virtualizarr.parsers.dmrpp import DMRParser

    parser = DMRParser(root=root, data_filepath=data_url, skip_variables=skip)
    return parser.parse_dataset(object_store=MemoryStore(), group=group)._group


def virtual_dataset(group: Any, loadable_store: Any, loadable: list[str]) -> Any:
    """What ``ManifestStore.to_virtual_dataset(loadable_variables=loadable)`` gives, with
    only the loadable variables opened by xarray (``loadable_store`` holds just them).

    VirtualiZarr opens the whole store to take the loaded variables from it, and CF
    decoding of that open reads the first and last element of every virtual variable
    with time units (RSS SSMIS ``sst_dtime``: one more request per granule, 4.4 KB of a
    variable that stays virtual), and decodes every variable's attributes for nothing.
    """
    import xarray as xr
    from virtualizarr.xarray import replace_virtual_with_loadable_vars

    virtual = group.to_virtual_dataset()
    with xr.open_zarr(loadable_store, consolidated=False, zarr_format=3, chunks=None) as loaded:
        ds = replace_virtual_with_loadable_vars(virtual, loaded, list(loadable))
    # What the whole open would have made coordinates: the names in any variable's (or
    # the group's) CF ``coordinates`` attribute.
    named = [group.metadata.attributes, *(a.metadata.attributes for a in group.arrays.values())]
    listed = {n for attrs in named for n in str(attrs.get("coordinates", "")).split()}
    return ds.set_coords(sorted(listed & set(map(str, ds.data_vars))))


def install() -> None:
    """Apply the patches above (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from virtualizarr.parsers import netcdf3
    from virtualizarr.parsers.hdf import hdf

    setattr(hdf, "codecs_from_dataset", hdf5_codecs)  # noqa: B010 (a module global)
    hdf._extract_attrs = _typed_attrs(hdf._extract_attrs)
    att_list = _typed_nc3_att_list(netcdf3._HeaderReader, netcdf3._NC_TYPES, netcdf3._NC_ATTRIBUTE)
    setattr(netcdf3._HeaderReader, "att_list", att_list)  # noqa: B010
    _INSTALLED = True
