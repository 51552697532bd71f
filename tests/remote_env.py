"""Helpers for the tests of remote sources and stores (loopback servers only).

Only Earthdata Login and the DAACs' ``/s3credentials`` are simulated
(:class:`tests.servers.EarthdataAuthServer`); S3 is moto, HTTPS is a real range server, CMR
replays real recorded responses.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.servers import GranuleCatalog, MotoS3Server, granule_item

CCMP = "CCMP_WINDS_10M6HR_L4_V3.1"
ARCHIVE = "https://archive.podaac.earthdata.nasa.gov/"
PROTECTED = "s3://podaac-ops-cumulus-protected/"
S3CREDENTIALS = "https://archive.podaac.earthdata.nasa.gov/s3credentials"
EDL_TOKEN = "refstore-test-edl-bearer-0f9e8d"
HTTP_TOKEN = "refstore-test-http-bearer-7c6b5a"
EDL_PASSWORD = "refstore-test-edl-password-4d3c"
# DataGranule emits this from inside earthaccess 0.18 when tests build one themselves.
IGNORE_SIZE_WARNING = pytest.mark.filterwarnings(
    "ignore:As of version 1.0, `DataGranule.size`:FutureWarning"
)


def bucket_name(prefix: str) -> str:
    """A fresh bucket name (moto's buckets are shared by every server in the process)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def aws_env(monkeypatch: pytest.MonkeyPatch, s3: MotoS3Server) -> dict[str, str]:
    """The AWS credential chain's environment for moto; returned for subprocesses too."""
    env = {
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
        # Never ask an instance-metadata endpoint for keys (nothing leaves 127.0.0.1).
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(folder: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``refstore.toml`` from ``{"source": {...}, ...}`` (``dataset`` defaults in)."""
    sections = {"dataset": {"concat_dim": "time"}, **sections}
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        lines.append("")
    path = folder / "refstore.toml"
    path.write_text("\n".join(lines))
    return path


def s3_section(s3: MotoS3Server, **extra: Any) -> dict[str, Any]:
    """``region``/``endpoint_url``/``allow_http`` for a moto server."""
    return {"region": s3.region, "endpoint_url": s3.endpoint_url, "allow_http": True, **extra}


def s3_prefix_to_s3_store(
    folder: Path,
    s3: MotoS3Server,
    monkeypatch: pytest.MonkeyPatch,
    files: Sequence[Path],
) -> tuple[dict[str, str], str, str, str]:
    """Granules under ``s3://<granules>/ccmp/``, a refstore.toml in ``folder`` whose repo
    and export live in ``s3://<refs>/``; returns the AWS env, both buckets and the export
    URL."""
    env = aws_env(monkeypatch, s3)
    granules, refs = bucket_name("granules"), bucket_name("refs")
    s3.make_bucket(granules)
    s3.make_bucket(refs)
    for f in files:
        s3.upload_file(granules, f"ccmp/{f.name}", f)
    export = f"s3://{refs}/exports/ccmp.parquet"
    write_config(
        folder,
        {
            "source": s3_section(s3, url=f"s3://{granules}/ccmp/"),
            "store": s3_section(s3, repo=f"s3://{refs}/repos/ccmp", export=export),
        },
    )
    return env, granules, refs, export


def ccmp_item(path: Path, day: int, revision_date: str | None) -> dict[str, Any]:
    """A UMM-G item for a CCMP-like granule, with PO.DAAC's real link layout."""
    return granule_item(
        native_id=path.stem,
        short_name=CCMP,
        version="3.1",
        begin=f"2024-01-{day:02d}T00:00:00Z",
        end=f"2024-01-{day:02d}T18:00:00Z",
        https_url=f"{ARCHIVE}podaac-ops-cumulus-protected/{CCMP}/{path.name}",
        s3_url=f"{PROTECTED}{CCMP}/{path.name}",
        s3_credentials_url=S3CREDENTIALS,
        size_in_bytes=path.stat().st_size,
        revision_date=revision_date,
    )


def ccmp_catalog(
    files: Sequence[Path],
    *,
    bucket: str,
    http_base: str | None,
    s3credentials_url: str | None = None,
) -> GranuleCatalog:
    """A CMR catalog of CCMP-like granules whose links point at the loopback servers.

    Each granule has its own, older revision date (as in a real archive).
    """
    rewrites = {PROTECTED: f"s3://{bucket}/"}
    if s3credentials_url is not None:
        rewrites[S3CREDENTIALS] = s3credentials_url
    if http_base is not None:
        rewrites[f"{ARCHIVE}podaac-ops-cumulus-protected/{CCMP}/"] = http_base.rstrip("/") + "/"
    items = [ccmp_item(f, i + 1, f"2024-02-{i + 1:02d}T00:00:00Z") for i, f in enumerate(files)]
    return GranuleCatalog(items, link_rewrites=rewrites, drop_unmapped_links=True)


def download_bucket(s3: MotoS3Server, bucket: str, dest: Path) -> list[Path]:
    """Copy every object of ``bucket`` under ``dest`` (for grepping)."""
    out = []
    for key in s3.list_keys(bucket):
        target = dest / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.client.download_file(bucket, key, str(target))
        out.append(target)
    return out


def files_under(*roots: Path) -> list[Path]:
    """Every file under ``roots`` (files themselves included)."""
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found += [p for p in root.rglob("*") if p.is_file()]
    return found


def secret_hits(
    secrets: Iterable[str], files: Iterable[Path], texts: Iterable[str] = ()
) -> list[str]:
    """Where any secret appears: ``"<secret> in <file>"`` lines (empty = none)."""
    wanted = [s for s in secrets if s]
    hits = []
    for path in files:
        data = path.read_bytes()
        hits += [f"{s[:12]}… in {path}" for s in wanted if s.encode() in data]
    for i, text in enumerate(texts):
        hits += [f"{s[:12]}… in captured text #{i}" for s in wanted if s in text]
    return hits
