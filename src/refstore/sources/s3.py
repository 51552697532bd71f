"""Granules under an S3 prefix: ``s3://bucket/prefix/`` or a glob such as
``s3://bucket/ccmp/**/*.nc``.

The listing gives each object's size, ETag and last-modified time; the ETag is the
revision (it changes when the object is replaced). Keys come from the AWS credential
chain at run time (environment, profile, web identity, instance role), or requests are
unsigned with ``[source] anonymous = true`` for public buckets. ``[source] endpoint_url``
(+ ``allow_http``) points at an S3-compatible server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from refstore.errors import SourceError
from refstore.models import Granule
from refstore.sources.base import ContainerSpec
from refstore.sources.local import is_data_name
from refstore.storage import S3Options, s3_store, split_s3_url

if TYPE_CHECKING:
    from refstore.config import Config

__all__ = ["S3Source", "s3_registry", "split_pattern"]

_GLOB_CHARS = set("*?[")


def split_pattern(path: str) -> tuple[str, str | None]:
    """``"ccmp/**/*.nc"`` as ``("ccmp/", "**/*.nc")``; the root ends in ``/`` (or is empty)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _GLOB_CHARS & set(part):
            root = "/".join(parts[:i])
            return (root + "/" if root else ""), "/".join(parts[i:])
    root = path.strip("/")
    return (root + "/" if root else ""), None


def s3_registry(buckets: set[str], options: S3Options, credential_provider: Any = None) -> Any:
    """An ``ObjectStoreRegistry`` reading ``s3://<bucket>/...`` for each bucket."""
    from obspec_utils.registry import ObjectStoreRegistry

    return ObjectStoreRegistry(
        {
            f"s3://{b}": s3_store(b, options, credential_provider=credential_provider)
            for b in sorted(buckets)
        }
    )


def _matcher(pattern: str | None) -> Any:
    if pattern is None:
        return lambda rel: "/" not in rel and is_data_name(rel)
    from fsspec.utils import glob_translate

    regex = re.compile(glob_translate(pattern), re.IGNORECASE)
    return lambda rel: regex.match(rel) is not None


@dataclass(frozen=True, slots=True)
class S3Source:
    """Objects under an S3 prefix.

    Parameters
    ----------
    url
        ``s3://bucket/prefix/`` (NetCDF/HDF5 objects directly under it) or a glob.
    options
        Region, endpoint, ``allow_http``, ``anonymous``.
    credential_provider
        An obstore credential provider (e.g. Earthdata temporary keys); default: the
        AWS credential chain.
    """

    url: str
    options: S3Options = field(default_factory=S3Options)
    credential_provider: Any = None
    incremental: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Config) -> S3Source:
        """Build from ``[source] url, region, endpoint_url, allow_http, anonymous``."""
        options = S3Options(
            region=config.source_region,
            endpoint_url=config.source_endpoint_url,
            allow_http=config.source_allow_http,
            anonymous=config.anonymous,
        )
        return cls(url=config.source_url, options=options)

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return split_s3_url(self.url)[0]

    @property
    def root(self) -> str:
        """The key prefix every granule lies under (ends in ``/``, or empty)."""
        return split_pattern(split_s3_url(self.url)[1])[0]

    def discover(self, since: str | None = None) -> Iterator[Granule]:
        """List matching objects; the ETag is the revision (size+mtime without one).

        Raises
        ------
        SourceError
            The bucket could not be listed (after the client's retries).
        """
        import obstore

        bucket, path = split_s3_url(self.url)
        root, pattern = split_pattern(path)
        matches = _matcher(pattern)
        store = s3_store(bucket, self.options, credential_provider=self.credential_provider)
        try:
            for chunk in obstore.list(store, prefix=root.rstrip("/") or None, chunk_size=1000):
                for meta in chunk:
                    key = meta["path"].removeprefix(root)
                    if key.rsplit("/", 1)[-1].startswith(".") or not matches(key):
                        continue  # hidden names are partial uploads / temp files
                    etag = (meta.get("e_tag") or "").strip('"')
                    modified = meta["last_modified"].isoformat()
                    yield Granule(
                        key=key,
                        url=f"s3://{bucket}/{meta['path']}",
                        revision=etag or f"{meta['size']}-{modified}",
                        size=int(meta["size"]),
                        modified=modified,
                    )
        except Exception as e:
            raise SourceError(
                f"Cannot list {self.url}: {type(e).__name__}: {_first_line(e)}",
                "Check [source] url, region/endpoint_url and that AWS credentials (or "
                "anonymous = true for a public bucket) allow listing it.",
            ) from e

    def registry(self) -> Any:
        """A registry reading this bucket with obstore."""
        return s3_registry({self.bucket}, self.options, self.credential_provider)

    def fsspec_options(self) -> dict[str, dict[str, Any]]:
        """fsspec options to read the granules from an export (keys: the AWS chain)."""
        from refstore.export_s3 import s3fs_options

        return {"s3": s3fs_options(self.options)}

    def containers(self) -> tuple[ContainerSpec, ...]:
        """An ``s3://bucket/prefix/`` container with the (non-secret) endpoint options."""
        return (ContainerSpec(f"s3://{self.bucket}/{self.root}", "s3", self.options.items()),)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
