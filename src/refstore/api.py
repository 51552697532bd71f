"""The Python API: what the CLI calls, and what notebooks import."""

from __future__ import annotations

import os
from typing import Any

from refstore.config import Config, load_config
from refstore.errors import ConfigError, NotFoundError
from refstore.sources import source_for
from refstore.store import Store

__all__ = ["open_dataset", "open_export", "open_store"]


def _config(config: str | os.PathLike[str] | Config | None) -> Config:
    return config if isinstance(config, Config) else load_config(config)


def open_store(config: str | os.PathLike[str] | Config | None = None) -> Store:
    """The :class:`~refstore.store.Store` of a configuration, with source access granted."""
    cfg = _config(config)
    source = source_for(cfg)
    return Store(cfg.repo, (source.container(),), source)


def open_export(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Open a kerchunk export (Parquet folder or JSON file) with plain fsspec + xarray."""
    import fsspec
    import xarray as xr

    if not os.path.exists(path):
        raise NotFoundError(
            f"No export at {path}.", "Run `refstore sync` or `refstore export` to write it."
        )
    fs = fsspec.filesystem("reference", fo=str(path), remote_protocol="file")
    kwargs.setdefault("chunks", {})
    return xr.open_dataset(
        fs.get_mapper(""), engine="zarr", consolidated=False, zarr_format=2, **kwargs
    )


def open_dataset(
    config: str | os.PathLike[str] | Config | None = None,
    at: str | None = None,
    source: str = "repo",
    **kwargs: Any,
) -> Any:
    """The store's dataset as a lazy ``xr.Dataset``.

    Parameters
    ----------
    config
        Path of a ``refstore.toml`` (default: the one in the working directory) or a
        :class:`Config`.
    at
        A snapshot id, tag or ISO date/datetime: the dataset as it was then.
    source
        ``"repo"`` reads the Icechunk repository; ``"export"`` reads the kerchunk
        Parquet export with plain fsspec + xarray (``at`` is then not allowed: the
        export always holds the newest snapshot).

    Raises
    ------
    NotFoundError
        No repository/export yet, or ``at`` matches nothing.
    """
    cfg = _config(config)
    if source == "repo":
        return open_store(cfg).open_dataset(at, **kwargs)
    if source == "export":
        if at is not None:
            raise ConfigError(
                "The export holds the newest snapshot only; `at` needs source='repo'.",
                "Use open_dataset(..., at=REF) without source='export', or "
                "`refstore export --at REF -o PATH` and open that file.",
            )
        return open_export(cfg.export, **kwargs)
    raise ConfigError(f"Unknown source {source!r}.", "Use source='repo' or source='export'.")
