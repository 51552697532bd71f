"""The ``Source`` protocol and the registry of source kinds.

A source lists a collection's granules (:meth:`Source.discover`), tells the parsers how
to read them (:meth:`Source.registry`) and tells Icechunk where the virtual chunks
live (:meth:`Source.containers`). A source whose links come from metadata it does not
control (Earthdata) is :class:`HostScoped`: it is bound to the hosts its login may reach
(:mod:`refstore.access`), and its readers, containers and export options cover those
hosts only. Kinds are found by URL scheme and imported lazily, as
xarray does for its backends, so a missing optional dependency is one clear error.

Kinds: ``file`` (a local folder or glob), ``s3`` (a prefix or glob), ``https`` (a list
of URLs in ``[source] urls_file``) and ``earthdata`` (a CMR collection: ``[source]
short_name`` or ``concept_id``). Every kind passes ``tests/test_sources_contract.py``.

Optional hooks a source may add, used by :mod:`refstore.storage` at open time and never
persisted: ``icechunk_credentials()`` (the container credential), ``http_headers()``
(e.g. a bearer token for an HTTP container) and ``check_access()`` (raise a
:class:`~refstore.errors.ConfigError` with a one-line hint when access is missing).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from refstore.errors import ConfigError

if TYPE_CHECKING:
    from refstore.config import Config
    from refstore.models import Granule

__all__ = ["KINDS", "ContainerSpec", "HostScoped", "Source", "kind_of", "source_for"]


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Where a source's virtual chunks live, for Icechunk.

    ``url_prefix`` ends in ``/``; ``kind`` is ``"local"``, ``"s3"`` or ``"http"``;
    ``options`` are non-secret store options (``region``, ``endpoint_url``,
    ``allow_http``, ``anonymous``; see :class:`refstore.storage.S3Options`). Credentials
    are never part of this object: they are passed at open time and never persisted.
    """

    url_prefix: str
    kind: str
    options: tuple[tuple[str, str], ...] = ()


@runtime_checkable
class Source(Protocol):
    """A collection of granules. Options go to ``__init__``; work happens in methods.

    Implementations must be picklable: worker processes rebuild their readers from it.
    Their state holds no secret (credentials are looked up in memory at run time).

    ``incremental`` sources list only what changed since a high-water mark (a CMR
    revision date): sync passes the mark back as ``since``, does not report granules
    it did not hear about as missing, and retries granules it recorded but never
    committed from the ledger.
    """

    url: str
    incremental: ClassVar[bool]

    def discover(self, since: str | None = None) -> Iterator[Granule]:
        """List the granules now in the collection (changed since ``since``, if given).

        ``Granule.modified`` of an incremental source is the value to remember as the
        next ``since`` (the highest one seen).

        Raises
        ------
        SourceError
            The collection could not be listed (retry later).
        """
        ...

    def registry(self) -> Any:
        """An ``obspec_utils.registry.ObjectStoreRegistry`` able to read the granules."""
        ...

    def containers(self) -> tuple[ContainerSpec, ...]:
        """The Icechunk virtual chunk containers the granules' references need (one per
        host the source may read; credentials go to these and nowhere else)."""
        ...


@runtime_checkable
class HostScoped(Protocol):
    """A source whose granule links come from metadata it does not control (CMR): its
    login goes only to the hosts it is bound to (see :mod:`refstore.hosts`)."""

    hosts: tuple[str, ...]

    def with_hosts(self, hosts: tuple[str, ...]) -> Source:
        """This source, reading (and sending its login to) ``hosts`` only."""
        ...


# scheme -> (module, class, install hint)
KINDS: dict[str, tuple[str, str, str]] = {
    "file": ("refstore.sources.local", "LocalSource", ""),
    "s3": ("refstore.sources.s3", "S3Source", ""),
    "http": ("refstore.sources.https", "HttpsSource", ""),
    "https": ("refstore.sources.https", "HttpsSource", ""),
    "earthdata": (
        "refstore.sources.earthdata",
        "EarthdataSource",
        "Install earthaccess (pip install earthaccess).",
    ),
}


def kind_of(config: Config) -> str:
    """The source kind a configuration names (a key of :data:`KINDS`)."""
    if config.short_name or config.concept_id:
        return "earthdata"
    if config.urls_file:
        return "https"
    url = config.source_url
    return url.split("://", 1)[0] if "://" in url else "file"


def source_for(config: Config) -> Source:
    """Build the source named by ``config.source_url``.

    Raises
    ------
    ConfigError
        The URL's scheme is not a known source kind.
    """
    url = config.source_url
    scheme = kind_of(config)
    if scheme not in KINDS:
        raise ConfigError(
            f"[source] url {url!r}: no source kind for scheme {scheme!r}.",
            f"Use one of: {', '.join(sorted(KINDS))} (a local folder or glob needs no scheme).",
        )
    module_name, class_name, install = KINDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"The {scheme!r} source needs a package that is not installed: {e}.",
            install or "Reinstall refstore with its dependencies.",
        ) from e
    cls = getattr(module, class_name)
    source: Source = cls.from_config(config)
    return source
