"""refstore: keep virtual Zarr references of a growing NetCDF4/HDF5 archive up to date.

A SQLite ledger remembers which granules are already referenced; ``sync`` virtualizes
only new ones with VirtualiZarr, appends them to an Icechunk repository as one snapshot
per update and refreshes a kerchunk Parquet export; any earlier snapshot stays openable.
"""

from refstore.api import open_dataset, open_export, open_store
from refstore.config import Config, load_config
from refstore.errors import (
    ConfigError,
    ConflictError,
    GranuleError,
    NotFoundError,
    RefstoreError,
    SourceError,
    StoreError,
)
from refstore.sync import sync

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
    "open_export",
    "open_store",
    "sync",
]
__version__ = "0.1.0"
