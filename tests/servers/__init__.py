"""Reusable loopback test servers for refstore (everything binds to 127.0.0.1, free ports).

- :class:`~tests.servers.s3.MotoS3Server` -- moto S3 (+ obstore / icechunk client factories)
- :class:`~tests.servers.http_range.RangeHTTPServer` -- files over HTTP/1.1 with Range, ETag,
  bearer auth, per-path counters and fault injection
- :class:`~tests.servers.cmr.CmrReplayServer` + :class:`~tests.servers.cmr.GranuleCatalog` --
  CMR search replay of recorded UMM items with real search-after paging and editable revisions
- :class:`~tests.servers.earthdata_auth.EarthdataAuthServer` -- *simulated* EDL token API and
  ``/s3credentials`` with short-lived credentials
- :func:`no_external_network` -- fail fast on any Python-level connection/DNS lookup off loopback

Each server is a context manager (``with Server(...) as srv:``) and also has ``start()``/``stop()``.
Import as ``from tests.servers import ...``: ``tests/`` is a package (``tests/__init__.py``), so
pytest's default ``prepend`` import mode puts the repository root on ``sys.path``.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .cmr import CmrReplayServer, GranuleCatalog, granule_item, rewrite_links
from .earthdata_auth import EarthdataAuthServer
from .http_range import RangeHTTPServer
from .s3 import MotoS3Server

__all__ = [
    "CmrReplayServer",
    "EarthdataAuthServer",
    "ExternalNetworkError",
    "GranuleCatalog",
    "MotoS3Server",
    "RangeHTTPServer",
    "granule_item",
    "no_external_network",
    "rewrite_links",
]


class ExternalNetworkError(ConnectionRefusedError):
    """Raised by :func:`no_external_network` for a connection or lookup off loopback."""


def _is_loopback_host(host: Any) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): wildcard/passive lookups are local
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).split("%", 1)[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_guard_lock = threading.Lock()


@contextmanager
def no_external_network() -> Iterator[list[str]]:
    """Block every Python-level TCP/UDP connect and DNS lookup that is not loopback.

    Yields the list of blocked destinations (empty if nothing tried to leave 127.0.0.1). Covers
    requests/urllib3, urllib, aiohttp, boto3 and anything else using the ``socket`` module; it
    cannot see Rust clients (obstore, icechunk), which must be given loopback endpoints explicitly.
    """
    blocked: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def _check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback_host(address[0]):
            blocked.append(f"connect {address!r}")
            raise ExternalNetworkError(f"blocked non-loopback connection to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        _check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback_host(host):
            blocked.append(f"getaddrinfo {host!r}")
            raise ExternalNetworkError(f"blocked DNS lookup of non-loopback host {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    with _guard_lock:
        socket.socket.connect = connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
        socket.getaddrinfo = getaddrinfo
    try:
        yield blocked
    finally:
        with _guard_lock:
            socket.socket.connect = real_connect  # type: ignore[method-assign]
            socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
            socket.getaddrinfo = real_getaddrinfo
