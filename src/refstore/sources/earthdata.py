"""NASA Earthdata collections, found through CMR with earthaccess.

``[source] short_name`` (or ``concept_id``), optional ``version``, ``provider`` and
``temporal`` select the collection; ``access`` picks the data links: ``"direct"`` (S3 in
AWS us-west-2, with temporary keys from the DAAC's ``/s3credentials``, refreshed before
they expire) or ``"external"`` (HTTPS anywhere, with an Earthdata Login bearer token).

The granule key is the CMR native id (GranuleUR) and the revision the CMR revision-id.
Discovery is incremental: after the first sync, CMR is asked only for granules revised
since the last run (``revision_date``, minus an overlap for CMR's indexing delay), page
by page with ``CMR-Search-After``, so its cost follows the new granules, not the
archive. ``cmr_url`` / ``edl_url`` / ``s3_credentials_url`` point at NASA's UAT system
(or loopback servers in tests) instead of production.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode, urlsplit

from refstore.credentials import (
    DEFAULT_EDL_URL,
    DEFAULT_TOKEN_ENV,
    TIMEOUT,
    EarthdataLogin,
    EarthdataS3Credentials,
    retrying_session,
)
from refstore.errors import ConfigError, SourceError
from refstore.hosts import HostPolicy
from refstore.http_auth import scoped_http_options
from refstore.models import Granule
from refstore.sources.base import ContainerSpec
from refstore.sources.https import bearer_headers, http_registry
from refstore.sources.local import is_data_name
from refstore.sources.s3 import s3_registry
from refstore.storage import S3Options

if TYPE_CHECKING:
    from refstore.config import Config

__all__ = ["DEFAULT_CMR_URL", "OVERLAP", "EarthdataSource"]

log = logging.getLogger("refstore")

DEFAULT_CMR_URL = "https://cmr.earthdata.nasa.gov/search/"
# Asked again on every run: granules revised this long before the last one seen. CMR
# stamps revision-date at ingest but indexes a little later, so a granule can become
# searchable after a newer one was seen; re-listing an unchanged granule costs nothing.
OVERLAP = timedelta(hours=1)
MAX_PAGE_SIZE = 2000


def _granule(item: dict[str, Any]) -> Any:
    import earthaccess

    with warnings.catch_warnings():
        # earthaccess 0.18's DataGranule.__init__ calls its own deprecated size().
        warnings.filterwarnings("ignore", "As of version 1.0", FutureWarning)
        return earthaccess.DataGranule(item, cloud_hosted=True)


def _pick(links: list[str]) -> str | None:
    """The granule's data file among its links (NetCDF/HDF5 first)."""
    for link in links:
        if is_data_name(urlsplit(link).path):
            return link
    return links[0] if links else None


def _sidecar(item: dict[str, Any], link: str) -> str | None:
    """The DMR++ sidecar the granule's ``RelatedUrls`` name for the data ``link``, if any.

    UMM-G marks it ``Type: EXTENDED METADATA``, ``Subtype: DMR++`` (DAACs also list
    ``.md5``, ``.cmr.json``, ... as extended metadata, and ``DMR++ MISSING DATA`` is
    another file); a link whose path ends in ``.dmrpp`` counts too. One reached the same
    way as the data (S3 for direct access, HTTPS for external) is preferred.
    """
    found = []
    for r in item.get("umm", {}).get("RelatedUrls") or ():
        url = r.get("URL") if isinstance(r, dict) else None
        if not isinstance(url, str):
            continue
        subtype = str(r.get("Subtype") or "").upper()
        if subtype == "DMR++" or (
            urlsplit(url).path.endswith(".dmrpp") and subtype != "DMR++ MISSING DATA"
        ):
            found.append(url)
    scheme = urlsplit(link).scheme
    same = [u for u in found if urlsplit(u).scheme == scheme]
    return next(iter(same or found), None)


def _size(item: dict[str, Any]) -> int | None:
    infos = item.get("umm", {}).get("DataGranule", {}).get("ArchiveAndDistributionInformation")
    sizes = [i.get("SizeInBytes") for i in infos or () if isinstance(i, dict)]
    return int(sizes[0]) if sizes and sizes[0] is not None else None


def _cmr_date(value: str) -> str:
    """``2024-01-02T03:04:05.678Z`` minus :data:`OVERLAP`, in CMR's format."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00")) - OVERLAP
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class EarthdataSource:
    """A CMR collection's granules.

    Parameters
    ----------
    url
        The CMR granule search this source stands for (its identity; no secret).
    cmr_url
        CMR's search root, ending in ``/search/``.
    short_name, concept_id, version, provider, temporal
        The collection and filters.
    access
        ``"direct"`` (S3, in us-west-2) or ``"external"`` (HTTPS).
    login
        Where the Earthdata Login comes from.
    hosts
        The hosts the login may reach (``https://host[:port]`` or ``s3://bucket``):
        readers, containers and export options are built for these only.
    s3_credentials_url
        The DAAC's ``/s3credentials`` (default: from the granules' metadata).
    s3_options
        How to reach the data buckets (region; an endpoint for tests).
    page_size
        Granules per CMR page (CMR allows at most 2000).
    """

    url: str
    cmr_url: str = DEFAULT_CMR_URL
    short_name: str | None = None
    concept_id: str | None = None
    version: str | None = None
    provider: str | None = None
    temporal: tuple[str, ...] | None = None
    access: str = "external"
    login: EarthdataLogin = field(default_factory=EarthdataLogin)
    s3_credentials_url: str | None = None
    s3_options: S3Options = field(default_factory=lambda: S3Options(region="us-west-2"))
    page_size: int = MAX_PAGE_SIZE
    # Where the login may be sent (decided by the caller from the repository and
    # [source] allowed_hosts; see refstore.hosts), never from a CMR response.
    hosts: tuple[str, ...] = ()
    # The /s3credentials endpoint named by a granule on an allowed host; not secret.
    _sample: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    incremental: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: Config) -> EarthdataSource:
        """Build from the ``[source]`` Earthdata keys."""
        cmr_url = (config.cmr_url or DEFAULT_CMR_URL).rstrip("/")
        if not cmr_url.endswith("/search"):  # "https://cmr.uat.earthdata.nasa.gov" works too
            cmr_url += "/search"
        cmr_url += "/"
        filters = {
            k: v
            for k, v in (
                ("short_name", config.short_name),
                ("concept_id", config.concept_id),
                ("version", config.version),
                ("provider", config.provider),
                ("temporal", ",".join(config.temporal) if config.temporal else None),
            )
            if v
        }
        return cls(
            url=f"{cmr_url}granules.umm_json?{urlencode(filters)}",
            cmr_url=cmr_url,
            short_name=config.short_name,
            concept_id=config.concept_id,
            version=config.version,
            provider=config.provider,
            temporal=config.temporal,
            access=config.access,
            login=EarthdataLogin(
                edl_url=config.edl_url or DEFAULT_EDL_URL,
                strategy=config.login or "all",
                token_env=config.token_env or DEFAULT_TOKEN_ENV,
            ),
            s3_credentials_url=config.s3_credentials_url,
            s3_options=S3Options(
                region=config.source_region or "us-west-2",
                endpoint_url=config.source_endpoint_url,
                allow_http=config.source_allow_http,
            ),
        )

    # -- CMR ------------------------------------------------------------------------
    def _query(self, since: str | None) -> Any:
        import earthaccess

        query = earthaccess.DataGranules().mode(self.cmr_url)
        if self.short_name:
            query = query.short_name(self.short_name)
        if self.concept_id:
            query = query.concept_id(self.concept_id)
        if self.version:
            query = query.version(self.version)
        if self.provider:
            query = query.provider(self.provider)
        if self.temporal:
            start, end = (*self.temporal, "")[:2]
            query = query.temporal(start or None, end or None)
        if since:
            query = query.revision_date(_cmr_date(since), None)
        return query

    def _pages(self, query: Any, page_size: int) -> Iterator[list[dict[str, Any]]]:
        """CMR result pages, following ``CMR-Search-After`` (not page numbers: stable
        while granules are added, and not capped at 1 million results)."""
        import requests

        url = query._build_url()  # earthaccess builds the filters; we page ourselves
        headers = dict(query.headers or {})
        with retrying_session() as session:
            while True:
                try:
                    response = session.get(
                        url, headers=headers, params={"page_size": page_size}, timeout=TIMEOUT
                    )
                except requests.RequestException as e:
                    raise SourceError(
                        f"Cannot reach CMR at {self.cmr_url}: {type(e).__name__}.",
                        "Check the network and [source] cmr_url, then run again.",
                    ) from None
                if response.status_code != 200:
                    raise SourceError(
                        f"CMR search {self.url} failed (HTTP {response.status_code}): "
                        f"{response.text[:300]}",
                        "Check [source] short_name/concept_id/version/provider/temporal.",
                    )
                try:
                    items = list(response.json().get("items") or [])
                except (ValueError, AttributeError):
                    raise SourceError(
                        f"CMR at {self.cmr_url} did not answer with UMM-JSON.",
                        "Check [source] cmr_url (it ends in /search/).",
                    ) from None
                if items:
                    yield items
                token = response.headers.get("CMR-Search-After")
                if not items or not token or len(items) < page_size:
                    return
                headers["CMR-Search-After"] = token

    def discover(self, since: str | None = None) -> Iterator[Granule]:
        """The collection's granules, or only those revised since ``since``.

        ``Granule.modified`` is the CMR revision-date (the next high-water mark).

        Raises
        ------
        SourceError
            CMR could not be searched (after retries).
        """
        for page in self._pages(self._query(since), self.page_size):
            for item in page:
                granule = self._to_granule(item)
                if granule is not None:
                    yield granule

    def _to_granule(self, item: dict[str, Any]) -> Granule | None:
        meta = item.get("meta", {})
        key = meta.get("native-id") or item.get("umm", {}).get("GranuleUR")
        data = _granule(item)
        link = _pick(list(data.data_links(access=self.access)))
        if not key or link is None:
            log.warning("CMR granule %s has no %s data link; skipped", key or meta, self.access)
            return None
        if not self._sample and self._allows(link):
            # Only a granule on an allowed host may name the /s3credentials endpoint.
            self._sample["s3credentials"] = data.get_s3_credentials_endpoint()
        return Granule(
            key=str(key),
            url=link,
            revision=str(meta.get("revision-id", "")),
            size=_size(item),
            modified=meta.get("revision-date"),
            sidecar=_sidecar(item, link),
        )

    # -- where the login may go -------------------------------------------------------
    def with_hosts(self, hosts: tuple[str, ...]) -> EarthdataSource:
        """This source with the hosts its login may reach (see :mod:`refstore.hosts`)."""
        return replace(self, hosts=tuple(hosts), _sample={})

    def _allows(self, url: str) -> bool:
        return HostPolicy(self.hosts).allows(url)

    def _hosts(self, scheme: str) -> list[str]:
        """The allowed hosts of one kind (``"s3"`` or ``"http"``, which includes https).

        Raises
        ------
        ConfigError
            No host is allowed yet (no repository, no ``allowed_hosts``).
        """
        if not self.hosts:
            raise ConfigError(
                f"No host is allowed to receive the Earthdata login for {self.url} yet.",
                "Run `refstore sync` (the first sync records the collection's data host) "
                "or set [source] allowed_hosts.",
            )
        return [h for h in self.hosts if h.split("://", 1)[0].startswith(scheme)]

    def _sample_endpoint(self) -> str | None:
        """The /s3credentials endpoint named by a granule on an allowed host."""
        if not self._sample:
            for page in self._pages(self._query(None), 50):
                for item in page:
                    self._to_granule(item)
                    if self._sample:
                        break
                if self._sample:
                    break
        if not self._sample:
            raise SourceError(
                f"CMR lists no granule with {self.access} access on an allowed host "
                f"({', '.join(self.hosts) or 'none'}) for {self.url}.",
                "Check [source] short_name/concept_id, version, provider, temporal, "
                "access, cmr_url and allowed_hosts.",
            )
        return self._sample.get("s3credentials") or None

    # -- reading --------------------------------------------------------------------
    def s3_credentials(self) -> EarthdataS3Credentials:
        """The refreshing provider of temporary S3 keys (``access = "direct"``).

        Raises
        ------
        ConfigError
            No ``/s3credentials`` endpoint is configured or named by the granules.
        """
        url = self.s3_credentials_url
        if url is None:
            self._hosts("s3")
            url = self._sample_endpoint()
        if not url:
            raise ConfigError(
                f"No /s3credentials endpoint for {self.url}.",
                "Set [source] s3_credentials_url to the DAAC's endpoint, e.g. "
                "https://archive.podaac.earthdata.nasa.gov/s3credentials.",
            )
        return EarthdataS3Credentials(url, self.login)

    def registry(self) -> Any:
        """Readers for the allowed hosts only: S3 with refreshing keys, or HTTPS with the
        token. A link on any other host resolves to no reader at all."""
        if self.access == "direct":
            buckets = {h.removeprefix("s3://") for h in self._hosts("s3")}
            return s3_registry(buckets, self.s3_options, self.s3_credentials())
        return http_registry(self._hosts("http"), bearer_headers(self.login))

    def containers(self) -> tuple[ContainerSpec, ...]:
        """One container per allowed host of the access mode: ``s3://<bucket>/``
        (direct) or ``https://host[:port]/`` (external)."""
        if self.access == "direct":
            opts = self.s3_options.items()
            return tuple(ContainerSpec(h + "/", "s3", opts) for h in self.hosts if h[:5] == "s3://")
        return tuple(ContainerSpec(h + "/", "http") for h in self.hosts if h[:4] == "http")

    def icechunk_credentials(self) -> Any:
        """Refreshable S3 keys (direct) or plain HTTP access (external; token in headers)."""
        from icechunk.credentials import HttpAccess

        if self.access == "direct":
            return self.s3_credentials().icechunk()
        return HttpAccess

    def http_headers(self) -> dict[str, str]:
        """The EDL bearer token for HTTPS links (memory only); the containers it is
        given to are those of :meth:`containers`, the allowed hosts."""
        return bearer_headers(self.login) if self.access == "external" else {}

    def fsspec_options(self) -> dict[str, dict[str, Any]]:
        """fsspec options to read the granules from an export: the token for the allowed
        hosts only (external), or a snapshot of the temporary keys (direct; fsspec does
        not refresh them)."""
        from refstore.export_s3 import s3fs_options

        if self.access == "external":
            return scoped_http_options(self._hosts("http"), self.login)
        keys = self.s3_credentials().current()
        return {
            "s3": {
                **s3fs_options(self.s3_options),
                "key": keys.access_key_id,
                "secret": keys.secret_access_key,
                "token": keys.session_token,
            }
        }

    def check_access(self) -> None:
        """Get a token (and, for direct access, S3 keys) now: a missing login is one
        ConfigError with a hint instead of a failure deep inside a chunk read."""
        if self.access == "direct":
            self.s3_credentials().current()
        else:
            self.login.token()
