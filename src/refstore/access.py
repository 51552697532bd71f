"""A source bound to the hosts its login may reach for one store.

The policy (:class:`refstore.hosts.HostPolicy`) is read from the repository's recorded
virtual chunk containers and ``[source] allowed_hosts``; a source that follows links from
metadata (Earthdata: ``with_hosts``) gets its readers, containers and export options
for those hosts only. Other sources name their one container in their own settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from refstore.config import Config
from refstore.hosts import HostPolicy, host_of
from refstore.sources import Source, source_for
from refstore.sources.base import HostScoped
from refstore.storage import store_options
from refstore.store import Store

if TYPE_CHECKING:
    from refstore.mirror import Mirror

__all__ = ["bind", "describe_hosts", "open_bound", "scopes_hosts"]


def scopes_hosts(source: Any) -> bool:
    """Whether ``source`` reads only the hosts it is bound to (it follows metadata links)."""
    return isinstance(source, HostScoped)


def bind(
    config: Config, source: Source, policy: HostPolicy, *, known: Mirror | None = None
) -> Store:
    """The store of ``config``, reading through ``source`` bound to ``policy``
    (answering from the current mirror ``known``, see :class:`Store`)."""
    if isinstance(source, HostScoped):
        source = source.with_hosts(policy.hosts)
    return Store(
        config.repo, source.containers(), source, options=store_options(config), known=known
    )


def open_bound(
    config: Config, source: Source | None = None, *, known: Mirror | None = None
) -> tuple[Store, HostPolicy]:
    """The store with its source bound to the hosts recorded and configured (read from
    the current mirror ``known`` when given, without Icechunk).

    Raises
    ------
    ConfigError
        Bad source settings.
    """
    source = source or source_for(config)
    probe = Store(config.repo, options=store_options(config), known=known)
    policy = HostPolicy.of(probe.recorded_prefixes(), config.allowed_hosts)
    return bind(config, source, policy, known=known), policy


def describe_hosts(store: Store, policy: HostPolicy) -> list[dict[str, Any]]:
    """Where the source's credentials may go, and why (for ``refstore status``)."""
    if scopes_hosts(store.source):
        return list(policy.describe())
    return [{"host": host_of(c.url_prefix), "from": "[source]"} for c in store.containers]
