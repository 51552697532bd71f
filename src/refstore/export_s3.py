"""The kerchunk export on S3: a new version prefix, published by a one-line pointer.

S3 cannot rename a folder, so a Parquet export ``s3://bucket/exports/ccmp.parquet`` is
laid out as::

    s3://bucket/exports/ccmp.parquet/v01764000000000000000/.zmetadata, <var>/refs.0.parq …
    s3://bucket/exports/ccmp.parquet/LATEST      one line: "v01764000000000000000"

A new export is written under a new version prefix (its files are uploaded from a local
temporary folder), and published by a single PUT of ``LATEST`` (atomic on S3): a reader
that read ``LATEST`` always finds a complete version. The version just replaced is kept
for readers in flight; older ones are deleted. A JSON export is one object, replaced by
one PUT. Uploads retry transient faults through obstore's retry config.

Plain fsspec readers open ``f"{export}/{LATEST}/"`` (see the README);
:func:`resolve_export` does that for :func:`refstore.open_export`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from refstore.errors import NotFoundError, StoreError
from refstore.storage import S3Options, s3_store, split_s3_url

__all__ = ["LATEST", "resolve_export", "s3fs_options", "write_export_s3"]

LATEST = "LATEST"
_KEEP = 2  # the published version and the one just replaced


def write_export_s3(
    refs: dict[str, Any], url: str, fmt: str, options: S3Options | None = None
) -> str:
    """Write ``refs`` to the S3 export ``url`` and publish it; returns ``url``.

    Raises
    ------
    StoreError
        The export could not be written; the previous one stays published.
    """
    import obstore

    bucket, key = split_s3_url(url)
    key = key.rstrip("/")
    store = s3_store(bucket, options or S3Options())
    try:
        if fmt == "json":
            obstore.put(store, key, json.dumps(refs).encode())
            return url
        from kerchunk.df import refs_to_dataframe

        from refstore.export import RECORD_SIZE

        version = f"v{time.time_ns():020d}"  # sorts by creation time
        with tempfile.TemporaryDirectory(prefix="refstore-export-") as tmp:
            folder = Path(tmp) / "refs.parquet"
            refs_to_dataframe(refs, str(folder), record_size=RECORD_SIZE)
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                name = file.relative_to(folder).as_posix()
                obstore.put(store, f"{key}/{version}/{name}", file)
        obstore.put(store, f"{key}/{LATEST}", f"{version}\n".encode())  # the publish
        _prune(store, key)
    except Exception as e:
        raise StoreError(
            f"Cannot write the export {url}: {type(e).__name__}: {_first_line(e)}",
            "Check [store] export, region/endpoint_url and that AWS credentials allow "
            "writing there.",
        ) from e
    return url


def _prune(store: Any, key: str) -> None:
    import obstore

    listing = obstore.list_with_delimiter(store, prefix=key)
    versions = sorted(
        p.rstrip("/").rsplit("/", 1)[-1] for p in listing["common_prefixes"] if "/v" in p
    )
    for old in versions[:-_KEEP]:
        paths = [m["path"] for batch in obstore.list(store, prefix=f"{key}/{old}") for m in batch]
        if paths:
            obstore.delete(store, paths)


def resolve_export(url: str, options: S3Options | None = None) -> str:
    """The published version prefix of an S3 Parquet export (``…/v…/``).

    Raises
    ------
    NotFoundError
        Nothing was published at ``url`` yet.
    """
    import obstore

    bucket, key = split_s3_url(url)
    store = s3_store(bucket, options or S3Options())
    try:
        version = bytes(obstore.get(store, f"{key.rstrip('/')}/{LATEST}").bytes()).decode()
    except FileNotFoundError:
        raise NotFoundError(
            f"No export at {url} (no {LATEST} pointer).",
            "Run `refstore sync` or `refstore export` to write it.",
        ) from None
    return f"{url.rstrip('/')}/{version.strip()}/"


def s3fs_options(options: S3Options | None) -> dict[str, Any]:
    """fsspec ``s3`` filesystem options for the same endpoint (keys: the AWS chain)."""
    opts = options or S3Options()
    out: dict[str, Any] = {}
    if opts.endpoint_url:
        out["endpoint_url"] = opts.endpoint_url
    if opts.region:
        out["client_kwargs"] = {"region_name": opts.region}
    if opts.anonymous:
        out["anon"] = True
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
