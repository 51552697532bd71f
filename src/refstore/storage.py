"""Where things live: Icechunk storage for the repository and object-store configs and
credentials for virtual chunk containers, built from URLs.

Only this module knows how a URL scheme maps to an Icechunk storage or container
store. Credentials are passed in at open time and are never written to the repository
config, the ledger, the export or logs.
"""

from __future__ import annotations

from typing import Any

from refstore.errors import ConfigError
from refstore.sources.base import ContainerSpec

__all__ = ["container_credentials", "container_store_config", "is_local", "repo_storage"]


def is_local(url: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return "://" not in url or url.startswith("file://")


def repo_storage(url: str) -> Any:
    """The ``icechunk.Storage`` for a repository URL.

    Raises
    ------
    ConfigError
        The scheme is not supported.
    """
    import icechunk

    if is_local(url):
        return icechunk.local_filesystem_storage(url.removeprefix("file://"))
    raise ConfigError(
        f"[store] repo {url!r}: unsupported location.",
        "Use a local folder for the repository.",
    )


def container_store_config(spec: ContainerSpec) -> Any:
    """The ``ObjectStoreConfig`` an Icechunk virtual chunk container reads through."""
    import icechunk

    if spec.kind == "local":
        return icechunk.local_filesystem_store(spec.url_prefix.removeprefix("file://"))
    raise ConfigError(f"Unsupported virtual chunk container {spec.url_prefix!r} ({spec.kind}).")


def container_credentials(spec: ContainerSpec, source: Any | None = None) -> Any:
    """The credential granting read access to a container (``None`` for anonymous).

    ``source`` may provide ``icechunk_credentials()`` (e.g. refreshable Earthdata S3
    credentials); they are handed to Icechunk in memory only.
    """
    from icechunk.credentials import LocalFileSystemAccess

    if spec.kind == "local":
        return LocalFileSystemAccess
    provider = getattr(source, "icechunk_credentials", None)
    return provider() if provider is not None else None
