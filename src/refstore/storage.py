"""Where things live: Icechunk storage for the repository and object-store configs and
credentials for virtual chunk containers, built from URLs.

Only this module knows how a URL scheme maps to an Icechunk storage or container
store, or to an obstore client. Credentials are passed in at open time and are never
written to the repository config, the ledger, the export or logs: S3 keys come from the
AWS credential chain (or a refreshing provider), HTTP headers are added to the
containers of an *opened* repository only (``container_open_config``), never saved.

Transient faults (timeouts, 5xx, throttling) are retried by the clients themselves:
obstore's ``retry_config`` (exponential backoff with jitter) and Icechunk's storage
retries (10 tries with backoff by default). There is no retry loop of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from refstore.errors import ConfigError
from refstore.sources.base import ContainerSpec

if TYPE_CHECKING:
    from refstore.config import Config

__all__ = [
    "CLIENT_OPTIONS",
    "RETRY_CONFIG",
    "S3Options",
    "container_credentials",
    "container_open_config",
    "container_store_config",
    "export_registry",
    "http_store",
    "is_local",
    "origin",
    "repo_storage",
    "s3_store",
    "spec_for_prefix",
    "split_s3_url",
    "store_options",
]

# obstore retries 5xx, 429, timeouts and dropped connections with backoff + jitter; the
# total is bounded so that a dead server quarantines a granule in about a minute.
RETRY_CONFIG: dict[str, Any] = {
    "max_retries": 5,
    "backoff": {
        "init_backoff": timedelta(milliseconds=100),
        "max_backoff": timedelta(seconds=10),
        "base": 2,
    },
    "retry_timeout": timedelta(minutes=1),
}
CLIENT_OPTIONS: dict[str, Any] = {"timeout": "60s", "connect_timeout": "10s"}


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach an S3 (or S3-compatible) endpoint; nothing secret.

    ``endpoint_url`` is for S3-compatible servers (MinIO, moto, Ceph); it switches to
    path-style requests. ``anonymous`` sends unsigned requests (public buckets);
    otherwise keys come from the AWS credential chain or a credential provider.
    """

    region: str | None = None
    endpoint_url: str | None = None
    allow_http: bool = False
    anonymous: bool = False

    def items(self) -> tuple[tuple[str, str], ...]:
        """The options as text pairs (for :class:`ContainerSpec`)."""
        pairs = (
            ("region", self.region or ""),
            ("endpoint_url", self.endpoint_url or ""),
            ("allow_http", "true" if self.allow_http else ""),
            ("anonymous", "true" if self.anonymous else ""),
        )
        return tuple((k, v) for k, v in pairs if v)

    @classmethod
    def from_items(cls, items: tuple[tuple[str, str], ...]) -> S3Options:
        """Inverse of :meth:`items`."""
        d = dict(items)
        return cls(
            region=d.get("region") or None,
            endpoint_url=d.get("endpoint_url") or None,
            allow_http=d.get("allow_http") == "true",
            anonymous=d.get("anonymous") == "true",
        )


def store_options(config: Config) -> S3Options:
    """The ``[store]`` S3 options (repository and export)."""
    return S3Options(config.store_region, config.store_endpoint_url, config.store_allow_http)


def is_local(url: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return "://" not in url or url.startswith("file://")


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` as ``("bucket", "some/prefix/")``.

    Raises
    ------
    ConfigError
        Not an ``s3://`` URL with a bucket.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"{url!r} is not an s3://bucket/prefix URL.")
    return parts.netloc, parts.path.lstrip("/")


def s3_store(
    bucket: str,
    options: S3Options,
    *,
    prefix: str | None = None,
    credential_provider: Any = None,
) -> Any:
    """An obstore ``S3Store`` with bounded timeouts and retries.

    Keys come from ``credential_provider`` when given, else from the AWS credential
    chain (environment, profile, web identity, instance metadata), unless anonymous.
    """
    from obstore.store import S3Store

    kwargs: dict[str, Any] = {}
    if options.region:
        kwargs["region"] = options.region
    if options.endpoint_url:
        kwargs["endpoint"] = options.endpoint_url
    if options.anonymous:
        kwargs["skip_signature"] = True
    if credential_provider is not None:
        kwargs["credential_provider"] = credential_provider
    return S3Store(
        bucket,
        prefix=prefix or None,
        client_options={**CLIENT_OPTIONS, "allow_http": options.allow_http},  # type: ignore[arg-type]
        retry_config=RETRY_CONFIG,  # type: ignore[arg-type]
        **kwargs,
    )


def http_store(base_url: str, headers: dict[str, str] | None = None) -> Any:
    """An obstore ``HTTPStore`` for ``base_url`` with bounded timeouts and retries.

    ``headers`` (e.g. a bearer token) stay in this process's memory.
    """
    from obstore.store import HTTPStore

    client_options: dict[str, Any] = {
        **CLIENT_OPTIONS,
        "allow_http": base_url.startswith("http://"),
    }
    if headers:
        client_options["default_headers"] = headers
    return HTTPStore.from_url(
        base_url,
        client_options=client_options,  # type: ignore[arg-type]
        retry_config=RETRY_CONFIG,  # type: ignore[arg-type]
    )


def export_registry(source_registry: Any, repo_url: str, options: S3Options | None) -> Any:
    """``source_registry`` plus a reader of the repository's own chunks.

    Building the export reads the loaded variables (the concat coordinate) from the
    repository's native chunks; for a local source the ``file://`` store covers them.
    """
    if is_local(repo_url):
        from obstore.store import LocalStore

        try:
            source_registry.resolve(Path(repo_url.removeprefix("file://")).resolve().as_uri())
        except ValueError:
            source_registry.register("file://", LocalStore())
        return source_registry
    bucket, _ = split_s3_url(repo_url)
    source_registry.register(f"s3://{bucket}", s3_store(bucket, options or S3Options()))
    return source_registry


def repo_storage(url: str, options: S3Options | None = None) -> Any:
    """The ``icechunk.Storage`` for a repository URL (a local folder or ``s3://``).

    Raises
    ------
    ConfigError
        The scheme is not supported.
    """
    import icechunk

    if is_local(url):
        return icechunk.local_filesystem_storage(url.removeprefix("file://"))
    if url.startswith("s3://"):
        opts = options or S3Options()
        bucket, prefix = split_s3_url(url)
        return icechunk.s3_storage(
            bucket=bucket,
            prefix=prefix.rstrip("/") or None,
            region=opts.region,
            endpoint_url=opts.endpoint_url,
            allow_http=opts.allow_http,
            anonymous=opts.anonymous or None,
            # Keys from the AWS chain at run time; nothing is stored with the repo.
            from_env=None if opts.anonymous else True,
            force_path_style=bool(opts.endpoint_url),
        )
    raise ConfigError(
        f"[store] repo {url!r}: unsupported location.",
        "Use a local folder or s3://bucket/prefix for the repository.",
    )


def container_store_config(spec: ContainerSpec, headers: dict[str, str] | None = None) -> Any:
    """The ``ObjectStoreConfig`` an Icechunk virtual chunk container reads through.

    ``headers`` are for opened repositories only: a config that includes them must
    never be saved (see :func:`container_open_config`).
    """
    import icechunk

    if spec.kind == "local":
        return icechunk.local_filesystem_store(spec.url_prefix.removeprefix("file://"))
    if spec.kind == "s3":
        opts = S3Options.from_items(spec.options)
        return icechunk.s3_store(
            region=opts.region,
            endpoint_url=opts.endpoint_url,
            allow_http=opts.allow_http,
            anonymous=opts.anonymous,
            s3_compatible=bool(opts.endpoint_url),
            force_path_style=bool(opts.endpoint_url),
        )
    if spec.kind == "http":
        opts_http = {"allow_http": "true"} if spec.url_prefix.startswith("http://") else None
        return icechunk.http_store(opts_http, headers=headers or None)
    raise ConfigError(f"Unsupported virtual chunk container {spec.url_prefix!r} ({spec.kind}).")


def spec_for_prefix(prefix: str) -> ContainerSpec:
    """A container recorded in a repository, from its URL prefix alone (no options)."""
    scheme = prefix.split("://", 1)[0].lower()
    kind = {"file": "local", "s3": "s3", "http": "http", "https": "http"}.get(scheme, scheme)
    return ContainerSpec(prefix, kind)


# Icechunk trains a zstd dictionary for the chunk URLs of every manifest it writes with at
# least this many references (default 1,000): measured with Icechunk 2.3 on a store of
# 1,000 granules (splits of 1,461 references), that made each one-granule commit 0.11 s
# instead of 0.009 s, for a manifest no smaller (the file's own compression already
# shrinks the repeated URLs). 65,535 is the largest value the setting takes.
URL_DICTIONARY_MIN_REFS = 65_535
# Chunks along the concat dim per manifest split (fixed when a repository is created; at
# most the loaded coordinate's chunk). An append rewrites the newest split of every
# array, so its cost follows the split's size: with splits of a year of half-hours
# (17,532) a +1 commit at 10,000 granules took 0.076 s against 0.041 s at 600; with
# splits of 1,000 it took 0.058 s (issue 12, scripts/bench_scale.py's stores).
MANIFEST_SPLIT_MAX = 1_000
# Manifests of the changed arrays that a commit reads back to merge into (default 1, in
# series: one round trip per variable on S3).
COMMIT_MANIFEST_FETCHES = 8
# Icechunk preloads the manifests of coordinate-like arrays when a session opens. refstore
# stores its coordinates as native chunks, so that is work for nothing that grows with
# the store (measured: opening the 5 arrays of a write session 3.1 ms without, 5.9 ms at
# 100 granules and 9.6 ms at 1,000 with it).
PRELOAD_REFS = 0


def manifest_write_settings() -> Any:
    """Manifest settings for every opened repository (runtime, merged with the saved
    splitting): a commit costs what the batch changed, not the store's size."""
    import icechunk

    return icechunk.ManifestConfig(
        virtual_chunk_location_compression=icechunk.ManifestVirtualChunkLocationCompressionConfig(
            min_num_chunks=URL_DICTIONARY_MIN_REFS
        ),
        max_concurrent_manifest_fetches_during_commit=COMMIT_MANIFEST_FETCHES,
        preload=icechunk.ManifestPreloadConfig(max_total_refs=PRELOAD_REFS),
    )


def container_open_config(specs: tuple[ContainerSpec, ...], source: Any | None) -> Any:
    """The ``RepositoryConfig`` to pass when *opening* a repository.

    - Retries with backoff for every request, virtual chunk reads included (measured
      with Icechunk 2.3: without explicit settings a virtual chunk read fails on the
      first HTTP 503);
    - HTTP containers get the source's headers (a bearer token): ``specs`` must be
      the source's own containers, its allowed hosts (:mod:`refstore.hosts`), never a
      container named by a granule link.

    Icechunk merges this with the saved config in memory; it is never saved (refstore
    never calls ``save_config`` on a repository opened with it).
    """
    import icechunk

    config = icechunk.RepositoryConfig()
    config.storage = icechunk.StorageSettings(
        retries=icechunk.StorageRetriesSettings(
            max_tries=6, initial_backoff_ms=100, max_backoff_ms=10_000
        )
    )
    config.manifest = manifest_write_settings()
    provider = getattr(source, "http_headers", None)
    http = [c for c in specs if c.kind == "http"]
    headers = provider() if provider is not None and http else None
    if not headers:
        return config
    for c in http:
        config.set_virtual_chunk_container(
            icechunk.VirtualChunkContainer(c.url_prefix, container_store_config(c, headers))
        )
    return config


def container_credentials(spec: ContainerSpec, source: Any | None = None) -> Any:
    """The credential granting read access to a container.

    ``source`` may provide ``icechunk_credentials()`` (e.g. refreshable Earthdata S3
    credentials); they are handed to Icechunk in memory only. Otherwise S3 containers
    read with the AWS credential chain (or unsigned when anonymous).
    """
    import icechunk
    from icechunk.credentials import HttpAccess, LocalFileSystemAccess

    if spec.kind == "local":
        return LocalFileSystemAccess
    provider = getattr(source, "icechunk_credentials", None)
    credential: Any
    if spec.kind == "http":
        credential = HttpAccess  # headers, if any, come with container_open_config
    elif provider is not None:
        credential = provider()
    elif spec.kind == "s3" and S3Options.from_items(spec.options).anonymous:
        credential = icechunk.s3_anonymous_credentials()
    elif spec.kind == "s3":
        credential = icechunk.s3_from_env_credentials()  # the AWS chain, at read time
    else:
        return None
    # Wraps S3 credentials as Icechunk's container credential type.
    return icechunk.containers_credentials({spec.url_prefix: credential})[spec.url_prefix]
