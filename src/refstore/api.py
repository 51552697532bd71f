"""The Python API: what the CLI calls, and what notebooks import."""

from __future__ import annotations

import os
from typing import Any

from refstore.config import Config, load_config
from refstore.errors import ConfigError, NotFoundError
from refstore.storage import S3Options, is_local, store_options
from refstore.store import Store

__all__ = [
    "open_dataset",
    "open_datatree",
    "open_export",
    "open_history",
    "open_refs",
    "open_store",
]


def _config(config: str | os.PathLike[str] | Config | None) -> Config:
    return config if isinstance(config, Config) else load_config(config)


def open_store(config: str | os.PathLike[str] | Config | None = None) -> Store:
    """The :class:`~refstore.store.Store` of a configuration, with source access granted
    to the hosts the repository recorded and ``[source] allowed_hosts`` (only)."""
    from refstore.access import open_bound

    return open_bound(_config(config))[0]


def open_history(config: str | os.PathLike[str] | Config | None = None) -> Store:
    """The :class:`~refstore.store.Store` for reading its history and commit metadata
    only: no source is contacted (it may be gone or unreachable) and no chunk is read."""
    cfg = _config(config)
    return Store(cfg.repo, options=store_options(cfg))


def open_export(
    path: str | os.PathLike[str],
    *,
    options: S3Options | None = None,
    fs: dict[str, dict[str, Any]] | None = None,
    **kwargs: Any,
) -> Any:
    """Open a kerchunk export (Parquet folder or JSON file) with plain fsspec + xarray.

    Parameters
    ----------
    path
        A local export, or an ``s3://`` one (its ``LATEST`` version is opened).
    options
        S3 options of the export's bucket.
    fs
        fsspec options per protocol of the referenced data, e.g. ``{"s3": {...},
        "https": {"headers": {...}}}`` (default: local files only).
    kwargs
        Passed to ``xarray.open_dataset``.
    """
    import fsspec

    target: dict[str, Any] = {}
    if str(path).startswith("s3://"):
        from refstore.export_s3 import resolve_export, s3fs_options

        fo = resolve_export(str(path), options)
        target = {"target_protocol": "s3", "target_options": s3fs_options(options)}
    elif not os.path.exists(path):
        raise NotFoundError(
            f"No export at {path}.", "Run `refstore sync` or `refstore export` to write it."
        )
    else:
        fo = str(path)
    if fs:
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        # zarr reads through an asynchronous copy of this filesystem: the filesystems
        # it reaches must be asynchronous too (a synchronous s3fs/http one would run on
        # another event loop), and local paths (no protocol) need an async wrapper.
        local = AsyncFileSystemWrapper(fsspec.filesystem("file"), asynchronous=True)
        per_protocol: dict[Any, Any] = {None: local, "file": local}
        per_protocol |= {p: {**opts, "asynchronous": True} for p, opts in fs.items()}
        refs = fsspec.filesystem("reference", fo=fo, fs=per_protocol, **target)
    else:
        refs = fsspec.filesystem("reference", fo=fo, remote_protocol="file", **target)
    kwargs.setdefault("chunks", {})
    return open_refs(refs.get_mapper(""), **kwargs)


def open_refs(mapper: Any, **kwargs: Any) -> Any:
    """The zarr v2 dataset behind a kerchunk reference mapper, decoded with netCDF
    semantics (:func:`refstore.cf.open_decoded`)."""
    import xarray as xr

    from refstore.cf import open_decoded

    return open_decoded(
        xr.open_dataset,
        filename_or_obj=mapper,
        engine="zarr",
        consolidated=False,
        zarr_format=2,
        **kwargs,
    )


def _export_fs(cfg: Config) -> dict[str, dict[str, Any]] | None:
    """fsspec options for what an export references: the repository's own chunks
    (``[store]`` bucket) and the granules (the source's protocol and credentials)."""
    from refstore.export_s3 import s3fs_options

    fs: dict[str, dict[str, Any]] = {}
    if not is_local(cfg.repo):
        fs["s3"] = s3fs_options(store_options(cfg))
    hook = getattr(open_store(cfg).source, "fsspec_options", None)
    if hook is not None:
        fs.update(hook())
    return fs or None


def _refuse_rectilinear_export(cfg: Config) -> None:
    """Say why a rectilinear store or a hierarchy has no export (rather than "run sync")."""
    from refstore.chunkgrid import RECTILINEAR
    from refstore.errors import LayoutError

    store = open_store(cfg)
    head = store.head() if store.exists() else None
    if head is not None and store.groups():
        raise LayoutError(
            f"{cfg.repo} is a hierarchy of groups ({', '.join(store.groups())}): it has no "
            "kerchunk export.",
            "Open the Icechunk repository instead: refstore.open_datatree(config), or "
            "refstore.open_dataset(config, group=...).",
        )
    if head is not None and head.layout == RECTILINEAR:
        raise LayoutError(
            f"{cfg.repo} has a rectilinear chunk grid (granules of uneven length): it has "
            "no kerchunk export, which zarr v2 cannot express."
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
        export always holds the newest snapshot; a rectilinear store has no export).
    kwargs
        xarray's decoding keywords; ``group="product"`` opens one group of a
        whole-hierarchy store (``[dataset] group = "*"``), with the concat coordinate
        of the root as its coordinate (netCDF scoping), as ``xr.open_dataset(file,
        group="product")`` shows each granule.

    Raises
    ------
    NotFoundError
        No repository/export yet, or ``at`` matches nothing.
    LayoutError
        ``source="export"`` for a rectilinear store (its hint names the alternative).
    """
    cfg = _config(config)
    if source == "repo":
        store = open_store(cfg)
        check = getattr(store.source, "check_access", None)
        if check is not None:
            check()  # a missing login is one line with a hint, not a failed chunk read
        if at is not None:
            from refstore.maintenance import check_not_expired

            check_not_expired(cfg, store, at)
        if kwargs.get("group"):
            return _open_group(cfg, store, at, **kwargs)
        return store.open_dataset(at, **kwargs)
    if source == "export":
        if at is not None:
            raise ConfigError(
                "The export holds the newest snapshot only; `at` needs source='repo'.",
                "Use open_dataset(..., at=REF) without source='export', or "
                "`refstore export --at REF -o PATH` and open that file.",
            )
        if is_local(cfg.export) and not os.path.exists(cfg.export):
            _refuse_rectilinear_export(cfg)
        return open_export(cfg.export, options=store_options(cfg), fs=_export_fs(cfg), **kwargs)
    raise ConfigError(f"Unknown source {source!r}.", "Use source='repo' or source='export'.")


def _open_group(cfg: Config, store: Store, at: str | None, **kwargs: Any) -> Any:
    """One group of a hierarchy at ``at``, with its parents' concat coordinate."""
    from refstore.errors import NotFoundError

    group = str(kwargs.pop("group")).strip("/")
    session = store.session(at)
    from refstore.hierarchy import stored_groups

    if group not in stored_groups(session.store):
        raise NotFoundError(
            f"{cfg.repo} has no group {group!r}.",
            "List them with refstore.open_datatree(config) (its groups), or open the root "
            "without group=.",
        )
    ds = store.open_dataset(session=session, group=group, **kwargs)
    dim = cfg.concat_dim
    if dim in ds.dims and dim not in ds.variables:
        root = store.open_dataset(session=session, **kwargs)
        if dim in root.variables:
            ds = ds.assign_coords({dim: root[dim].variable})
    return ds


def open_datatree(
    config: str | os.PathLike[str] | Config | None = None, at: str | None = None, **kwargs: Any
) -> Any:
    """The store as a lazy ``xr.DataTree``: one node per group, each CF-decoded as
    :func:`open_dataset` decodes it; the groups inherit the root's concat coordinate.

    Parameters
    ----------
    config
        As for :func:`open_dataset`.
    at
        A snapshot id, tag or ISO date/datetime: the tree as it was then.
    kwargs
        xarray's decoding keywords.

    Raises
    ------
    NotFoundError
        No repository yet, or ``at`` matches nothing.
    """
    import xarray as xr

    from refstore.hierarchy import stored_groups

    cfg = _config(config)
    store = open_store(cfg)
    if at is not None:
        from refstore.maintenance import check_not_expired

        check_not_expired(cfg, store, at)
    session = store.session(at)
    nodes = {"/": store.open_dataset(session=session, **kwargs)}
    for group in stored_groups(session.store):
        nodes[f"/{group}"] = store.open_dataset(session=session, group=group, **kwargs)
    return xr.DataTree.from_dict(nodes)
