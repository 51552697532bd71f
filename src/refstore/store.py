"""The Icechunk repository: create, append + commit, history, and time travel.

Choices fixed when the repository is created, for a store that grows for decades:

- the loaded concat coordinate gets a large chunk (about a year of steps) instead of
  the files' tiny or huge chunk, so opening 10k granules reads a handful of chunks;
- manifests are split along the concat dim, so an append rewrites only the newest
  split, not every reference ever written;
- the virtual chunk container for the source is saved in the repo config; access to
  it is granted every time the repository is opened (and never saved).

Each refstore commit carries JSON metadata (granule keys and revisions, the batch's
range, the store's range and its drift signature): the history is the source of truth
that the ledger is reconciled against.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refstore.errors import ConflictError, NotFoundError, StoreError, TagExistsError
from refstore.models import CommitInfo
from refstore.sources.base import ContainerSpec
from refstore.storage import S3Options

if TYPE_CHECKING:
    from refstore.coords import CoordEncoding
    from refstore.mirror import Mirror

__all__ = ["Store", "parse_when"]

BRANCH = "main"
METADATA_KEY = "refstore"
_SNAPSHOT_ID = re.compile(r"^[0-9A-Z]{20}$")


def parse_when(ref: str) -> datetime | None:
    """An ISO date or datetime as an aware UTC datetime, or None if ``ref`` is not one.

    A bare date means the end of that day (UTC): "as it was on 2024-10-12".
    """
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", ref):
            day = datetime.fromisoformat(ref).date()
            return datetime.combine(day, time.max, tzinfo=UTC)
        when = datetime.fromisoformat(ref.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Head:
    """What the newest refstore commit says about the store."""

    snapshot: str
    signature: dict[str, dict[str, Any]]
    last: Any  # last concat value (JSON form: ISO text or number)
    first: Any
    length: int
    attrs_dropped: tuple[str, ...] = ()
    layout: str = "regular"  # chunk grid along the concat dim (refstore.chunkgrid)


class Store:
    """One Icechunk repository holding the virtual dataset.

    Parameters
    ----------
    url
        A local folder or ``s3://bucket/prefix``.
    containers
        Virtual chunk containers to authorize with the source's credentials (its
        allowed hosts); every other container saved in the repository is authorized
        too, without headers, so committed granules stay readable.
    source
        The granule source, asked for container credentials when opening.
    options
        S3 options of the repository's bucket (``[store] region``, ``endpoint_url``...).
    known
        A current :class:`~refstore.mirror.Mirror` of the repository: ``exists``,
        ``head_snapshot``, ``head``, ``log`` and ``recorded_prefixes`` answer from it
        (no Icechunk import) until the repository is opened for anything else.
    """

    def __init__(
        self,
        url: str,
        containers: tuple[ContainerSpec, ...] = (),
        source: Any = None,
        *,
        options: S3Options | None = None,
        known: Mirror | None = None,
    ) -> None:
        self.url = url
        self.containers = containers
        self.source = source  # may grant container credentials (never stored)
        self.options = options
        self._repo: Any = None
        self._known = known

    @property
    def known(self) -> Mirror | None:
        """The mirror this store answers from, while Icechunk has not been asked: once
        the repository is opened (to write, or after a lost commit race), Icechunk answers."""
        return self._known if self._repo is None else None

    # -- opening --------------------------------------------------------------------
    def _storage(self) -> Any:
        from refstore.storage import repo_storage

        return repo_storage(self.url, self.options)

    def _open_config(self) -> Any:
        """Retry settings and container secrets (HTTP headers), for opening; never saved."""
        from refstore.storage import container_open_config

        return container_open_config(self.containers, self.source)

    @property
    def native_chunks_prefix(self) -> str:
        """URL prefix of the repository's own (non-virtual) chunks, for the export."""
        if "://" in self.url and not self.url.startswith("file://"):
            return self.url.rstrip("/") + "/chunks"
        return Path(self.url.removeprefix("file://")).resolve().as_uri() + "/chunks"

    def exists(self) -> bool:
        """Whether a repository is already there."""
        if self._repo is not None or self.known is not None:  # no request
            return True
        import icechunk

        return bool(icechunk.Repository.exists(self._storage()))

    def _authorizations(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        """Access to the source's containers and to every container the repository
        recorded, so committed granules stay readable whatever the source lists next
        (recorded containers the source does not name get no header)."""
        from refstore.storage import container_credentials, spec_for_prefix

        auth: dict[str, Any] = {
            c.url_prefix: container_credentials(c, self.source) for c in self.containers
        }
        for prefix in saved or {}:
            if prefix not in auth:
                spec = spec_for_prefix(prefix)
                source = self.source if spec.kind == "s3" else None
                auth[prefix] = container_credentials(spec, source)
        return auth

    def recorded_prefixes(self) -> tuple[str, ...]:
        """URL prefixes of the virtual chunk containers saved in the repository (none
        without a repository). Reads the saved config only; grants nothing."""
        if self.known is not None:
            return self.known.prefixes
        import icechunk

        storage = self._storage()
        if not icechunk.Repository.exists(storage):
            return ()
        saved = icechunk.Repository.fetch_config(storage)
        return tuple(sorted((saved.virtual_chunk_containers or {}) if saved else {}))

    def record_containers(self, specs: tuple[ContainerSpec, ...]) -> None:
        """Save ``specs`` as virtual chunk containers of the existing repository.

        The saved config holds no secret: it is written from a handle opened without
        the in-memory headers of :meth:`_open_config`.

        Raises
        ------
        StoreError
            The config could not be saved.
        """
        import icechunk

        from refstore.storage import container_store_config

        if not specs:
            return
        storage = self._storage()
        config = icechunk.Repository.fetch_config(storage) or icechunk.RepositoryConfig.default()
        for c in specs:
            config.set_virtual_chunk_container(
                icechunk.VirtualChunkContainer(c.url_prefix, container_store_config(c))
            )
        try:
            icechunk.Repository.open(storage, config=config).save_config()
        except icechunk.IcechunkError as e:
            raise StoreError(f"Cannot record containers in {self.url}: {e}") from e
        self._repo = None  # reopened with the new containers on next use
        self._known = None  # the mirror predates them

    @property
    def repo(self) -> Any:
        """The open ``icechunk.Repository``.

        Raises
        ------
        NotFoundError
            No repository exists yet at ``url``.
        """
        if self._repo is None:
            import icechunk

            from refstore.rectilinear import enable

            enable()  # a rectilinear store is unreadable without zarr's switch

            storage = self._storage()
            if not icechunk.Repository.exists(storage):
                raise NotFoundError(
                    f"No Icechunk repository at {self.url}.",
                    "Run `refstore sync` first to create it, or check [store] repo.",
                )
            saved = icechunk.Repository.fetch_config(storage)
            saved_containers = saved.virtual_chunk_containers if saved else None
            try:
                self._repo = icechunk.Repository.open(
                    storage,
                    config=self._open_config(),
                    authorize_virtual_chunk_access=self._authorizations(saved_containers),
                )
            except icechunk.IcechunkError as e:
                raise StoreError(f"Cannot open the repository {self.url}: {e}") from e
        return self._repo

    def create(self, concat_dim: str, coord_chunk: int) -> None:
        """Create the repository with its container and manifest splitting.

        A repository left empty by a crash before its first commit is reused.
        """
        import icechunk

        from refstore import details
        from refstore.storage import MANIFEST_SPLIT_MAX, container_store_config

        if self.exists():
            _ = self.repo
            return

        config = icechunk.RepositoryConfig.default()
        for c in self.containers:
            config.set_virtual_chunk_container(
                icechunk.VirtualChunkContainer(c.url_prefix, container_store_config(c))
            )
        split = icechunk.ManifestSplittingConfig.from_dict(
            {
                icechunk.ManifestSplitCondition.AnyArray(): {
                    icechunk.ManifestSplitDimCondition.DimensionName(
                        f"^{re.escape(concat_dim)}$"
                    ): min(coord_chunk, MANIFEST_SPLIT_MAX),
                    # refstore.details: one element a commit
                    icechunk.ManifestSplitDimCondition.DimensionName(
                        f"^{re.escape(details.DIM)}$"
                    ): details.SPLIT,
                }
            }
        )
        config.manifest = icechunk.ManifestConfig(splitting=split)
        try:
            self._repo = icechunk.Repository.create(
                self._storage(),
                config=config,
                authorize_virtual_chunk_access=self._authorizations(None),
            )
            # Saved above without secrets; retries and headers are added in memory.
            self._repo = self._repo.reopen(config=self._open_config())
        except icechunk.IcechunkError as e:
            if self.exists():  # another writer created it first: use theirs
                self._repo = None
                _ = self.repo
                return
            raise StoreError(
                f"Cannot create the repository at {self.url}: {e}",
                "Point [store] repo at an empty folder you can write to.",
            ) from e

    # -- history ----------------------------------------------------------------------
    def head_snapshot(self) -> str:
        """Snapshot id at the tip of ``main``."""
        if self.known is not None:
            return self.known.tip
        return str(self.repo.lookup_branch(BRANCH))

    def _ancestry(self, snapshot: str | None = None) -> Iterator[Any]:
        if snapshot is None:
            return iter(self.repo.ancestry(branch=BRANCH))
        return iter(self.repo.ancestry(snapshot_id=snapshot))

    def commits(self, *, stop_at: str | None = None, at: str | None = None) -> list[CommitInfo]:
        """refstore commits on ``main`` (or up to snapshot ``at``), oldest first, newer
        than ``stop_at`` if given.

        Walking stops at ``stop_at``, so reconciling costs what was committed since.
        """
        from refstore.batch import commit_info

        found: list[tuple[Any, dict[str, Any]]] = []
        tip: str | None = None
        for info in self._ancestry(at):
            tip = tip or str(info.id)
            if stop_at is not None and info.id == stop_at:
                break
            meta = (info.metadata or {}).get(METADATA_KEY)
            if meta:
                found.append((info, meta))
        metas = self.whole_metadata(tip or "", [(str(i.id), m) for i, m in found])
        return [
            commit_info(info.id, info.message, info.written_at.isoformat(), meta)
            for (info, _), meta in zip(reversed(found), reversed(metas), strict=True)
        ]

    def whole_metadata(
        self, snapshot: str, metas: Sequence[tuple[str, dict[str, Any]]], *, strict: bool = True
    ) -> list[dict[str, Any]]:
        """``metas`` (``(snapshot id, refstore commit metadata)`` of snapshots in the
        ancestry of ``snapshot``) with each one's per-granule lists merged back from its detail
        element (:mod:`refstore.details`); one written before details is whole already.

        Raises
        ------
        StoreError
            With ``strict``, a detail ``snapshot`` does not hold (else that metadata is
            returned as it is).
        """
        from refstore.batch import merge_metadata

        def detail(meta: dict[str, Any]) -> int | None:
            at = meta.get("detail_at")
            return at if "granules" not in meta and isinstance(at, int) else None

        wanted = [at for _, m in metas if (at := detail(m)) is not None]
        loaded = self.details_at(snapshot, wanted) if wanted else {}
        out = []
        for snap, meta in metas:
            at = detail(meta)
            if at is not None and at not in loaded and strict:
                raise StoreError(
                    f"Snapshot {snap} names its granules' detail #{at}, which {self.url} "
                    "does not hold: the repository was changed by something else than refstore.",
                    "Rebuild the ledger from a copy of the repository taken before that, or "
                    "re-sync into a new repository.",
                )
            out.append(merge_metadata(meta, loaded.get(at)) if at is not None else meta)
        return out

    def details_at(self, snapshot: str, indices: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Detail elements ``indices`` as held at ``snapshot`` (:mod:`refstore.details`)."""
        from refstore import details

        return details.read(self.repo.readonly_session(snapshot_id=snapshot).store, indices)

    def with_details(self, commits: Sequence[CommitInfo], at: str) -> list[CommitInfo]:
        """``commits`` (on ``main``'s ancestry up to snapshot ``at``) with their granule
        keys loaded where only their count was (a mirror's or ``log``'s entries)."""
        from dataclasses import replace

        wanted = [c.detail_at for c in commits if c.detail_at is not None and not c.granules]
        loaded = self.details_at(at, wanted) if wanted else {}
        out = []
        for c in commits:
            if c.granules or not c.count:
                out.append(c)
            elif c.detail_at is not None:
                keys = loaded.get(c.detail_at, {}).get("granules", ())
                out.append(replace(c, granules=tuple(keys)))
            else:  # written before details: the keys are in its metadata
                full = _commit_info(self.repo.lookup_snapshot(c.snapshot))
                out.append(replace(c, granules=full.granules) if full else c)
        return out

    def log(self, limit: int | None = None) -> list[tuple[CommitInfo, list[str]]]:
        """Every snapshot on ``main`` (newest first) with the tags that point at it."""
        if self.known is not None:
            return self.known.entries(limit)
        tags = self.tags_by_snapshot()
        out = []
        for i, info in enumerate(self._ancestry()):
            if limit is not None and i >= limit:
                break
            out.append((_log_entry(info), tags.get(info.id, [])))
        return out

    def log_since(self, known_tip: str) -> list[CommitInfo] | None:
        """The snapshots on ``main`` after ``known_tip`` (newest first, without tags), or
        None when ``known_tip`` is not in ``main``'s ancestry (history was reset)."""
        found: list[CommitInfo] = []
        for info in self._ancestry():
            if info.id == known_tip:
                return found
            found.append(_log_entry(info))
        return None

    def tags_by_snapshot(self) -> dict[str, list[str]]:
        """Every tag, by the snapshot it points at (names sorted)."""
        tags: dict[str, list[str]] = {}
        for tag in sorted(self.repo.list_tags()):
            tags.setdefault(str(self.repo.lookup_tag(tag)), []).append(tag)
        return tags

    def head(self, at: str | None = None) -> Head | None:
        """The newest refstore commit's view of the store (on ``main``, or in the
        ancestry of snapshot ``at``), or None for an empty store."""
        if self.known is not None and at in (None, self.known.tip):
            return self.known.head
        for info in self._ancestry(at):
            meta = (info.metadata or {}).get(METADATA_KEY)
            if meta:
                return Head(
                    snapshot=info.id,
                    signature=meta.get("signature", {}),
                    last=meta.get("store_last"),
                    first=meta.get("store_first"),
                    length=int(meta.get("store_length", 0)),
                    attrs_dropped=tuple(meta.get("attrs_dropped", ())),
                    layout=str(meta.get("concat_chunks", "regular")),
                )
        return None

    def resolve(self, ref: str | None) -> str:
        """A snapshot id from a snapshot id, tag, branch or ISO date/datetime.

        Raises
        ------
        NotFoundError
            Nothing matches, or the date is before the first snapshot.
        """
        import icechunk

        if ref is None or ref == BRANCH:
            return self.head_snapshot()
        if ref in self.repo.list_tags():
            return str(self.repo.lookup_tag(ref))
        if _SNAPSHOT_ID.match(ref):
            try:
                return str(self.repo.lookup_snapshot(ref).id)
            except icechunk.IcechunkError:
                pass
        when = parse_when(ref)
        if when is not None:
            for info in self._ancestry():
                if info.written_at <= when:
                    return str(info.id)
            raise NotFoundError(
                f"The store did not exist yet at {when.isoformat()}.",
                "Pick a later date; `refstore log` lists when each snapshot was written.",
            )
        raise NotFoundError(
            f"No snapshot, tag or date matches {ref!r}.",
            "Use a snapshot id or tag from `refstore log`, or an ISO date like 2024-10-12.",
        )

    def tag(self, name: str, snapshot: str) -> None:
        """Tag ``snapshot`` as ``name``.

        Raises
        ------
        TagExistsError
            The tag exists already (or cannot be created under that name).
        """
        import icechunk

        if name in self.repo.list_tags():
            held = self.repo.lookup_tag(name)
            raise TagExistsError(f"Tag {name!r} exists already (on snapshot {held}).")
        try:
            self.repo.create_tag(name, snapshot_id=snapshot)
        except icechunk.IcechunkError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TagExistsError(f"Cannot create tag {name!r}: {first}") from e

    # -- reading ----------------------------------------------------------------------
    def session(self, at: str | None = None) -> Any:
        """A read-only session at ``at`` (see :meth:`resolve`)."""
        return self.repo.readonly_session(snapshot_id=self.resolve(at))

    def open_dataset(self, at: str | None = None, **kwargs: Any) -> Any:
        """The lazy ``xr.Dataset`` as it was at ``at``, CF-decoded with the dtypes a
        netCDF reader gives (:func:`refstore.cf.open_decoded`). ``group=`` opens a group
        of a whole-hierarchy store (its parents' coordinates are not added here)."""
        import xarray as xr

        from refstore.cf import open_decoded

        session = kwargs.pop("session", None) or self.session(at)
        kwargs.setdefault("chunks", {})
        if not kwargs.get("group"):
            kwargs.pop("group", None)
        return open_decoded(
            xr.open_zarr, store=session.store, consolidated=False, zarr_format=3, **kwargs
        )

    def groups(self, at: str | None = None) -> list[str]:
        """The groups below the root at ``at`` (a whole-hierarchy store; else none)."""
        from refstore.hierarchy import stored_groups

        return stored_groups(self.session(at).store)

    def coord_encoding(self, snapshot: str, name: str) -> CoordEncoding | None:
        """How the loaded variable ``name`` is stored at ``snapshot`` (None if absent)."""
        import zarr

        from refstore.coords import CoordEncoding

        session = self.repo.readonly_session(snapshot_id=snapshot)
        group = zarr.open_group(session.store, mode="r", zarr_format=3)
        if name not in group:
            return None
        node = group[name]
        if not isinstance(node, zarr.Array):
            return None
        return CoordEncoding.of(node.dtype, dict(node.attrs))

    def root_attrs(self, snapshot: str) -> dict[str, Any]:
        """The dataset (root group) attributes at ``snapshot``."""
        import zarr

        session = self.repo.readonly_session(snapshot_id=snapshot)
        return dict(zarr.open_group(session.store, mode="r", zarr_format=3).attrs)

    # -- writing ----------------------------------------------------------------------
    def write(
        self,
        ds: Any,
        *,
        concat_dim: str,
        mode: str,
        message: str,
        metadata: dict[str, Any],
        parent: str | None,
        region_start: int = 0,
        new_length: int = 0,
        granules: Sequence[Any] = (),
        registry: Any = None,
    ) -> str:
        """Write ``ds`` and commit once, on top of ``parent``; returns the new snapshot id.

        ``parent`` is the tip of ``main`` that the caller planned against (its ledger
        reconciled up to it), None for the first commit of a new repository. If
        ``main`` has moved since, nothing is written: another writer committed, and
        what it placed must be known before this batch is placed (optimistic
        concurrency, see README "Many writers").

        ``mode`` is ``"create"`` (first write), ``"append"`` (along ``concat_dim``) or
        ``"rewrite"``: resize every array with ``concat_dim`` to ``new_length`` and write
        ``ds`` over ``[region_start, new_length)`` — how late and revised granules are
        put in place (only the references from ``region_start`` on are rewritten).

        With ``granules`` (the granules' virtual datasets, in order) the store is
        rectilinear along ``concat_dim``: ``ds`` holds the loaded variables only and the
        virtual ones are written granule by granule (:mod:`refstore.rectilinear`);
        ``registry`` reads their partial boundary chunks.

        Raises
        ------
        ConflictError
            Another writer committed to ``main`` since ``parent`` (before the write or
            during it); nothing was committed.
        StoreError
            The write failed; nothing was committed.
        """
        import icechunk
        import zarr

        from refstore import details
        from refstore.batch import split_metadata
        from refstore.faults import checkpoint
        from refstore.hierarchy import place_group_attrs

        session = self.repo.writable_session(BRANCH)
        base = str(session.snapshot_id)
        moved = base != parent if parent is not None else self._is_written(base)
        if moved:
            raise ConflictError(
                f"Another writer committed to {self.url} since this batch was planned "
                f"(main is at {base}, planned on {parent or 'an empty repository'})."
            )
        try:
            # Loaded arrays keep chunks equal to the fill value too, so the kerchunk
            # export (zarr v2, where fill_value doubles as _FillValue) sees real values.
            with zarr.config.set(
                {"array.write_empty_chunks": True, "array.rectilinear_chunks": True}
            ):
                if granules:
                    _write_rectilinear(
                        session.store, ds, granules, concat_dim, mode, region_start, registry
                    )
                elif mode == "create":
                    ds.vz.to_icechunk(session.store)
                elif mode == "append":
                    ds.vz.to_icechunk(session.store, append_dim=concat_dim)
                else:
                    _rewrite(session.store, ds, concat_dim, region_start, new_length)
                if mode == "create":
                    place_group_attrs(session.store)  # a hierarchy's (refstore.hierarchy)
                summary, detail = split_metadata(metadata)
                if detail:  # its per-granule lists, in the commit but not in its metadata
                    summary["detail_at"] = details.append(session.store, detail)
        except Exception as e:
            raise StoreError(f"Writing to the repository failed: {e}") from e
        checkpoint("mid-write")
        try:
            return str(session.commit(message, metadata={METADATA_KEY: summary}, rebase_with=None))
        except icechunk.ConflictError as e:
            raise ConflictError(
                f"Another writer committed to {self.url} during this sync: {e}"
            ) from e

    def _is_written(self, snapshot: str) -> bool:
        """Whether ``snapshot`` is past the repository's initial (empty) commit."""
        return self.repo.lookup_snapshot(snapshot).parent_id is not None


def _write_rectilinear(
    store: Any,
    ds: Any,
    granules: Sequence[Any],
    concat_dim: str,
    mode: str,
    start: int,
    registry: Any,
) -> None:
    """Loaded variables as for a regular store, then the virtual ones granule by granule,
    then the dataset attributes (naming the granules' coordinates)."""
    import warnings

    import zarr
    from virtualizarr.writers.icechunk import update_attributes

    from refstore.rectilinear import write_virtual

    new_length = start + sum(int(g.sizes[concat_dim]) for g in granules)
    if mode == "rewrite":
        _rewrite(store, ds, concat_dim, start, new_length)
    elif ds.variables or mode == "create":
        with warnings.catch_warnings():
            # The virtual variables are written below, not in this dataset.
            warnings.filterwarnings("ignore", "Attempting to write an entirely non-virtual")
            ds.vz.to_icechunk(store, append_dim=concat_dim if mode == "append" else None)
    write_virtual(store, granules, concat_dim, start, registry)
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    coords = [str(c) for c in granules[0].coords]
    update_attributes(group, ds.attrs, coords=coords)


def _rewrite(store: Any, ds: Any, concat_dim: str, start: int, new_length: int) -> None:
    """Resize along ``concat_dim`` to ``new_length`` and write ``ds`` over
    ``[start, start + len(ds))`` (the references after it, unchanged, stay).

    Loaded variables (the concat coordinate) are encoded with the stored units and
    written directly: xarray's region write would first decode the resized array,
    whose new cells still hold the fill value. Virtual variables then get their
    references rewritten from ``start`` on by VirtualiZarr.
    """
    import numpy as np
    import zarr
    from virtualizarr.manifests import ManifestArray
    from xarray.coding.times import encode_cf_datetime

    from refstore.rectilinear import is_rectilinear

    stop = start + int(ds.sizes[concat_dim])
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    # Every array of the hierarchy: a whole-hierarchy store has them in groups too.
    arrays = [node for _, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
    for array in arrays:
        dims = getattr(array.metadata, "dimension_names", None) or ()
        # A rectilinear array gets its new edges from refstore.rectilinear instead.
        if concat_dim in dims and not is_rectilinear(array):
            shape = list(array.shape)
            shape[dims.index(concat_dim)] = new_length
            array.resize(tuple(shape))
    loaded = [n for n, v in ds.variables.items() if not isinstance(v.data, ManifestArray)]
    for name in loaded:
        var, node = ds.variables[name], group[str(name)]
        if var.dims != (concat_dim,) or not isinstance(node, zarr.Array):
            raise StoreError(f"Cannot place loaded variable {name!r} with dims {var.dims}.")
        array = node
        values = np.asarray(var.values)
        if np.issubdtype(values.dtype, np.datetime64):
            attrs = array.attrs
            units, calendar = attrs.get("units"), attrs.get("calendar")
            values, _, _ = encode_cf_datetime(
                values,
                units if isinstance(units, str) else None,
                calendar if isinstance(calendar, str) else None,
                dtype=array.dtype,
            )
        array[start:stop] = np.asarray(values).astype(array.dtype)
    region = {concat_dim: slice(start, stop)}
    virtual = ds.drop_vars(loaded)
    if virtual.variables:
        virtual.vz.to_icechunk(store, region=region)


def _log_entry(info: Any) -> CommitInfo:
    """A snapshot as ``log`` shows it: refstore's commit metadata, or just its message."""
    return _commit_info(info) or CommitInfo(
        snapshot=info.id, message=info.message, written_at=info.written_at.isoformat()
    )


def _commit_info(info: Any) -> CommitInfo | None:
    from refstore.batch import commit_info

    meta = (info.metadata or {}).get(METADATA_KEY)
    if not meta:
        return None
    return commit_info(info.id, info.message, info.written_at.isoformat(), meta)
