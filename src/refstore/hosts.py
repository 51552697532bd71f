"""Which hosts a credential may reach: pure rules, no I/O.

A host is ``scheme://host[:port]`` for HTTP(S) (the port is part of it; a default port is
left out) and ``s3://bucket`` for S3. An Earthdata login's token (or its temporary S3
keys) goes to the hosts of a :class:`HostPolicy` and nowhere else. The policy is decided
once: the hosts of the virtual chunk containers recorded in the repository, plus
``[source] allowed_hosts``; for a new repository without ``allowed_hosts``, the one host
every granule of the first sync is on. A granule link listed by CMR later never adds a
host: a granule on another host is quarantined with a reason naming the host and how to
allow it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from refstore.errors import ConfigError
from refstore.models import Failure, Granule

__all__ = ["HostPolicy", "host_of", "parse_hosts"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOW_HINT = "add it to [source] allowed_hosts in refstore.toml, then run `refstore retry`"


def host_of(url: str) -> str:
    """The host identity of a URL: ``https://host[:port]``, ``s3://bucket`` or ``file://``.

    Raises
    ------
    ConfigError
        The URL has no host (``https:///x``) or an invalid port.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        return "file://"
    try:
        name, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(f"{url!r} has an invalid port.", "Fix the URL's port.") from None
    if not name:
        raise ConfigError(f"{url!r} names no host.", "Use a URL like https://host/path.")
    if ":" in name:  # IPv6 literal
        name = f"[{name}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{name}:{port}"
    return f"{scheme}://{name}"


def parse_hosts(entries: Iterable[str], where: str = "[source] allowed_hosts") -> tuple[str, ...]:
    """Normalize allow-list entries: a bare name means HTTPS (``data.example.org``).

    Raises
    ------
    ConfigError
        An entry is a URL with a path, a query or a scheme refstore does not read.
    """
    hosts: list[str] = []
    for raw in entries:
        entry = raw.strip().rstrip("/")
        text = entry if "://" in entry else f"https://{entry}"
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https", "s3") or parts.path or parts.query:
            raise ConfigError(
                f"{where}: {raw!r} is not a host.",
                'List hosts like "archive.podaac.earthdata.nasa.gov", '
                '"https://host:port" or "s3://bucket" (no path).',
            )
        hosts.append(host_of(text))
    return tuple(dict.fromkeys(hosts))


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The hosts a source's credential may reach, and where each came from.

    Parameters
    ----------
    recorded
        Hosts of the virtual chunk containers saved in the repository.
    configured
        ``[source] allowed_hosts``.
    first
        Chosen at the first sync of a new repository (see :meth:`settle`).
    """

    recorded: tuple[str, ...] = ()
    configured: tuple[str, ...] = ()
    first: tuple[str, ...] = ()

    @classmethod
    def of(cls, prefixes: Iterable[str], configured: Iterable[str] = ()) -> HostPolicy:
        """From the repository's recorded container prefixes and ``allowed_hosts``."""
        recorded = {_safe_host(p) for p in prefixes} - {"", "file://"}
        return cls(tuple(sorted(recorded)), parse_hosts(configured))

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every allowed host, sorted."""
        return tuple(sorted({*self.recorded, *self.configured, *self.first}))

    @property
    def decided(self) -> bool:
        """Whether any host is allowed yet."""
        return bool(self.hosts)

    def allows(self, url: str) -> bool:
        """Whether ``url`` is on an allowed host."""
        try:
            return host_of(url) in self.hosts
        except ConfigError:
            return False

    def unrecorded(self) -> tuple[str, ...]:
        """Allowed hosts not yet recorded in the repository (to record before use)."""
        return tuple(h for h in self.hosts if h not in self.recorded)

    def describe(self) -> list[dict[str, str]]:
        """``[{"host": ..., "from": "recorded" | "allowed_hosts" | "first sync"}]``."""
        out = []
        for h in self.hosts:
            origin = (
                "recorded"
                if h in self.recorded
                else "allowed_hosts"
                if h in self.configured
                else "first sync"
            )
            out.append({"host": h, "from": origin})
        return out

    def settle(self, urls: Iterable[str]) -> HostPolicy:
        """For a new repository with no host yet: the one host all ``urls`` are on.

        A policy that already allows a host is returned as it is: later links never
        add one.

        Raises
        ------
        ConfigError
            The links span several hosts: which one to trust is the user's choice.
        """
        if self.decided:
            return self
        found = sorted({_safe_host(u) for u in urls} - {""})
        if len(found) > 1:
            raise ConfigError(
                f"The granules' data links are on {len(found)} hosts ({', '.join(found)}); "
                "refstore will not choose which one receives the login.",
                'List the trusted ones in [source] allowed_hosts, e.g. allowed_hosts = ["'
                + found[0]
                + '"].',
            )
        return HostPolicy(self.recorded, self.configured, tuple(found))

    def refusal(self, url: str) -> str:
        """Why a granule at ``url`` is not read (one line naming the host and the fix)."""
        host = _safe_host(url) or url
        allowed = ", ".join(self.hosts) or "none yet"
        return (
            f"its data link is on {host}, not a host the login may reach ({allowed}); "
            f"to read it, {_ALLOW_HINT}"
        )

    def split(self, granules: Sequence[Granule]) -> tuple[list[Granule], list[Failure]]:
        """The granules on allowed hosts, and a failure for each of the others."""
        allowed: list[Granule] = []
        refused: list[Failure] = []
        for g in granules:
            if self.allows(g.url):
                allowed.append(g)
            else:
                refused.append(Failure(g.key, f"{g.key}: {self.refusal(g.url)}"))
        return allowed, refused


def _safe_host(url: str) -> str:
    try:
        return host_of(url)
    except ConfigError:
        return ""
