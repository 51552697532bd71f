"""A bearer token for some hosts only, in fsspec's HTTP filesystem (aiohttp).

fsspec's ``headers`` option goes with every request the filesystem makes, whatever the
host: an export whose references name two servers would send the token to both. An
aiohttp client middleware sees each request (redirects included) and adds the header
only when the request's host (:func:`refstore.hosts.host_of`) is allowed; it holds the
login's *names*, so the fsspec options, their ``repr`` and fsspec's instance cache key
carry no secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from refstore.hosts import host_of

if TYPE_CHECKING:
    from refstore.credentials import EarthdataLogin

__all__ = ["HostScopedBearer", "scoped_http_options"]


@dataclass(frozen=True, slots=True)
class HostScopedBearer:
    """aiohttp client middleware: ``Authorization: Bearer`` for ``hosts`` only.

    Parameters
    ----------
    hosts
        Allowed hosts, as :func:`refstore.hosts.host_of` spells them.
    login
        Where the token comes from (looked up in memory at request time).
    """

    hosts: tuple[str, ...]
    login: EarthdataLogin

    async def __call__(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        if host_of(str(request.url)) in self.hosts:
            request.headers["Authorization"] = f"Bearer {self.login.token()}"
        else:
            request.headers.popall("Authorization", None)
        return await handler(request)


def scoped_http_options(hosts: list[str], login: EarthdataLogin) -> dict[str, dict[str, Any]]:
    """fsspec ``http``/``https`` options sending the login's token to ``hosts`` only."""
    middleware = HostScopedBearer(tuple(hosts), login)
    return {p: {"client_kwargs": {"middlewares": (middleware,)}} for p in ("http", "https")}
