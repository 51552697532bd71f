"""refstore: keep virtual Zarr references of a growing NetCDF4/HDF5 archive up to date.

A SQLite ledger remembers which granules are already referenced; ``sync`` virtualizes
only new ones with VirtualiZarr, appends them to an Icechunk repository as one snapshot
per update and refreshes a kerchunk Parquet export; any earlier snapshot stays openable.
"""

import importlib
import sys
import types
from typing import Any

from refstore.errors import (
    ConfigError,
    ConflictError,
    GranuleError,
    NotFoundError,
    RefstoreError,
    SourceError,
    StoreError,
)

# The public API is imported on first use, so `import refstore.cli` (and `refstore --help`)
# does not pay for numpy, xarray, Icechunk or VirtualiZarr.
_LAZY = {
    "Config": "refstore.config",
    "load_config": "refstore.config",
    "open_dataset": "refstore.api",
    "open_datatree": "refstore.api",
    "open_export": "refstore.api",
    "open_store": "refstore.api",
}


def sync(*args: Any, **kwargs: Any) -> Any:
    """Run one sync (:func:`refstore.sync.sync`; imported on first call)."""
    return importlib.import_module("refstore.sync").sync(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'refstore' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``refstore.sync`` the function once the ``refstore.sync`` module is imported
    (the import system sets a submodule as an attribute of its package), as before."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "sync" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Config",
    "ConfigError",
    "ConflictError",
    "GranuleError",
    "NotFoundError",
    "RefstoreError",
    "SourceError",
    "StoreError",
    "load_config",
    "open_dataset",
    "open_datatree",
    "open_export",
    "open_store",
    "sync",
]
__version__ = "0.1.0"
