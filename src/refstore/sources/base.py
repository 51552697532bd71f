"""The ``Source`` protocol and the registry of source kinds.

A source lists a collection's granules (:meth:`Source.discover`), tells the parsers how
to read them (:meth:`Source.registry`) and tells Icechunk where the virtual chunks
live (:meth:`Source.container`). Kinds are found by URL scheme and imported lazily, as
xarray does for its backends, so a missing optional dependency is one clear error.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from refstore.errors import ConfigError

if TYPE_CHECKING:
    from refstore.config import Config
    from refstore.models import Granule

__all__ = ["KINDS", "ContainerSpec", "Source", "source_for"]


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Where a source's virtual chunks live, for Icechunk.

    ``url_prefix`` ends in ``/``; ``kind`` is ``"local"``, ``"s3"`` or ``"http"``;
    ``options`` are non-secret store options (region, endpoint). Credentials are never
    part of this object: they are passed at open time and never persisted.
    """

    url_prefix: str
    kind: str
    options: tuple[tuple[str, str], ...] = ()


@runtime_checkable
class Source(Protocol):
    """A collection of granules. Options go to ``__init__``; work happens in methods.

    Implementations must be picklable: worker processes rebuild their readers from it.
    """

    url: str

    def discover(self) -> Iterator[Granule]:
        """List the granules now in the collection.

        Raises
        ------
        SourceError
            The collection could not be listed (retry later).
        """
        ...

    def registry(self) -> Any:
        """An ``obspec_utils.registry.ObjectStoreRegistry`` able to read the granules."""
        ...

    def container(self) -> ContainerSpec:
        """The Icechunk virtual chunk container the granules' references need."""
        ...


# scheme -> (module, class, install hint)
KINDS: dict[str, tuple[str, str, str]] = {
    "file": ("refstore.sources.local", "LocalSource", ""),
}


def source_for(config: Config) -> Source:
    """Build the source named by ``config.source_url``.

    Raises
    ------
    ConfigError
        The URL's scheme is not a known source kind.
    """
    url = config.source_url
    scheme = url.split("://", 1)[0] if "://" in url else "file"
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
