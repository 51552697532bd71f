"""Granules over HTTP(S): a list of URLs in a file (``[source] urls_file``).

HTTP has no listing, so the collection is the list: one absolute ``https://`` URL per
line (blank lines and ``#`` comments ignored); append a line when a granule arrives. A
HEAD request per URL gives the ETag (or size + Last-Modified) as the revision. A URL that
does not answer (after the client's retries) is listed without a revision: a new one is
quarantined with the reason when it is read and retried by itself once it answers (its
revision then changes); a known one is left as it is (see :func:`refstore.plan.plan_sync`).

A bearer token (``Authorization: Bearer …``) is sent when ``[source] token_env`` names a
variable holding it, or an Earthdata login is configured (``[source] login``). The
token stays in memory: in the obstore clients and in the Icechunk container config of
an *opened* repository, never in a saved one.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from refstore.credentials import DEFAULT_EDL_URL, DEFAULT_TOKEN_ENV, EarthdataLogin
from refstore.errors import ConfigError, SourceError
from refstore.hosts import host_of
from refstore.http_auth import scoped_http_options
from refstore.models import Granule
from refstore.sources.base import ContainerSpec
from refstore.storage import http_store, origin

if TYPE_CHECKING:
    from refstore.config import Config

__all__ = ["UNAVAILABLE", "HttpsSource", "http_registry", "read_url_list"]

UNAVAILABLE = ""  # no revision: the source cannot tell it now
_HEAD_THREADS = 8  # HEADs in flight: a list of thousands is checked in seconds


def read_url_list(path: str | Path) -> list[str]:
    """The URLs of a list file, in order, without duplicates.

    Raises
    ------
    SourceError
        The file cannot be read.
    ConfigError
        A line is not an absolute http(s) URL.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SourceError(
            f"Cannot read the URL list {path}: {e.strerror or e}.",
            "Check [source] urls_file (relative paths start at refstore.toml's folder).",
        ) from e
    urls: dict[str, None] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = urlsplit(line)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"{path}:{n}: {line!r} is not an http(s) URL.",
                "Put one absolute https:// granule URL on each line.",
            )
        urls[line] = None
    return list(urls)


def http_registry(urls: list[str], headers: dict[str, str] | None) -> Any:
    """An ``ObjectStoreRegistry`` with one obstore ``HTTPStore`` per origin of ``urls``."""
    from obspec_utils.registry import ObjectStoreRegistry

    origins = sorted({origin(u) for u in urls})
    return ObjectStoreRegistry({o: http_store(o, headers) for o in origins})


def url_key(url: str) -> str:
    """A granule's key: the URL's path (stable whatever else the list holds)."""
    return unquote(urlsplit(url).path).lstrip("/")


def bearer_headers(login: EarthdataLogin | None) -> dict[str, str]:
    """``{"Authorization": "Bearer …"}`` from ``login``, or no header."""
    return {"Authorization": f"Bearer {login.token()}"} if login is not None else {}


def head_granules(urls: list[str], registry: Any) -> Iterator[Granule]:
    """HEAD every URL (in parallel): ETag or size + Last-Modified as the revision.

    Raises
    ------
    SourceError
        Not one URL answered (the server is down: retry later, quarantine nothing).
    """
    import obstore

    def head(url: str) -> Granule | BaseException:
        store, path = registry.resolve(url)
        try:
            meta = obstore.head(store, path)
        except Exception as e:  # reported below or as the granule's revision
            return e
        etag = (meta.get("e_tag") or "").strip('"')
        modified = meta["last_modified"].isoformat()
        return Granule(
            key=url_key(url),
            url=url,
            revision=etag or f"{meta['size']}-{modified}",
            size=int(meta["size"]),
            modified=modified,
        )

    with ThreadPoolExecutor(max_workers=_HEAD_THREADS) as pool:
        results = list(pool.map(head, urls))
    errors = [r for r in results if isinstance(r, BaseException)]
    if (
        urls
        and len(errors) == len(urls)
        and not all(isinstance(e, FileNotFoundError) for e in errors)
    ):
        first = str(errors[0]).strip().splitlines()
        raise SourceError(
            f"No granule URL answered (e.g. {urls[0]}): {first[0][:300] if first else ''}",
            "Check that the server is reachable and the token is valid, then run again.",
        )
    for url, r in zip(urls, results, strict=True):
        # Unreachable now: listed without a revision (quarantined with the reason when
        # read if it is new; left alone if it is known), retried once it answers.
        yield r if isinstance(r, Granule) else Granule(url_key(url), url, UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class HttpsSource:
    """Granules at the URLs listed in a file.

    Parameters
    ----------
    url
        The URL list file (absolute path), one granule URL per line.
    login
        Where the bearer token comes from (None: no Authorization header).
    """

    url: str
    login: EarthdataLogin | None = None
    incremental: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Config) -> HttpsSource:
        """Build from ``[source] urls_file`` and ``token_env`` / ``login``.

        Raises
        ------
        ConfigError
            No ``urls_file``: an HTTP server cannot be listed.
        """
        if not config.urls_file:
            raise ConfigError(
                f"[source] url {config.source_url!r}: an HTTP(S) server cannot be listed.",
                "Put the granule URLs in a file, one a line, and set [source] urls_file.",
            )
        login = None
        if config.token_env or config.login:
            login = EarthdataLogin(
                edl_url=config.edl_url or DEFAULT_EDL_URL,
                strategy=config.login or "token",
                token_env=config.token_env or DEFAULT_TOKEN_ENV,
            )
        return cls(url=config.urls_file, login=login)

    def urls(self) -> list[str]:
        """The listed URLs."""
        return read_url_list(self.url)

    def discover(self, since: str | None = None) -> Iterator[Granule]:
        """HEAD every listed URL; the ETag (or size + Last-Modified) is the revision."""
        urls = self.urls()
        yield from head_granules(urls, http_registry(urls, self.http_headers()))

    def http_headers(self) -> dict[str, str]:
        """The bearer token header, if a token is configured (memory only)."""
        return bearer_headers(self.login)

    def fsspec_options(self) -> dict[str, dict[str, Any]]:
        """fsspec options to read the granules from an export: the bearer token for the
        list's server only."""
        if self.login is None:
            return {"http": {}, "https": {}}  # no secret: plain readers for both schemes
        hosts = [host_of(c.url_prefix) for c in self.containers()]
        return scoped_http_options(hosts, self.login)

    def check_access(self) -> None:
        """Raise a ConfigError with a hint when a configured token is missing."""
        self.http_headers()

    def registry(self) -> Any:
        """A registry reading the listed URLs' origins with obstore."""
        return http_registry(self.urls(), self.http_headers())

    def containers(self) -> tuple[ContainerSpec, ...]:
        """An HTTP container over the URLs' origin.

        Raises
        ------
        ConfigError
            The list is empty or spans several servers.
        """
        origins = sorted({origin(u) for u in self.urls()})
        if len(origins) != 1:
            raise ConfigError(
                f"{self.url}: the URLs must all be on one server, found "
                f"{', '.join(origins) or 'none'}.",
                "Use one list (and one refstore.toml) per server, with at least one URL.",
            )
        return (ContainerSpec(origins[0] + "/", "http"),)
