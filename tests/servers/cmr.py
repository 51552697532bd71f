"""Replay CMR search server on loopback, backed by an editable catalog of recorded UMM items.

:class:`GranuleCatalog` holds UMM-JSON items (granules and collections) -- typically the real
recorded CMR responses in :data:`DEFAULT_CMR_DIR` (see ``PROVENANCE.md``, "CMR search responses")
-- and answers searches the way CMR does; :class:`CmrReplayServer` serves it over HTTP:

- ``GET|POST /search/granules.umm_json[_vX_Y[_Z]]`` and ``/search/collections.umm_json...``; the
  body is ``{"hits", "took", "items"}`` with CMR's ``CMR-Hits``, ``CMR-Took``, ``CMR-Request-Id``
  and ``Content-Type`` headers. Errors are CMR-style ``{"errors": [...]}`` with status 400.
- filters: ``short_name`` (case-insensitive; ``options[short_name][pattern]=true`` enables
  ``*``/``?``),
  ``version``, ``provider``, ``concept_id`` (a ``C...`` id filters granules by collection),
  ``collection_concept_id`` / ``echo_collection_id``, ``granule_ur`` / ``readable_granule_name``,
  ``native_id``, ``temporal[]=start,end`` (overlap with ``TemporalExtent``; open ends allowed;
  several ranges are OR-ed unless ``options[temporal][and]=true``;
  ``options[temporal][exclude_boundary]=true``), ``revision_date[]=start,end`` (against
  ``meta.revision-date``, same rules) and ``updated_since=date``. ``page_size`` (default 10, max
  2000, 0 = hits only), ``page_num`` and ``sort_key[]`` (``start_date``, ``end_date``,
  ``revision_date``, ``granule_ur``, ``producer_granule_id``, ``readable_granule_name``,
  ``concept_id``, ``short_name``, ``version``, ``entry_title``, ``provider``; ``-`` = descending).
  Unknown parameters are rejected with 400 (so a client typo cannot silently widen a search);
  harmless ones such as ``cloud_hosted`` or ``include_granule_counts`` are accepted and ignored.
- paging: like CMR, every non-empty page carries ``CMR-Search-After``: the JSON list of the sort
  values of its last item (default granule order is CMR's: provider, start date, concept-id number,
  e.g. ``["laads",951351000000,1462754407]`` -- identical to the recorded tokens). Sending it back
  as the ``CMR-Search-After`` request header returns the items strictly after it, so a chain is
  stable even when items are added or revised between pages. An empty page has no token.
- editing between syncs: :meth:`GranuleCatalog.add`, :meth:`GranuleCatalog.revise` (bumps
  ``meta.revision-id``, sets ``meta.revision-date``), :meth:`GranuleCatalog.delete`.
- loopback data: :func:`rewrite_links` / ``GranuleCatalog(link_rewrites=...)`` rewrite each item's
  ``RelatedUrls`` by URL prefix (e.g. ``https://archive.podaac.earthdata.nasa.gov/`` -> the
  :class:`~tests.servers.http_range.RangeHTTPServer` base URL, ``s3://podaac-ops-cumulus-protected/``
  -> ``s3://<moto bucket>/``) when items are served, so granule data can really be fetched.
  ``drop_unmapped_links=True`` also removes every other absolute link (OPeNDAP, docs, ...).
- ``CmrReplayServer.hits_override`` reproduces the recorded TELLUS quirk (``CMR-Hits`` 652 vs 163
  items actually returned); ``fail_next`` / ``delay_next`` inject faults; ``requests`` logs queries.

earthaccess / python-cmr against this server (verified in ``tests/test_servers.py``):

- ``earthaccess.DataGranules().mode(server.search_url)`` (``search_url`` = ``<base>/search/``):
  python-cmr's ``Query.mode()`` sets the base URL to ``mode + "granules"`` and ``_build_url``
  appends ``.umm_json?<params>``; ``page_size`` is sent as a separate query parameter and
  ``CMR-Search-After`` as a request header. ``.short_name()``, ``.version()``, ``.provider()``,
  ``.temporal()``, ``.revision_date()`` (python-cmr >= 0.12) all work; ``.get(n)``/``.get_all()``
  return ``DataGranule`` objects whose ``["meta"]`` and ``.data_links(access="external"|"direct")``
  reflect the (rewritten) items. Note ``DataGranule()`` emits an earthaccess ``FutureWarning``
  (``size()``), which must be ignored under ``-W error``.
- Staying on loopback: importing earthaccess makes no request (``Auth()`` only builds URLs).
  These DO contact NASA and must not be used in tests: ``earthaccess.login()``, ``status()``,
  ``search_data()``/``search_datasets()`` (they build ``DataGranules()`` with the default
  ``CMR_OPS`` mode unless the global auth is authenticated), ``DataGranules.cloud_hosted()`` and
  ``DataCollections.cloud_hosted()`` (``find_provider_by_shortname`` queries the real CMR with a
  hard-coded URL), ``DataGranule``/``DataCollection`` citation helpers, and
  ``earthaccess.get_s3_credentials`` (refuses non-https endpoints). Always construct the query
  object yourself and call ``.mode(server.search_url)`` first; ``tests.servers.no_external_network``
  turns any slip into an immediate error.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ._base import LoopbackHTTPServer, QuietHandler

__all__ = [
    "DEFAULT_CMR_DIR",
    "CatalogError",
    "CmrReplayServer",
    "CmrRequest",
    "GranuleCatalog",
    "SearchResult",
    "format_cmr_datetime",
    "granule_item",
    "load_items",
    "parse_cmr_datetime",
    "recorded_files",
    "rewrite_links",
]

Item = dict[str, Any]


def _default_cmr_dir() -> Path:
    env = os.environ.get("REFSTORE_TEST_CMR_DIR")
    if env:
        return Path(env)
    in_repo = Path(__file__).resolve().parents[1] / "data" / "cmr"
    return in_repo if in_repo.is_dir() else Path("/work/shared/data/cmr")


#: Recorded CMR responses: ``$REFSTORE_TEST_CMR_DIR``, else ``tests/data/cmr``, else the shared
#: copy in ``/work/shared/data/cmr``.
DEFAULT_CMR_DIR = _default_cmr_dir()

MAX_PAGE_SIZE = 2000
DEFAULT_PAGE_SIZE = 10
UMM_G_VERSION = "1.6.5"
_GRANULE_CONTENT_TYPE = (
    f"application/vnd.nasa.cmr.umm_results+json;version={UMM_G_VERSION}; charset=utf-8"
)
_COLLECTION_CONTENT_TYPE = "application/vnd.nasa.cmr.umm_results+json;version=1.18.1; charset=utf-8"

# Accepted and ignored (they do not narrow the result set of a replay catalog).
_IGNORED_PARAMS = frozenset(
    {
        "cloud_hosted",
        "downloadable",
        "online_only",
        "browse_only",
        "has_granules",
        "has_granules_or_cwic",
        "include_granule_counts",
        "include_has_granules",
        "include_facets",
        "include_tags",
        "pretty",
        "echo_compatible",
        "token",
    }
)


class CatalogError(ValueError):
    """A bad query or catalog edit (served as a CMR-style 400)."""


# -- dates ------------------------------------------------------------------------------------
def parse_cmr_datetime(value: str | date | datetime) -> datetime:
    """Parse a CMR date (``2024-07-05``, ``2024-07-05T00:00:00Z``, ``...00.000Z``) to aware UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    else:
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise CatalogError(f"invalid date-time [{value}]") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_cmr_datetime(value: str | date | datetime) -> str:
    """Format like CMR's ``meta.revision-date``: ``2023-04-17T15:28:14.157Z``."""
    dt = parse_cmr_datetime(value)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)


# -- item accessors ---------------------------------------------------------------------------
def _concept_type(item: Mapping[str, Any]) -> str:
    ctype = item.get("meta", {}).get("concept-type")
    if ctype in ("granule", "collection"):
        return str(ctype)
    return "collection" if "CollectionReference" not in item.get("umm", {}) else "granule"


def _extents(item: Mapping[str, Any]) -> list[tuple[datetime | None, datetime | None]]:
    """Temporal extents as (begin, end); ``None`` end means open-ended."""
    umm = item.get("umm", {})
    out: list[tuple[datetime | None, datetime | None]] = []
    blocks: list[Mapping[str, Any]] = []
    if isinstance(umm.get("TemporalExtent"), Mapping):  # UMM-G
        blocks.append(umm["TemporalExtent"])
    blocks.extend(e for e in umm.get("TemporalExtents") or [] if isinstance(e, Mapping))  # UMM-C
    for block in blocks:
        ranges = block.get("RangeDateTimes") or []
        if isinstance(block.get("RangeDateTime"), Mapping):
            ranges = [block["RangeDateTime"], *ranges]
        for rng in ranges:
            begin = rng.get("BeginningDateTime")
            end = rng.get("EndingDateTime")
            out.append(
                (
                    parse_cmr_datetime(begin) if begin else None,
                    parse_cmr_datetime(end) if end else None,
                )
            )
        singles = block.get("SingleDateTimes") or []
        if block.get("SingleDateTime"):
            singles = [block["SingleDateTime"], *singles]
        for single in singles:
            dt = parse_cmr_datetime(single)
            out.append((dt, dt))
    return out


def _start(item: Mapping[str, Any]) -> datetime | None:
    begins = [b for b, _ in _extents(item) if b is not None]
    return min(begins) if begins else None


def _end(item: Mapping[str, Any]) -> datetime | None:
    ends = [e for _, e in _extents(item) if e is not None]
    return max(ends) if ends else None


def _concept_number(concept_id: str) -> int:
    digits = "".join(itertools.takewhile(str.isdigit, concept_id[1:]))
    return int(digits) if digits else 0


def _short_name_version(item: Mapping[str, Any]) -> tuple[str | None, str | None]:
    umm = item.get("umm", {})
    if _concept_type(item) == "granule":
        ref = umm.get("CollectionReference", {})
        return ref.get("ShortName"), ref.get("Version")
    return umm.get("ShortName"), umm.get("Version")


# -- loading & link rewriting -----------------------------------------------------------------
def recorded_files(pattern: str, directory: str | Path | None = None) -> list[Path]:
    """Sorted recorded response bodies matching ``pattern`` (``*.meta.json`` excluded)."""
    base = Path(directory) if directory is not None else DEFAULT_CMR_DIR
    return sorted(p for p in base.glob(pattern) if not p.name.endswith(".meta.json"))


def load_items(path: str | Path) -> list[Item]:
    """The ``items`` of a recorded ``*.umm_json`` response body."""
    with Path(path).open(encoding="utf-8") as fh:
        body = json.load(fh)
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise CatalogError(f"{path}: not a UMM-JSON search response (no 'items' list)")
    return list(body["items"])


def rewrite_links(
    item: Mapping[str, Any], mapping: Mapping[str, str], *, drop_unmapped: bool = False
) -> Item:
    """Deep copy of ``item`` with ``umm.RelatedUrls[*].URL`` rewritten by longest matching prefix.

    ``mapping`` maps URL prefixes to replacements, e.g.
    ``{"https://archive.podaac.earthdata.nasa.gov/": http.base_url + "/",
    "s3://podaac-ops-cumulus-protected/": "s3://test-bucket/"}``. With ``drop_unmapped`` every
    other ``http(s)://`` / ``s3://`` link is removed, so nothing in the item points off loopback.
    """
    out = copy.deepcopy(dict(item))
    urls = out.get("umm", {}).get("RelatedUrls")
    if not isinstance(urls, list):
        return out
    prefixes = sorted(mapping, key=len, reverse=True)
    kept: list[Any] = []
    for link in urls:
        url = link.get("URL", "") if isinstance(link, Mapping) else ""
        prefix = next((p for p in prefixes if url.startswith(p)), None)
        if prefix is not None:
            link["URL"] = mapping[prefix] + url[len(prefix) :]
        elif drop_unmapped and url.split(":", 1)[0].lower() in ("http", "https", "s3", "ftp"):
            continue
        kept.append(link)
    out["umm"]["RelatedUrls"] = kept
    return out


def granule_item(
    *,
    native_id: str,
    short_name: str,
    version: str,
    begin: str | datetime,
    end: str | datetime | None = None,
    provider: str = "POCLOUD",
    concept_id: str | None = None,
    collection_concept_id: str | None = None,
    https_url: str | None = None,
    s3_url: str | None = None,
    s3_credentials_url: str | None = None,
    size_in_bytes: int | None = None,
    md5: str | None = None,
    revision_date: str | datetime | None = None,
    revision_id: int = 1,
) -> Item:
    """A minimal but realistic UMM-G search item (same shape as the recorded PO.DAAC ones).

    ``concept_id`` / ``revision_date`` may be left out: :meth:`GranuleCatalog.add` fills them in.
    """
    meta: Item = {
        "concept-type": "granule",
        "revision-id": revision_id,
        "native-id": native_id,
        "provider-id": provider,
        "format": "application/vnd.nasa.cmr.umm+json",
    }
    if concept_id is not None:
        meta["concept-id"] = concept_id
    if collection_concept_id is not None:
        meta["collection-concept-id"] = collection_concept_id
    if revision_date is not None:
        meta["revision-date"] = format_cmr_datetime(revision_date)
    rng = {"BeginningDateTime": format_cmr_datetime(begin)}
    if end is not None:
        rng["EndingDateTime"] = format_cmr_datetime(end)
    name = Path(urlsplit(https_url or s3_url or native_id).path).name or native_id
    archive: Item = {"Name": name}
    if size_in_bytes is not None:
        archive["SizeInBytes"] = size_in_bytes
        archive["Size"] = size_in_bytes / (1024 * 1024)
        archive["SizeUnit"] = "MB"
    if md5 is not None:
        archive["Checksum"] = {"Value": md5, "Algorithm": "MD5"}
    related: list[Item] = []
    if https_url is not None:
        related.append({"URL": https_url, "Description": f"Download {name}", "Type": "GET DATA"})
    if s3_url is not None:
        related.append(
            {
                "URL": s3_url,
                "Description": "This link provides direct download access via S3 to the granule",
                "Type": "GET DATA VIA DIRECT ACCESS",
            }
        )
    if s3_credentials_url is not None:
        related.append(
            {
                "URL": s3_credentials_url,
                "Description": "api endpoint to retrieve temporary credentials valid for "
                "same-region direct s3 access",
                "Type": "VIEW RELATED INFORMATION",
            }
        )
    return {
        "meta": meta,
        "umm": {
            "TemporalExtent": {"RangeDateTime": rng},
            "MetadataSpecification": {
                "URL": f"https://cdn.earthdata.nasa.gov/umm/granule/v{UMM_G_VERSION}",
                "Name": "UMM-G",
                "Version": UMM_G_VERSION,
            },
            "GranuleUR": native_id,
            "DataGranule": {
                "ArchiveAndDistributionInformation": [archive],
                "DayNightFlag": "Unspecified",
            },
            "CollectionReference": {"ShortName": short_name, "Version": version},
            "RelatedUrls": related,
        },
    }


# -- the catalog ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchResult:
    hits: int
    items: list[Item]
    search_after: str | None  # CMR-Search-After of this page (None when the page is empty)


@dataclass
class _Entry:
    item: Item
    seq: int


_SortSpec = tuple[str, int]  # (field, +1 ascending / -1 descending)

_SORT_FIELDS = frozenset(
    {
        "start_date",
        "end_date",
        "revision_date",
        "granule_ur",
        "producer_granule_id",
        "readable_granule_name",
        "concept_id",
        "short_name",
        "version",
        "entry_title",
        "provider",
    }
)


def _sort_value(item: Mapping[str, Any], name: str) -> Any:
    meta, umm = item.get("meta", {}), item.get("umm", {})
    match name:
        case "start_date":
            return _ms(_start(item))
        case "end_date":
            return _ms(_end(item))
        case "revision_date":
            rev = meta.get("revision-date")
            return _ms(parse_cmr_datetime(rev)) if rev else None
        case "granule_ur" | "readable_granule_name":
            return (umm.get("GranuleUR") or "").lower()
        case "producer_granule_id":
            ids = umm.get("DataGranule", {}).get("Identifiers") or []
            pid = next(
                (
                    i.get("Identifier")
                    for i in ids
                    if i.get("IdentifierType") == "ProducerGranuleId"
                ),
                None,
            )
            return (pid or umm.get("GranuleUR") or "").lower()
        case "concept_id":
            return _concept_number(meta.get("concept-id", ""))
        case "short_name":
            return (_short_name_version(item)[0] or "").lower()
        case "version":
            return (_short_name_version(item)[1] or "").lower()
        case "entry_title":
            return (umm.get("EntryTitle") or "").lower()
        case "provider":
            return (meta.get("provider-id") or "").lower()
    raise CatalogError(f"The sort key [{name}] is not a valid sort key")


def _cmp(a: Any, b: Any) -> int:
    if a is None or b is None:
        return (a is not None) - (b is not None)  # None sorts first
    if type(a) is not type(b):
        raise CatalogError("Invalid CMR-Search-After header value: type mismatch")
    return int(a > b) - int(a < b)


def _cmp_keys(ka: Sequence[Any], kb: Sequence[Any], dirs: Sequence[int]) -> int:
    for x, y, d in zip(ka, kb, dirs, strict=True):
        c = _cmp(x, y) * d
        if c:
            return c
    return 0


class GranuleCatalog:
    """Thread-safe in-memory CMR: UMM-JSON granule and collection items, searchable like CMR.

    Items are stored as given (deep-copied); ``concept-id``, ``revision-id``, ``revision-date``,
    ``native-id`` and ``concept-type`` are filled in when missing.
    """

    def __init__(
        self,
        items: Iterable[Mapping[str, Any]] = (),
        *,
        link_rewrites: Mapping[str, str] | None = None,
        drop_unmapped_links: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}  # by concept-id
        self._seq = itertools.count()
        self._next_id = itertools.count(9_000_000_001)
        self.link_rewrites: dict[str, str] = dict(link_rewrites or {})
        self.drop_unmapped_links = drop_unmapped_links
        for item in items:
            self.add(item)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_recorded(
        cls, *patterns: str, directory: str | Path | None = None, **kwargs: Any
    ) -> GranuleCatalog:
        """Catalog of the items of recorded responses, e.g.
        ``GranuleCatalog.from_recorded("python_cmr/MOD02QKM_searchafter.*")``.

        An item recorded several times (same concept-id) is kept once, at its highest revision.
        """
        catalog = cls(**kwargs)
        paths = [p for pat in patterns for p in recorded_files(pat, directory)]
        if not paths:
            raise FileNotFoundError(f"no recorded CMR responses match {patterns!r}")
        for path in paths:
            catalog.load(path)
        return catalog

    def load(self, path: str | Path) -> int:
        """Add the items of one recorded response body; returns how many were new or newer."""
        added = 0
        with self._lock:
            for item in load_items(path):
                cid = item.get("meta", {}).get("concept-id")
                old = self._entries.get(cid) if cid else None
                if old is not None:
                    if item["meta"].get("revision-id", 0) > old.item["meta"].get("revision-id", 0):
                        old.item = copy.deepcopy(item)
                        added += 1
                    continue
                self.add(item)
                added += 1
        return added

    # -- editing -------------------------------------------------------------------------------
    def add(self, item: Mapping[str, Any]) -> Item:
        """Add a new item (deep-copied); returns the stored copy. Duplicate concept-id -> error."""
        stored = copy.deepcopy(dict(item))
        meta = stored.setdefault("meta", {})
        umm = stored.setdefault("umm", {})
        ctype = _concept_type(stored)
        meta["concept-type"] = ctype
        provider = meta.setdefault("provider-id", "PROVIDER")
        meta.setdefault(
            "native-id", umm.get("GranuleUR") or umm.get("ShortName") or str(uuid.uuid4())
        )
        meta.setdefault("revision-id", 1)
        meta.setdefault("revision-date", format_cmr_datetime(datetime.now(UTC)))
        with self._lock:
            if "concept-id" not in meta:
                prefix = "G" if ctype == "granule" else "C"
                meta["concept-id"] = f"{prefix}{next(self._next_id)}-{provider}"
            if meta["concept-id"] in self._entries:
                raise CatalogError(f"concept-id {meta['concept-id']} already in the catalog")
            self._entries[meta["concept-id"]] = _Entry(stored, next(self._seq))
        return copy.deepcopy(stored)

    def _find(self, native_id: str, provider: str | None) -> _Entry:
        found = [
            e
            for e in self._entries.values()
            if e.item["meta"].get("native-id") == native_id
            and (provider is None or e.item["meta"].get("provider-id") == provider)
        ]
        if not found:
            raise KeyError(native_id)
        if len(found) > 1:
            raise CatalogError(f"native-id {native_id!r} is ambiguous; pass provider=")
        return found[0]

    def revise(
        self,
        native_id: str,
        revision_date: str | datetime | None = None,
        *,
        umm: Mapping[str, Any] | None = None,
        provider: str | None = None,
    ) -> Item:
        """Publish a new revision: revision-id + 1, revision-date = given or now (UTC).

        ``umm`` replaces top-level UMM fields (e.g. a new ``DataGranule`` with another checksum).
        Returns a copy of the revised item.
        """
        with self._lock:
            entry = self._find(native_id, provider)
            meta = entry.item["meta"]
            meta["revision-id"] = int(meta.get("revision-id", 1)) + 1
            meta["revision-date"] = format_cmr_datetime(revision_date or datetime.now(UTC))
            if umm:
                entry.item["umm"].update(copy.deepcopy(dict(umm)))
            return copy.deepcopy(entry.item)

    def delete(self, native_id: str, *, provider: str | None = None) -> None:
        """Remove an item (CMR does not return deleted granules in searches)."""
        with self._lock:
            entry = self._find(native_id, provider)
            del self._entries[entry.item["meta"]["concept-id"]]

    def get(self, native_id: str, *, provider: str | None = None) -> Item:
        with self._lock:
            return copy.deepcopy(self._find(native_id, provider).item)

    def items(self, concept_type: str = "granule") -> list[Item]:
        """All items of a type, in CMR's default order (deep copies, links not rewritten)."""
        with self._lock:
            entries = self._sorted(concept_type, self._default_sort(concept_type))
            return [copy.deepcopy(e.item) for e in entries]

    def native_ids(self, concept_type: str = "granule") -> list[str]:
        with self._lock:
            entries = self._sorted(concept_type, self._default_sort(concept_type))
            return [e.item["meta"]["native-id"] for e in entries]

    def __len__(self) -> int:
        with self._lock:
            return sum(_concept_type(e.item) == "granule" for e in self._entries.values())

    # -- searching -----------------------------------------------------------------------------
    @staticmethod
    def _default_sort(concept_type: str) -> list[_SortSpec]:
        if concept_type == "granule":
            return [("provider", 1), ("start_date", 1), ("concept_id", 1)]
        return [("short_name", 1), ("version", 1), ("concept_id", 1)]

    def _sorted(self, concept_type: str, spec: Sequence[_SortSpec]) -> list[_Entry]:
        entries = [e for e in self._entries.values() if _concept_type(e.item) == concept_type]
        dirs = [d for _, d in spec]
        keyed: list[tuple[list[Any], _Entry]] = [
            ([_sort_value(e.item, f) for f, _ in spec], e) for e in entries
        ]

        def compare(a: tuple[list[Any], _Entry], b: tuple[list[Any], _Entry]) -> int:
            return _cmp_keys(a[0], b[0], dirs)

        keyed.sort(key=functools.cmp_to_key(compare))
        return [e for _, e in keyed]

    def _collection_ids_for(self, item: Mapping[str, Any]) -> set[str]:
        ids = (
            {item["meta"]["collection-concept-id"]}
            if item["meta"].get("collection-concept-id")
            else set()
        )
        ref = item.get("umm", {}).get("CollectionReference", {})
        for e in self._entries.values():
            if _concept_type(e.item) != "collection":
                continue
            umm = e.item.get("umm", {})
            if (
                ref.get("ShortName")
                and ref.get("ShortName") == umm.get("ShortName")
                and ref.get("Version") == umm.get("Version")
            ) or (ref.get("EntryTitle") and ref.get("EntryTitle") == umm.get("EntryTitle")):
                ids.add(e.item["meta"]["concept-id"])
        return ids

    def search(
        self,
        concept_type: str,
        params: Mapping[str, Sequence[str]],
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_num: int = 1,
        search_after: str | None = None,
        rewrite: bool = True,
    ) -> SearchResult:
        """Run a CMR query. ``params`` maps names (without ``[]``) to lists of raw values;
        ``options[...]`` keys are given as ``"options[temporal][exclude_boundary]"``."""
        if concept_type not in ("granule", "collection"):
            raise CatalogError(f"unsupported concept type {concept_type!r}")
        if page_size < 0:
            raise CatalogError("page_size must be a number between 0 and 2000")
        if page_num < 1:
            raise CatalogError("page_num must be a number greater than or equal to 1")
        if search_after is not None and page_num > 1:
            raise CatalogError("page_num is not allowed with search-after")
        predicates, sort_spec = self._compile(concept_type, params)
        dirs = [d for _, d in sort_spec]
        with self._lock:
            matches = [
                e
                for e in self._sorted(concept_type, sort_spec)
                if all(p(e.item) for p in predicates)
            ]
            hits = len(matches)
            if search_after is not None:
                try:
                    token = json.loads(search_after)
                except ValueError:
                    raise CatalogError(
                        f"Invalid CMR-Search-After header value: {search_after}"
                    ) from None
                if not isinstance(token, list) or len(token) != len(sort_spec):
                    raise CatalogError(f"Invalid CMR-Search-After header value: {search_after}")
                matches = [
                    e
                    for e in matches
                    if _cmp_keys([_sort_value(e.item, f) for f, _ in sort_spec], token, dirs) > 0
                ]
            else:
                matches = matches[(page_num - 1) * page_size :]
            page = matches[:page_size]
            token_out = (
                json.dumps(
                    [_sort_value(page[-1].item, f) for f, _ in sort_spec], separators=(",", ":")
                )
                if page
                else None
            )
            if rewrite and (self.link_rewrites or self.drop_unmapped_links):
                items = [
                    rewrite_links(
                        e.item, self.link_rewrites, drop_unmapped=self.drop_unmapped_links
                    )
                    for e in page
                ]
            else:
                items = [copy.deepcopy(e.item) for e in page]
        return SearchResult(hits, items, token_out)

    def _compile(
        self, concept_type: str, params: Mapping[str, Sequence[str]]
    ) -> tuple[list[Any], list[_SortSpec]]:
        preds: list[Any] = []
        sort_spec: list[_SortSpec] = []
        options: dict[str, dict[str, str]] = {}
        for key, values in params.items():
            if key.startswith("options["):
                parts = key[len("options[") :].rstrip("]").split("][")
                if len(parts) != 2:
                    raise CatalogError(f"Parameter [{key}] was not recognized.")
                options.setdefault(parts[0], {})[parts[1]] = values[-1].lower()

        def opt(name: str, flag: str) -> bool:
            return options.get(name, {}).get(flag) == "true"

        for key, raw_values in params.items():
            values = [v for v in raw_values if v != ""]
            if key.startswith("options[") or key in _IGNORED_PARAMS:
                continue
            if key == "sort_key":
                for v in values:
                    v = v.strip()  # an unescaped "+" arrives as a space
                    desc = v.startswith("-")
                    name = v.lstrip("+-")
                    if name not in _SORT_FIELDS:
                        raise CatalogError(f"The sort key [{name}] is not a valid sort key")
                    sort_spec.append((name, -1 if desc else 1))
                continue
            if not values:
                continue
            match key:
                case "short_name":
                    pattern, ignore_case = (
                        opt("short_name", "pattern"),
                        not (options.get("short_name", {}).get("ignore_case") == "false"),
                    )
                    preds.append(
                        _text_pred(
                            lambda i: _short_name_version(i)[0], values, pattern, ignore_case
                        )
                    )
                case "version":
                    preds.append(
                        _text_pred(
                            lambda i: _short_name_version(i)[1],
                            values,
                            opt("version", "pattern"),
                            True,
                        )
                    )
                case "provider" | "provider_short_name" | "provider_id":
                    preds.append(
                        _text_pred(lambda i: i["meta"].get("provider-id"), values, False, True)
                    )
                case "entry_title" | "dataset_id":
                    preds.append(
                        _text_pred(
                            lambda i: i.get("umm", {}).get("EntryTitle"),
                            values,
                            opt(key, "pattern"),
                            True,
                        )
                    )
                case "native_id":
                    preds.append(
                        _text_pred(
                            lambda i: i["meta"].get("native-id"), values, opt(key, "pattern"), False
                        )
                    )
                case "granule_ur" | "readable_granule_name" | "producer_granule_id":
                    if concept_type != "granule":
                        raise CatalogError(f"Parameter [{key}] was not recognized.")
                    preds.append(
                        _text_pred(
                            lambda i: i.get("umm", {}).get("GranuleUR"),
                            values,
                            opt(key, "pattern"),
                            False,
                        )
                    )
                case (
                    "concept_id"
                    | "echo_granule_id"
                    | "collection_concept_id"
                    | "echo_collection_id"
                ):
                    preds.append(self._concept_pred(concept_type, key, values))
                case "temporal":
                    preds.append(
                        _range_pred(
                            values,
                            _extents,
                            opt("temporal", "exclude_boundary"),
                            opt("temporal", "and"),
                        )
                    )
                case "revision_date" | "updated_since":
                    if key == "updated_since":
                        values = [f"{values[-1]},"]
                    preds.append(
                        _range_pred(
                            values,
                            _revision_extent,
                            opt("revision_date", "exclude_boundary"),
                            opt("revision_date", "and"),
                        )
                    )
                case _:
                    raise CatalogError(f"Parameter [{key}] was not recognized.")
        if not sort_spec:
            sort_spec = self._default_sort(concept_type)
        elif sort_spec[-1][0] != "concept_id":
            sort_spec.append(("concept_id", 1))  # total order, as CMR's own tie-breaker
        return preds, sort_spec

    def _concept_pred(self, concept_type: str, key: str, values: Sequence[str]) -> Any:
        """Granule searches: ``C...`` ids and collection_concept_id select by parent collection."""
        wanted = set(values)
        if concept_type == "collection":
            direct, coll = wanted, set()
        elif key in ("collection_concept_id", "echo_collection_id"):
            direct, coll = set(), wanted
        else:
            coll = {v for v in wanted if v.upper().startswith("C")}
            direct = wanted - coll

        def pred(item: Mapping[str, Any]) -> bool:
            if item["meta"].get("concept-id") in direct:
                return True
            return bool(coll) and bool(coll & self._collection_ids_for(item))

        return pred


def _text_pred(get: Any, values: Sequence[str], pattern: bool, ignore_case: bool) -> Any:
    wanted = [v.lower() if ignore_case else v for v in values]

    def pred(item: Mapping[str, Any]) -> bool:
        value = get(item)
        if value is None:
            return False
        value = value.lower() if ignore_case else value
        if pattern:
            return any(fnmatch.fnmatchcase(value, w) for w in wanted)
        return value in wanted

    return pred


def _revision_extent(item: Mapping[str, Any]) -> list[tuple[datetime | None, datetime | None]]:
    rev = item.get("meta", {}).get("revision-date")
    if not rev:
        return []
    dt = parse_cmr_datetime(rev)
    return [(dt, dt)]


def _parse_range(value: str) -> tuple[datetime | None, datetime | None]:
    parts = value.split(",")
    if len(parts) < 2 or len(parts) > 4:
        raise CatalogError(f"[{value}] is not a valid date range (expected start,end)")
    start = parse_cmr_datetime(parts[0]) if parts[0].strip() else None
    end = parse_cmr_datetime(parts[1]) if parts[1].strip() else None
    if start is not None and end is not None and start > end:
        raise CatalogError(f"start [{parts[0]}] must be before end [{parts[1]}]")
    return start, end


def _range_pred(values: Sequence[str], extents: Any, exclusive: bool, conjunctive: bool) -> Any:
    ranges = [_parse_range(v) for v in values]

    def overlaps(
        ext: tuple[datetime | None, datetime | None], rng: tuple[datetime | None, datetime | None]
    ) -> bool:
        begin, end = ext
        lo, hi = rng
        if exclusive:
            return (hi is None or begin is None or begin < hi) and (
                lo is None or end is None or end > lo
            )
        return (hi is None or begin is None or begin <= hi) and (
            lo is None or end is None or end >= lo
        )

    def pred(item: Mapping[str, Any]) -> bool:
        exts = extents(item)
        if not exts:
            return False
        hit = [any(overlaps(ext, rng) for ext in exts) for rng in ranges]
        return all(hit) if conjunctive else any(hit)

    return pred


# -- the HTTP server --------------------------------------------------------------------------
@dataclass(frozen=True)
class CmrRequest:
    method: str
    path: str
    params: dict[str, list[str]]  # keys without "[]"
    search_after: str | None
    status: int


class _CmrHandler(QuietHandler):
    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length) if length else b"")

    def _handle(self, body: bytes) -> None:
        srv: CmrReplayServer = self.owner
        started = time.monotonic()
        split = urlsplit(self.path)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        ctype = self.headers.get("Content-Type", "")
        if body and "json" not in ctype:
            pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        params: dict[str, list[str]] = {}
        for key, value in pairs:
            params.setdefault(key.removesuffix("[]"), []).append(value)
        search_after = self.headers.get("CMR-Search-After")

        def log(status: int) -> None:
            srv._log(CmrRequest(self.command, split.path, params, search_after, status))

        # The log is written before the response goes out, so a client never outruns it.
        if self.apply_faults(before_send=log) is not None:
            return

        route = split.path.removeprefix(srv.path_prefix)
        name, _, fmt = route.partition(".")
        concept = {"granules": "granule", "collections": "collection"}.get(name)
        if concept is None or not (fmt == "umm_json" or fmt.startswith("umm_json_v")):
            status = 404 if concept is None else 400
            msg = f"The mime type [{fmt}] is not supported by the replay server (use umm_json)"
            log(status)
            self._errors(status, [msg if concept else f"no route for {split.path}"])
            return
        try:
            query = dict(params)
            size = _int_param(query.pop("page_size", None), DEFAULT_PAGE_SIZE, "page_size")
            num = _int_param(query.pop("page_num", None), 1, "page_num")
            if size > MAX_PAGE_SIZE:
                raise CatalogError("page_size must be a number between 0 and 2000")
            result = srv.catalog.search(
                concept, query, page_size=size, page_num=num, search_after=search_after
            )
        except CatalogError as exc:
            log(400)
            self._errors(400, [str(exc)])
            return
        hits = result.hits if srv.hits_override is None else srv.hits_override
        took = int((time.monotonic() - started) * 1000)
        payload = json.dumps({"hits": hits, "took": took, "items": result.items}).encode()
        headers = {
            "CMR-Hits": str(hits),
            "CMR-Took": str(took),
            "CMR-Request-Id": str(uuid.uuid4()),
        }
        if result.search_after is not None:
            headers["CMR-Search-After"] = result.search_after
        content_type = _GRANULE_CONTENT_TYPE if concept == "granule" else _COLLECTION_CONTENT_TYPE
        log(200)
        self.send_body(200, payload, content_type, headers)

    def _errors(self, status: int, errors: list[str]) -> None:
        body = json.dumps({"errors": errors}).encode()
        self.send_body(status, body, "application/json; charset=utf-8")


def _int_param(values: list[str] | None, default: int, name: str) -> int:
    if not values:
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise CatalogError(f"{name} must be a number") from None


class CmrReplayServer(LoopbackHTTPServer):
    """Loopback CMR search API over a :class:`GranuleCatalog` (see the module docstring).

    >>> catalog = GranuleCatalog.from_recorded("python_cmr/MOD02QKM_searchafter.*")
    >>> with CmrReplayServer(catalog) as cmr:
    ...     query = earthaccess.DataGranules().mode(cmr.search_url).short_name("MOD02QKM")
    ...     granules = query.get_all()
    """

    handler_class = _CmrHandler
    path_prefix = "/search/"

    def __init__(
        self,
        catalog: GranuleCatalog | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        request_timeout: float = 30.0,
        hits_override: int | None = None,
    ) -> None:
        super().__init__(host=host, port=port, request_timeout=request_timeout)
        self.catalog = catalog if catalog is not None else GranuleCatalog()
        self.hits_override = hits_override
        self._log_lock = threading.Lock()
        self._requests: list[CmrRequest] = []

    @property
    def search_url(self) -> str:
        """``http://127.0.0.1:<port>/search/``: what python-cmr / earthaccess ``.mode()`` takes."""
        return f"{self.base_url}{self.path_prefix}"

    def _log(self, request: CmrRequest) -> None:
        with self._log_lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[CmrRequest]:
        with self._log_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._log_lock:
            self._requests.clear()
