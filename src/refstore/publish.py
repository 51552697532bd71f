"""``refstore publish``: the files that let people find and open a store.

Writes, next to the export (or into ``folder``): ``collection.json`` (a STAC Collection
with the repository and the export as assets), ``OPEN.md`` (the containers to
authorize, the credentials each needs and the exact code to open the repository with
Icechunk and the export with fsspec + xarray), ``coverage.png``, ``index.html`` (the
store's page: one static file, no script) and, on request, ``umm-related-urls.json``
(a UMM-C ``RelatedUrls`` entry for a DAAC). Each file is written whole (a temporary
file, then a rename). :func:`check_published` runs the published open code in fresh
interpreters, as a reader would, for ``refstore verify``.

:func:`gather` is the I/O; the text comes from :mod:`refstore.publish_render` (pure).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from refstore.config import Config
from refstore.errors import ConfigError, NotFoundError
from refstore.publish_render import (
    CODE_FENCE,
    SNIPPET_FILE,
    Container,
    Facts,
    dumps,
    index_html,
    readme_snippet,
    stac_collection,
    umm_related_urls,
)

__all__ = [
    "PublishReport",
    "check_published",
    "code_blocks",
    "default_folder",
    "gather",
    "probe",
    "publish",
]

STAC_FILE = "collection.json"
PAGE_FILE = "index.html"
COVERAGE_FILE = "coverage.png"
UMM_FILE = "umm-related-urls.json"
_AWS_CHAIN = (
    "AWS keys allowed to read it, from the AWS credential chain "
    "(AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)"
)


@dataclass
class PublishReport:
    """Where ``publish`` wrote what."""

    folder: str
    files: list[str] = field(default_factory=list)
    snapshot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"folder": self.folder, "files": self.files, "snapshot": self.snapshot}


def default_folder(config: Config) -> Path:
    """Where ``publish`` writes by default: the export's folder.

    Raises
    ------
    ConfigError
        The export is remote (``s3://``): the page is written locally, then uploaded by you.
    """
    if "://" in config.export and not config.export.startswith("file://"):
        raise ConfigError(
            f"The export {config.export} is remote; publish writes local files.",
            "Pass --output DIR (a local folder), then upload its files beside the export.",
        )
    return Path(config.export.removeprefix("file://")).parent


def _human(seconds: float | None) -> str | None:
    if not seconds:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"


def _container(prefix: str, config: Config, options: dict[str, str]) -> Container:
    """What a reader needs for one container (names of variables, never values)."""
    from refstore.credentials import DEFAULT_TOKEN_ENV
    from refstore.sources.base import kind_of
    from refstore.storage import spec_for_prefix

    kind = spec_for_prefix(prefix).kind
    source_kind = kind_of(config)
    if kind == "local":
        return Container(prefix, kind, "read access to the folder (no credential)")
    if kind == "s3":
        opts = {k: v for k, v in options.items() if v}
        if options.get("anonymous") or config.anonymous:
            return Container(
                prefix, kind, "none (a public bucket, unsigned)", anonymous=True, options=opts
            )
        if source_kind == "earthdata":
            return Container(
                prefix,
                kind,
                "temporary S3 keys from the DAAC's /s3credentials endpoint for an Earthdata "
                f"Login (${DEFAULT_TOKEN_ENV} or ~/.netrc), set as AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; in AWS us-west-2 only",
                options=opts,
            )
        return Container(prefix, kind, _AWS_CHAIN, options=opts)
    token = config.token_env or (DEFAULT_TOKEN_ENV if source_kind == "earthdata" else None)
    if token:
        return Container(
            prefix,
            kind,
            f"a bearer token in ${token} (sent as Authorization to this host only)",
            token_env=token,
        )
    return Container(prefix, kind, "none (public HTTP)")


def _bbox(ds: Any) -> list[float] | None:
    import numpy as np

    lat = next((ds[n] for n in ("lat", "latitude") if n in ds.variables), None)
    lon = next((ds[n] for n in ("lon", "longitude") if n in ds.variables), None)
    if lat is None or lon is None or lat.ndim != 1 or lon.ndim != 1:
        return None
    la, lo = np.asarray(lat.values, float), np.asarray(lon.values, float)
    if not (la.size and lo.size):
        return None
    west, east = float(np.nanmin(lo)), float(np.nanmax(lo))
    if east > 180:  # 0..360 longitudes
        west, east = -180.0, 180.0
    return [west, float(np.nanmin(la)), east, float(np.nanmax(la))]


def gather(config: Config, cadence_s: float | None = None, recent: int = 10) -> Facts:
    """The facts of the store's head for the published files (reads no chunk but the
    loaded coordinates).

    Raises
    ------
    NotFoundError
        No repository, or no snapshot yet.
    """
    import numpy as np

    from refstore.access import open_bound
    from refstore.admit import from_json_value
    from refstore.chunkgrid import RECTILINEAR
    from refstore.ledger import Ledger
    from refstore.models import Status
    from refstore.virtualize import format_value

    store, _policy = open_bound(config)
    head = store.head() if store.exists() else None
    if head is None:
        raise NotFoundError(
            f"No snapshot in {config.repo} to publish.", "Run `refstore sync` first."
        )
    log = store.log()
    entries = [
        {"snapshot": c.snapshot, "written_at": c.written_at, "message": c.message, "tags": t}
        for c, t in log
    ]
    tags = [{"name": t, "snapshot": c.snapshot} for c, ts in log for t in ts]
    times = sorted(datetime.fromisoformat(c.written_at).timestamp() for c, _ in log if c.count)
    update = float(np.median(np.diff(times))) if len(times) > 1 else None
    specs = {c.url_prefix: dict(c.options) for c in store.containers}
    prefixes = sorted(set(store.recorded_prefixes()) | set(specs))
    with Ledger(config.ledger, readonly=True) as ledger:
        quarantined = [
            {"key": r.key, "reason": r.reason} for r in ledger.iter_rows(Status.QUARANTINED)
        ]
    ds = store.open_dataset(None)
    remote_repo = config.repo.startswith("s3://")
    repo_opts = {
        "region": config.store_region,
        "endpoint_url": config.store_endpoint_url,
        "allow_http": config.store_allow_http or None,
    }
    rectilinear = head.layout == RECTILINEAR
    return Facts(
        name=config.short_name or Path(config.root).resolve().name,
        repo=config.repo,
        export=None if rectilinear else config.export,
        concat_dim=config.concat_dim,
        start=format_value(from_json_value(head.first)),
        end=format_value(from_json_value(head.last)),
        steps=head.length,
        cadence=config.cadence or _human(cadence_s),
        update_cadence=_human(update),
        last_snapshot=entries[0] if entries else None,
        snapshots=entries[:recent],
        tags=tags,
        quarantined=quarantined,
        containers=[_container(p, config, specs.get(p, {})) for p in prefixes],
        repo_needs=f"{_AWS_CHAIN}" if remote_repo else "read access to the repository folder",
        export_needs=_AWS_CHAIN
        if config.export.startswith("s3://")
        else "read access to the export folder",
        repo_options={k: v for k, v in repo_opts.items() if v},
        rectilinear=rectilinear,
        bbox=_bbox(ds),
        variables=sorted(str(v) for v in ds.data_vars),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _write(folder: Path, name: str, data: str | bytes) -> str:
    """Write one file whole: a temporary file in ``folder``, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(folder / name)


def publish(
    config: Config, folder: str | os.PathLike[str] | None = None, *, umm: bool = False
) -> PublishReport:
    """Write the published files (see the module doc); the page last.

    Raises
    ------
    NotFoundError
        Nothing to publish yet.
    ConfigError
        A remote export and no local ``folder``.
    LayoutError
        The store is a whole hierarchy of groups: the page, its open code and the STAC
        assets describe a store of one group with a kerchunk export.
    """
    from refstore.coverage import draw
    from refstore.coverage import gather as gather_coverage

    if config.hierarchy:
        from refstore.errors import LayoutError

        raise LayoutError(
            f"Not published: [dataset] group = {config.group_key} keeps a hierarchy of groups, "
            "and the published page, open code and STAC assets describe one group with a "
            "kerchunk export.",
            "Share the Icechunk repository and refstore.open_datatree(config); or publish a "
            'store of one group (group = "product").',
        )

    out = Path(folder) if folder is not None else default_folder(config)
    out.mkdir(parents=True, exist_ok=True)
    cov = gather_coverage(config, config.cadence)
    facts = gather(config, cov.cadence_s)
    report = PublishReport(folder=str(out), snapshot=(facts.last_snapshot or {}).get("snapshot"))
    fd, tmp_png = tempfile.mkstemp(prefix=f".{COVERAGE_FILE}.", suffix=".png", dir=out)
    os.close(fd)
    try:
        draw(cov, tmp_png, title=facts.name)
        os.chmod(tmp_png, 0o644)
        os.replace(tmp_png, out / COVERAGE_FILE)
    finally:
        Path(tmp_png).unlink(missing_ok=True)
    report.files.append(str(out / COVERAGE_FILE))
    report.files.append(_write(out, STAC_FILE, dumps(stac_collection(facts))))
    report.files.append(_write(out, SNIPPET_FILE, readme_snippet(facts)))
    if umm:
        report.files.append(_write(out, UMM_FILE, dumps(umm_related_urls(facts))))
    report.files.append(_write(out, PAGE_FILE, index_html(facts)))
    return report


_PROBE = """
import json as _json
import sys as _sys
print("REFSTORE-PROBE " + _json.dumps(_probe(ds, _sys.argv[1])))
"""


def probe(ds: Any, dim: str) -> dict[str, Any]:
    """What a published snippet must open: dims, variables and, read through the
    references, the NaN count and sum of each variable's last step."""
    import numpy as np

    last: dict[str, list[float]] = {}
    for name, var in ds.data_vars.items():
        if dim in var.dims:
            vals = np.asarray(var.isel({dim: -1}).values)
            if vals.dtype.kind in "fiu":
                num = vals.astype("float64")
                last[str(name)] = [int(np.isnan(num).sum()), float(np.nansum(num))]
    return {
        "dims": {str(k): int(v) for k, v in ds.sizes.items()},
        "vars": sorted(str(v) for v in ds.data_vars),
        "last_step": last,
    }


def _same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """Same dims and variables, and last steps equal up to float32 decoding (a zarr
    reader decodes float32 packing to float64)."""
    import math

    if got["dims"] != want["dims"] or got["vars"] != want["vars"]:
        return False
    if got["last_step"].keys() != want["last_step"].keys():
        return False
    return all(
        g[0] == w[0] and math.isclose(g[1], w[1], rel_tol=1e-5, abs_tol=1e-6)
        for g, w in ((got["last_step"][k], want["last_step"][k]) for k in want["last_step"])
    )


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(heading, code) of every Python block in a published ``OPEN.md``, in order."""
    heading = ""
    out = []
    fence = re.escape(CODE_FENCE)
    for m in re.finditer(rf"^## ([^\n]+)$|^{fence}python\n(.*?)^{fence}$", markdown, re.M | re.S):
        if m[1] is not None:
            heading = m[1].strip()
        else:
            out.append((heading, m[2]))
    return out


def check_published(
    config: Config, folder: str | os.PathLike[str], expected: Any
) -> tuple[list[str], list[str]]:
    """Run each published snippet in a fresh interpreter, as a reader would, and compare
    what it opens with ``expected`` (the head dataset): (checked titles, problems).

    Also checks that ``collection.json`` parses and names the files beside it.
    """
    base = Path(folder)
    problems: list[str] = []
    checked: list[str] = []
    snippet_file = base / SNIPPET_FILE
    if not snippet_file.exists():
        return [], [f"published: {snippet_file} is missing (run `refstore publish`)"]
    try:
        stac = json.loads((base / STAC_FILE).read_text())
        for name, asset in stac.get("assets", {}).items():
            href = str(asset.get("href", ""))
            local = href if "://" not in href else None
            if local is not None and not (base / local).exists():
                problems.append(f"published: {STAC_FILE} asset {name} points at missing {href}")
    except (OSError, ValueError) as e:
        problems.append(f"published: {base / STAC_FILE} cannot be read: {e}")
    want = probe(expected, config.concat_dim)
    prelude = "from refstore.publish import probe as _probe\n"
    blocks = code_blocks(snippet_file.read_text())
    if not blocks:
        problems.append(f"published: {snippet_file} holds no Python code block")
    # Each block in its own fresh interpreter, all at once (each pays its imports).
    procs = [
        (
            title,
            subprocess.Popen(
                [sys.executable, "-c", code + "\n" + prelude + _PROBE, config.concat_dim],
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for title, code in blocks
    ]
    for title, proc in procs:
        checked.append(title)
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        found = [ln for ln in stdout.splitlines() if ln.startswith("REFSTORE-PROBE ")]
        if proc.returncode != 0 or not found:
            tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
            problems.append(f"published: the {title!r} code in {snippet_file} fails: {tail}")
            continue
        got = json.loads(found[-1].removeprefix("REFSTORE-PROBE "))
        if not _same(got, want):
            problems.append(
                f"published: the {title!r} code in {snippet_file} opens {got}, the store "
                f"holds {want} (run `refstore publish` again)"
            )
    return checked, problems
