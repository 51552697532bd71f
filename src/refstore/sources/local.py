"""Granules in a local folder, or matching a glob such as ``incoming/**/*.nc``."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote_from_bytes, unquote

from refstore.errors import SourceError
from refstore.models import Granule
from refstore.sources.base import ContainerSpec
from refstore.sources.listing_cache import ListingCache, folder_state
from refstore.sources.tree import TreeListing, TreeState, stat_files, walk

if TYPE_CHECKING:
    from refstore.config import Config

__all__ = ["DATA_SUFFIXES", "DEFAULT_PATTERNS", "LocalSource", "is_data_name"]

_GLOB_CHARS = set("*?[")
DEFAULT_PATTERNS = ("*.nc", "*.nc4", "*.h5", "*.hdf5", "*.he5")
# Matched without regard to case: GPM names its files *.HDF5, others *.NC.
DATA_SUFFIXES = tuple(p.removeprefix("*") for p in DEFAULT_PATTERNS)

log = logging.getLogger("refstore")


def is_data_name(name: str) -> bool:
    """Whether a file name has a NetCDF/HDF5 suffix (any case)."""
    return name.lower().endswith(DATA_SUFFIXES)


def warn_none_matched(where: str, total: int, pattern: str | None) -> None:
    """Say so when a source holds files but none of them matched."""
    if total:
        shown = pattern or " ".join(DEFAULT_PATTERNS)
        log.warning(
            "%s: %d file(s), none matched %s (any case); "
            "set [source] url to a glob that matches them",
            where,
            total,
            shown,
        )


def _name_matcher(pattern: str | None) -> Callable[[str], bool]:
    """Whether a file name in the folder is a granule: a NetCDF/HDF5 suffix, or the
    glob ``pattern`` (any case, as :meth:`pathlib.Path.glob` with case_sensitive=False)."""
    if pattern is None:
        return is_data_name
    regex = re.compile(fnmatch.translate(pattern), re.IGNORECASE)
    return lambda name: regex.fullmatch(name) is not None


# What a file:// URL path may carry as is (RFC 3986 pchar, beyond letters, digits and
# "-._~"). VirtualiZarr and obstore read a file:// URL's path without percent-decoding
# it, so a name is readable only if its URL needs no escape: "date=2024-01-01/a+b.nc"
# is; "a b.nc", "50%.nc" or non-ASCII names are not (see ``needs_escape``).
URL_SAFE = "/!$&'()*+,;=:@"


def file_url(path: str) -> str:
    """The ``file://`` URL of an absolute path, escaping only what a URL path must."""
    return "file://" + quote_from_bytes(os.fsencode(path), safe=URL_SAFE)


def needs_escape(url: str) -> str:
    """The characters of a ``file://`` URL's path that had to be escaped ("" if none):
    such a file cannot be read through VirtualiZarr's readers."""
    if not url.startswith("file://") or "%" not in url:
        return ""
    raw = unquote(url.removeprefix("file://"))
    return "".join(sorted({c for c in raw if quote_from_bytes(c.encode(), safe=URL_SAFE) != c}))


def _granule(key: str, url: str, revision: str) -> Granule:
    """A listed file's granule; ``revision`` is ``<size>-<mtime_ns>``."""
    size, mtime_ns = (int(x) for x in revision.split("-"))
    return Granule(
        key=key,
        url=url,
        revision=revision,
        size=size,
        modified=datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat(),
    )


def split_glob(url: str) -> tuple[Path, str | None]:
    """Split ``/data/in/**/*.nc`` into the folder before the first wildcard and the rest."""
    parts = Path(url).parts
    for i, part in enumerate(parts):
        if _GLOB_CHARS & set(part):
            return Path(*parts[:i]), str(Path(*parts[i:]))
    return Path(url), None


@dataclass(frozen=True, slots=True)
class LocalSource:
    """Files on the local file system.

    Parameters
    ----------
    url
        An absolute folder (all NetCDF/HDF5 files directly in it) or glob.
    """

    url: str
    rescan_hours: float = 24.0  # a listing that stats every file at least this often
    incremental: ClassVar[bool] = False  # lists the whole folder every time
    caches_listing: ClassVar[bool] = True  # discover(cache=...) stats what changed only

    @classmethod
    def from_config(cls, config: Config) -> LocalSource:
        """Build from ``[source] url`` (already resolved to an absolute path)."""
        return cls(url=config.source_url.removeprefix("file://"), rescan_hours=config.rescan_hours)

    @property
    def root(self) -> Path:
        """The folder that every granule lies under."""
        return split_glob(self.url)[0]

    def discover(
        self,
        since: str | None = None,
        *,
        cache: ListingCache | None = None,
        changed_only: bool = False,
    ) -> Iterator[Granule]:
        """List the matching files with size and modification time as the revision.

        With ``cache`` (what the last listing saw, updated in place), a file whose name
        and inode are unchanged keeps its recorded revision without a ``stat``, unless a
        full listing is due (``rescan_hours``): see :mod:`refstore.sources.listing_cache`.
        Only a folder or a glob in its last path part (``incoming/*.nc``) uses it.

        ``changed_only`` (with ``cache``): yield only the files whose name, inode or
        revision the last listing did not record (new, replaced, changed, symlinked);
        ``cache.files`` still ends up holding every file listed. This keeps a steady-state
        sync from building one :class:`Granule` per file of a large folder.
        """
        root, pattern = self._split()
        # Plain strings and os calls, not pathlib, per file: a no-op sync lists every
        # granule, and pathlib's relative_to/resolve cost ~60 us a file (0.7 s at 10k).
        top = os.path.join(root, "")
        inodes: dict[str, int] = {}  # key -> inode, for plain files listed by scandir
        links: set[str] | None = None  # symlinks among them (None: ask the file system)
        chosen: list[os.DirEntry[str]] = []
        now = time.time()
        folder = ""
        if pattern is None or "/" not in pattern:
            folder = self.folder_state() or ""  # before listing: a later change moves it
            match = _name_matcher(pattern)
            with os.scandir(root) as entries:
                names = [e for e in entries if not e.name.startswith(".")]
            chosen = [e for e in names if match(e.name)]
            links = {e.path for e in chosen if e.is_symlink()}  # from d_type: no syscall
            # A file directly in the folder: its key is its name.
            inodes = {e.name: e.inode() for e in chosen if not e.is_symlink()}
            if not chosen:
                warn_none_matched(str(root), sum(e.is_file() for e in names), pattern)
        else:  # across folders: every file of a fresh walk (refstore.sources.tree)
            listing = self.walk_tree(TreeState(), lambda _: {})
            if not listing.changed:
                total = sum(1 for p in root.rglob("*") if p.is_file())
                warn_none_matched(str(root), total, pattern)
            yield from self.granules((k, v[1]) for k, v in sorted(listing.changed.items()))
            return
        full = cache is None or cache.full_due(now, self.rescan_hours)
        seen: dict[str, tuple[int, str]] = {}
        recent: dict[str, tuple[int, str]] = {}  # changed within rescan_hours: see FolderHead
        cutoff_ns = (now - self.rescan_hours * 3600) * 1e9
        stats = 0
        base_uri = file_url(str(root.resolve())).rstrip("/") + "/"
        # Files whose recorded revision holds without a stat, decided for the whole
        # folder at once (comprehensions, not a loop step per file: ~1 us a name).
        trusted = {} if full or cache is None else cache.trusted(inodes, now, self.rescan_hours)
        if links is not None:  # listed by scandir
            if changed_only and trusted:  # unchanged since the last listing: nothing to yield
                seen.update(trusted)
                paths = sorted(e.path for e in chosen if e.name not in trusted)
            else:
                paths = sorted(e.path for e in chosen)
        for path in paths:
            key = path.removeprefix(top)
            if key.rsplit("/", 1)[-1].startswith("."):
                continue  # hidden names are partial downloads / temp files
            inode = inodes.get(key)
            known = trusted.get(key)
            if known is not None:
                revision = known[1]
            else:
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # deleted while listing
                stats += 1
                if not stat.S_ISREG(st.st_mode):
                    continue
                revision = f"{st.st_size}-{st.st_mtime_ns}"
                if inode is not None and st.st_mtime_ns >= cutoff_ns:
                    recent[key] = (inode, revision)
            if inode is not None:
                seen[key] = (inode, revision)
                if changed_only and cache is not None and cache.files.get(key) == seen[key]:
                    continue
            url = (
                file_url(str(Path(path).resolve()))
                if (path in links if links is not None else os.path.islink(path))
                else base_uri + quote_from_bytes(os.fsencode(key), safe=URL_SAFE)
            )
            yield _granule(key, url, revision)
        if cache is not None:
            cache.files, cache.stats = seen, stats
            # A symlink's target can change with the folder unchanged: list such a folder.
            cache.folder = "" if links is None or links else folder
            cache.listed_at, cache.recent = now, recent
            if full:
                cache.full_at = now

    def _split(self) -> tuple[Path, str | None]:
        """:func:`split_glob` of the URL, once the folder is known to exist.

        Raises
        ------
        SourceError
            The folder before the first wildcard does not exist.
        """
        root, pattern = split_glob(self.url)
        if not root.is_dir():
            raise SourceError(
                f"Source folder {root} does not exist.",
                "Check [source] url in refstore.toml (relative paths start at its folder).",
            )
        return root, pattern

    @property
    def across_folders(self) -> bool:
        """Whether the URL is a glob across folders (``incoming/**/*.nc``): listed with
        :meth:`walk_tree`, not as one folder."""
        pattern = split_glob(self.url)[1]
        return pattern is not None and "/" in pattern

    def folder_state(self) -> str | None:
        """``<inode>-<mtime_ns>`` of a flat folder (None for a glob across folders, or a
        folder that is gone): it moves whenever a name in it is added, removed or renamed."""
        if self.across_folders:
            return None
        try:
            return folder_state(os.stat(self.root))
        except OSError:
            return None

    def restat(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        """``key -> (inode, revision)`` of the plain files ``keys`` that exist now (a
        symlink: its target's)."""
        return stat_files(str(self.root), keys)

    def granule(self, key: str, revision: str) -> Granule:
        """The granule of file ``key`` (relative to :attr:`root`) listed with
        ``revision``: a plain file's URL is built without touching the file system, a
        symlink's is its target's."""
        return self.granules([(key, revision)])[0]

    def granules(self, listed: Iterable[tuple[str, str]]) -> list[Granule]:
        """:meth:`granule` of each ``(key, revision)`` (the folder resolved once)."""
        root = self.root
        base_uri = file_url(str(root.resolve())).rstrip("/") + "/"
        out = []
        for key, revision in listed:
            path = os.path.join(root, key)
            url = (
                file_url(str(Path(path).resolve()))
                if os.path.islink(path)
                else base_uri + quote_from_bytes(os.fsencode(key), safe=URL_SAFE)
            )
            out.append(_granule(key, url, revision))
        return out

    def walk_tree(
        self, old: TreeState, load_files: Callable[[str], dict[str, tuple[int, str]]]
    ) -> TreeListing:
        """A glob across folders (:attr:`across_folders`) listed folder by folder against
        ``old`` (see :mod:`refstore.sources.tree`)."""
        root, pattern = self._split()
        assert pattern is not None, "walk_tree lists a glob across folders"
        return walk(
            str(root), pattern, old, load_files, now=time.time(), rescan_hours=self.rescan_hours
        )

    def registry(self) -> Any:
        """A registry that reads ``file://`` URLs with obstore's LocalStore."""
        from obspec_utils.registry import ObjectStoreRegistry
        from obstore.store import LocalStore

        return ObjectStoreRegistry({"file://": LocalStore()})

    def containers(self) -> tuple[ContainerSpec, ...]:
        """A ``file://`` container over the source folder."""
        prefix = file_url(str(self.root.resolve())).rstrip("/") + "/"
        return (ContainerSpec(url_prefix=prefix, kind="local"),)
