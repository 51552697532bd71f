"""Pure renderers for ``refstore publish``: facts in, text out (no I/O, no imports of
xarray/icechunk).

:class:`Facts` is everything a reader of a published store needs; from it come the
STAC Collection (:func:`stac_collection`), the open snippets (:func:`snippets`: the
exact code to open the repository with Icechunk and the export with fsspec + xarray),
the README snippet (:func:`readme_snippet`), a UMM-C ``RelatedUrls`` entry
(:func:`umm_related_urls`) and the static page (:func:`index_html`). Every text that
comes from the store (keys, reasons, messages, tags, paths) is HTML-escaped on the page.
Credentials are described by what they are and where a reader puts them (an
environment variable's *name*, ``~/.netrc``), never by a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import Any

__all__ = [
    "Container",
    "Facts",
    "Snippet",
    "index_html",
    "readme_snippet",
    "snippets",
    "stac_collection",
    "umm_related_urls",
]

STAC_VERSION = "1.0.0"
ICECHUNK_MEDIA_TYPE = "application/vnd.zarr+icechunk"
KERCHUNK_MEDIA_TYPE = "application/vnd.apache.parquet; profile=kerchunk"
SNIPPET_FILE = "OPEN.md"
CODE_FENCE = "```"


@dataclass(frozen=True, slots=True)
class Container:
    """A virtual chunk container a reader must authorize, and what it needs."""

    prefix: str
    kind: str  # local | s3 | http
    needs: str  # the credential in words (names only, never values)
    anonymous: bool = False
    token_env: str | None = None  # an HTTP bearer token's environment variable
    options: dict[str, str] = field(default_factory=dict)  # S3: region, endpoint_url...


@dataclass(frozen=True, slots=True)
class Facts:
    """What ``publish`` writes about a store (gathered by :mod:`refstore.publish`)."""

    name: str
    repo: str
    export: str | None  # None: a rectilinear store has no kerchunk export
    concat_dim: str
    start: str | None
    end: str | None
    steps: int
    cadence: str | None  # the data's step (e.g. "6h")
    update_cadence: str | None  # how often snapshots arrive (median between them)
    last_snapshot: dict[str, Any] | None  # id, written_at, message, tags
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # newest first
    tags: list[dict[str, str]] = field(default_factory=list)  # name, snapshot
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # key, reason
    containers: list[Container] = field(default_factory=list)
    repo_needs: str = "read access to the repository folder"
    export_needs: str = "read access to the export folder"
    repo_options: dict[str, Any] = field(default_factory=dict)  # S3: region, endpoint_url...
    rectilinear: bool = False
    bbox: list[float] | None = None
    variables: list[str] = field(default_factory=list)
    generated_at: str = ""
    coverage_png: str | None = "coverage.png"


@dataclass(frozen=True, slots=True)
class Snippet:
    """One way to open the store: a title, what it needs, runnable Python defining ``ds``."""

    title: str
    needs: list[str]
    code: str


# -- open snippets ---------------------------------------------------------------------


def _credential_expr(c: Container) -> str:
    if c.kind == "local":
        return "LocalFileSystemAccess"
    if c.kind == "http":
        return "HttpAccess"
    if c.anonymous:
        return "icechunk.s3_anonymous_credentials()"
    return "icechunk.s3_from_env_credentials()"


def _storage_expr(facts: Facts) -> str:
    if not facts.repo.startswith("s3://"):
        return f"icechunk.local_filesystem_storage({facts.repo.removeprefix('file://')!r})"
    bucket, _, prefix = facts.repo.removeprefix("s3://").partition("/")
    opts = {k: v for k, v in facts.repo_options.items() if v}
    args = [f"bucket={bucket!r}", f"prefix={prefix.rstrip('/')!r}"]
    args += [f"{k}={v!r}" for k, v in sorted(opts.items()) if k != "anonymous"]
    args.append("anonymous=True" if opts.get("anonymous") else "from_env=True")
    if opts.get("endpoint_url"):
        args.append("force_path_style=True")
    return "icechunk.s3_storage(" + ", ".join(args) + ")"


def _repo_snippet(facts: Facts) -> Snippet:
    kinds = {c.kind for c in facts.containers}
    lines = ["import icechunk", "import xarray as xr"]
    if any(c.token_env for c in facts.containers) or facts.rectilinear:
        lines.insert(0, "import os")
    imports = [
        n for k, n in (("local", "LocalFileSystemAccess"), ("http", "HttpAccess")) if k in kinds
    ]
    if imports:
        lines.append(f"from icechunk.credentials import {', '.join(imports)}")
    if facts.rectilinear:
        lines += ["import zarr", "", 'zarr.config.set({"array.rectilinear_chunks": True})']
    lines += ["", f"storage = {_storage_expr(facts)}"]
    config = "None"
    headers = [c for c in facts.containers if c.kind == "http" and c.token_env]
    if headers:
        config = "config"
        lines.append("config = icechunk.RepositoryConfig()")
        for c in headers:
            lines += [
                "config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(",
                f"    {c.prefix!r},",
                "    icechunk.http_store(",
                f"        headers={{'Authorization': f\"Bearer {{os.environ[{c.token_env!r}]}}\"}}",
                "    ),",
                "))",
            ]
    lines.append("repo = icechunk.Repository.open(")
    lines.append("    storage,")
    if config != "None":
        lines.append("    config=config,")
    lines.append("    authorize_virtual_chunk_access={")
    plain = [c for c in facts.containers if c.kind != "s3"]
    s3 = [c for c in facts.containers if c.kind == "s3"]
    lines += [f"        {c.prefix!r}: {_credential_expr(c)}," for c in plain]
    if s3:  # S3 credentials are wrapped as container credentials
        lines.append("        **icechunk.containers_credentials({")
        lines += [f"            {c.prefix!r}: {_credential_expr(c)}," for c in s3]
        lines.append("        }),")
    lines += ["    },", ")"]
    lines.append('ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)')
    needs = [f"the repository: {facts.repo_needs}"]
    needs += [f"{c.prefix}: {c.needs}" for c in facts.containers]
    return Snippet(
        "Icechunk repository (time travel: readonly_session(tag=...))", needs, "\n".join(lines)
    )


def _s3fs(options: dict[str, Any], anonymous: bool = False) -> dict[str, Any]:
    """s3fs options for an endpoint (no key: s3fs reads the AWS credential chain)."""
    out: dict[str, Any] = {}
    if options.get("endpoint_url"):
        out["endpoint_url"] = options["endpoint_url"]
    if options.get("region"):
        out["client_kwargs"] = {"region_name": options["region"]}
    if anonymous or options.get("anonymous"):
        out["anon"] = True
    return out


def _export_snippet(facts: Facts) -> Snippet | None:
    if facts.export is None:
        return None
    kinds = {c.kind for c in facts.containers}
    protocol = "s3" if "s3" in kinds else ("https" if "http" in kinds else "file")
    lines = ["import fsspec", "import xarray as xr", ""]
    target = ""
    fo = repr(facts.export)
    if facts.export.startswith("s3://"):
        lines += [
            f"target = {_s3fs(facts.repo_options)!r}",
            f"export = {facts.export!r}",
            'version = fsspec.filesystem("s3", **target).cat_file(f"{export}/LATEST")'
            ".decode().strip()",
        ]
        fo = 'f"{export}/{version}/"'
        target = ", target_protocol='s3', target_options=target"
    remote = ""
    if protocol != "file":
        s3 = next((c for c in facts.containers if c.kind == "s3"), None)
        opts: dict[str, Any] = _s3fs(s3.options, s3.anonymous) if s3 is not None else {}
        opts["asynchronous"] = True  # zarr 3 reads through an asynchronous filesystem
        remote = f", remote_options={opts!r}, asynchronous=True"
    lines.append(
        f'fs = fsspec.filesystem("reference", fo={fo}{target}, remote_protocol="{protocol}"'
        f"{remote})"
    )
    lines.append(
        'ds = xr.open_dataset(fs.get_mapper(""), engine="zarr", consolidated=False, '
        "zarr_format=2, chunks={})"
    )
    needs = [f"the export: {facts.export_needs}"]
    needs += [f"{c.prefix}: {c.needs}" for c in facts.containers]
    return Snippet(
        "kerchunk Parquet export (fsspec + xarray, no Icechunk)", needs, "\n".join(lines)
    )


def snippets(facts: Facts) -> list[Snippet]:
    """The ways to open the store, each a runnable program that defines ``ds``."""
    out = [_repo_snippet(facts)]
    export = _export_snippet(facts)
    if export is not None:
        out.append(export)
    return out


# -- STAC, UMM-C, README -----------------------------------------------------------------


def stac_collection(facts: Facts) -> dict[str, Any]:
    """A STAC 1.0 Collection with the repository and the export as assets."""
    assets: dict[str, Any] = {
        "icechunk": {
            "href": facts.repo,
            "type": ICECHUNK_MEDIA_TYPE,
            "title": "Icechunk repository (virtual Zarr, time travel by snapshot or tag)",
            "roles": ["data", "references"],
            "refstore:authorize": [c.prefix for c in facts.containers],
        }
    }
    if facts.export is not None:
        assets["kerchunk"] = {
            "href": facts.export,
            "type": KERCHUNK_MEDIA_TYPE,
            "title": "kerchunk Parquet references (fsspec + xarray)",
            "roles": ["data", "references"],
        }
    if facts.coverage_png:
        assets["coverage"] = {
            "href": facts.coverage_png,
            "type": "image/png",
            "title": "coverage of the concat dimension",
            "roles": ["overview"],
        }
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": facts.name,
        "title": facts.name,
        "description": (
            f"Virtual Zarr store of {facts.name}: {facts.steps} {facts.concat_dim} steps, "
            "kept up to date by refstore (one snapshot per update)."
        ),
        "license": "other",
        "extent": {
            "spatial": {"bbox": [facts.bbox or [-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [[facts.start, facts.end]]},
        },
        "links": [
            {"rel": "self", "href": "collection.json", "type": "application/json"},
            {"rel": "about", "href": "index.html", "type": "text/html", "title": "store page"},
            {"rel": "describedby", "href": SNIPPET_FILE, "type": "text/markdown"},
        ],
        "assets": assets,
        "summaries": {"variables": facts.variables},
        "updated": facts.generated_at,
        "refstore:concat_dim": facts.concat_dim,
        "refstore:cadence": facts.cadence,
        "refstore:update_cadence": facts.update_cadence,
        "refstore:last_snapshot": facts.last_snapshot,
        "refstore:steps": facts.steps,
    }


def umm_related_urls(facts: Facts) -> dict[str, Any]:
    """A UMM-C ``RelatedUrls`` fragment a DAAC can merge into the collection record."""
    urls = [
        {
            "URL": f"icechunk+{facts.repo}" if "://" in facts.repo else facts.repo,
            "URLContentType": "DistributionURL",
            "Type": "GET DATA",
            "Subtype": "VIRTUAL COLLECTION",
            "Description": (
                f"Icechunk virtual Zarr store of {facts.name}; authorize "
                + ", ".join(c.prefix for c in facts.containers)
            ),
        }
    ]
    if facts.export is not None:
        urls.append(
            {
                "URL": facts.export,
                "URLContentType": "DistributionURL",
                "Type": "GET DATA",
                "Subtype": "VIRTUAL COLLECTION",
                "Description": f"kerchunk Parquet references of {facts.name} (fsspec + xarray)",
            }
        )
    return {"RelatedUrls": urls}


def readme_snippet(facts: Facts) -> str:
    """Markdown: containers to authorize, credentials each needs, the exact open code."""
    out = [f"# Opening {facts.name}", ""]
    last = facts.last_snapshot or {}
    out.append(
        f"{facts.steps} `{facts.concat_dim}` steps, {facts.start} .. {facts.end}; "
        f"last snapshot `{last.get('snapshot', '-')}` written {last.get('written_at', '-')}."
    )
    out += ["", "Containers to authorize (virtual chunks live there):", ""]
    out += [f"- `{c.prefix}` ({c.kind}): {c.needs}" for c in facts.containers] or ["- (none)"]
    for s in snippets(facts):
        out += ["", f"## {s.title}", "", "Needs:", ""]
        out += [f"- {n}" for n in s.needs]
        out += ["", f"{CODE_FENCE}python", s.code, CODE_FENCE]
    out += [
        "",
        "Values packed with a float32 `scale_factor` decode to float64 through zarr; "
        "`refstore.open_dataset` (or the recipe in refstore's README) gives float32 as "
        "netCDF readers do.",
        "",
    ]
    return "\n".join(out)


# -- the page ----------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;
text-align:left;vertical-align:top}code,pre{font:13px/1.4 ui-monospace,monospace}
pre{background:#f5f5f5;padding:.8rem;overflow-x:auto}img{max-width:100%;height:auto}
.muted{color:#666}
"""


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def index_html(facts: Facts, recent: int = 10, tags: int = 20) -> str:
    """The store's page for people: one static file (plus the coverage PNG), no script;
    the ``recent`` newest snapshots and ``tags`` newest tags."""
    e = escape
    last = facts.last_snapshot or {}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(facts.name)} — refstore</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(facts.name)}</h1>",
        f'<p class="muted">Virtual Zarr store kept up to date by refstore; page written '
        f"{e(facts.generated_at)}.</p>",
        "<h2>Last update</h2>",
        f'<p id="last-update">Snapshot <code>{e(str(last.get("snapshot", "-")))}</code> '
        f"written {e(str(last.get('written_at', '-')))}: {e(str(last.get('message', '')))}</p>",
        f'<p id="extent">{facts.steps} {e(facts.concat_dim)} steps, {e(str(facts.start))} .. '
        f"{e(str(facts.end))}; data every {e(facts.cadence or '?')}, updated about every "
        f"{e(facts.update_cadence or '?')}.</p>",
    ]
    if facts.coverage_png:
        parts += [
            "<h2>Coverage</h2>",
            f'<img id="coverage" src="{e(facts.coverage_png)}" '
            f'alt="coverage of {e(facts.name)} along {e(facts.concat_dim)}">',
        ]
    parts += [
        "<h2>Recent snapshots</h2>",
        _table(
            ["snapshot", "written", "tags", "message"],
            [
                [s["snapshot"], s["written_at"], ", ".join(s.get("tags", [])), s["message"]]
                for s in facts.snapshots[:recent]
            ],
            "No snapshot yet.",
        ),
        "<h2>Tags</h2>",
        _table(
            ["tag", "snapshot"],
            [[t["name"], t["snapshot"]] for t in facts.tags[:tags]],
            "No tag yet.",
        ),
        (
            f'<p class="muted">and {len(facts.tags) - tags} older tag(s) '
            "(<code>refstore log</code> lists them).</p>"
            if len(facts.tags) > tags
            else ""
        ),
        "<h2>Quarantined granules</h2>",
        _table(
            ["granule", "reason"],
            [[q["key"], q.get("reason") or ""] for q in facts.quarantined],
            "None: every granule in the source is in the store.",
        ),
        "<h2>Open it</h2>",
        "<p>Containers to authorize:</p><ul>",
        *[
            f"<li><code>{e(c.prefix)}</code> ({e(c.kind)}): {e(c.needs)}</li>"
            for c in facts.containers
        ],
        "</ul>",
    ]
    for s in snippets(facts):
        parts.append(f"<h3>{e(s.title)}</h3><ul>")
        parts += [f"<li>{e(n)}</li>" for n in s.needs]
        parts.append(f"</ul><pre><code>{e(s.code)}</code></pre>")
    parts += [
        '<p class="muted">Also: <a href="collection.json">STAC Collection</a>, '
        f'<a href="{SNIPPET_FILE}">{SNIPPET_FILE}</a>.</p>',
        "</body></html>",
        "",
    ]
    return "\n".join(parts)


def dumps(data: Any) -> str:
    """JSON as written to disk (sorted keys, stable)."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
