"""What the last listing of a local folder saw, so the next one stats only what changed.

A folder listing (``os.scandir``) gives every name with its inode number for free; the
revision (size and mtime) needs one ``stat`` per file, which is most of a no-op or +1
sync of a large folder (10,000 stats ≈ 0.1-0.2 s here). A file whose name and inode are
unchanged since the last listing keeps its recorded revision without a ``stat``: new
names, deleted names and files replaced by a rename (a new inode: how downloaders and
``rsync`` publish) are all seen at once.

Files that changed within the last ``[source] rescan_hours`` (default 24) are stat'ed
every time, so an upload in progress or a recent granule rewritten in place is seen at
once; at steady state that is the last day's granules, not the folder. The trade-off:
an *older* file rewritten *in place* (same inode) is seen at the next full listing,
every ``rescan_hours`` (0 = every listing is full, as before).

A folder whose own ``(inode, mtime)`` is what the last listing saw has had no name added,
removed or renamed since (POSIX updates a directory's mtime on each), so it is not even
listed: the :class:`FolderHead` (a small ledger row of its own) keeps the folder's state,
the file count and the recently changed files, which are stat'ed as always. At 100,000
files that turns a no-op listing from reading every name (and loading the per-file
cache) into two ``stat`` calls and the recent files'. A folder changed less than
:data:`SETTLE` seconds before the listing that recorded it is listed again (a name added
within the same mtime tick would be missed otherwise; coarse-clock or NFS folders too).
No I/O here: :mod:`refstore.sources.local` lists, the ledger stores the JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

__all__ = [
    "SETTLE",
    "FolderHead",
    "ListingCache",
    "file_entry",
    "folder_state",
    "full_due",
    "recheck",
    "unchanged",
]

SETTLE = 2.0  # seconds a folder must have been unchanged before a listing to be trusted


def full_due(full_at: float, now: float, rescan_hours: float) -> bool:
    """Whether a listing whose last full one was at ``full_at`` must stat every file."""
    return rescan_hours <= 0 or now - full_at >= rescan_hours * 3600


def folder_state(st: os.stat_result) -> str:
    """A folder's ``<inode>-<mtime_ns>``: it moves whenever a name in it is added,
    removed or renamed."""
    return f"{st.st_ino}-{st.st_mtime_ns}"


def file_entry(st: os.stat_result) -> tuple[int, str]:
    """A file's ``(inode, revision)``; the revision is ``<size>-<mtime_ns>``."""
    return st.st_ino, f"{st.st_size}-{st.st_mtime_ns}"


def recheck(
    recorded: dict[str, tuple[int, str]], now: dict[str, tuple[int, str]]
) -> tuple[dict[str, tuple[int, str]], dict[str, tuple[int, str]], set[str]]:
    """The recent files a listing ``recorded`` in a folder that did not move, stat'ed
    again (``now``: those that exist, and maybe others): ``(recent, changed, gone)``."""
    recent = {k: v for k, v in now.items() if k in recorded}
    changed = {k: v for k, v in recent.items() if recorded[k] != v}
    return recent, changed, recorded.keys() - recent.keys()


def unchanged(state: str, recorded: str, listed_at: float) -> bool:
    """Whether a folder now in ``state`` needs no listing: it is the ``recorded`` state
    of a listing that began at ``listed_at``, :data:`SETTLE` s after its last change."""
    if not recorded or state != recorded:
        return False
    return int(state.rsplit("-", 1)[-1]) / 1e9 < listed_at - SETTLE


@dataclass
class ListingCache:
    """``key -> (inode, revision)`` of the last listing, and when the last full one was."""

    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    full_at: float = 0.0  # epoch seconds of the last listing that stat'ed every file
    stats: int = 0  # stat calls of the listing that filled it (reported, not stored)
    # Set by a flat folder's listing, stored in its FolderHead rather than here:
    folder: str = field(default="", compare=False)  # the folder's state before listing
    listed_at: float = field(default=0.0, compare=False)
    recent: dict[str, tuple[int, str]] = field(default_factory=dict, compare=False)
    # The keys the FolderHead of the listing that filled ``files`` called recent (None:
    # not known): lets :meth:`trusted` decide the whole folder with set operations.
    was_recent: set[str] | None = field(default=None, compare=False)

    def head(self) -> FolderHead | None:
        """The :class:`FolderHead` of the listing that filled this cache (None unless it
        listed a flat folder)."""
        if not self.folder:
            return None
        return FolderHead(self.folder, self.listed_at, self.full_at, len(self.files), self.recent)

    def full_due(self, now: float, rescan_hours: float) -> bool:
        """Whether this listing must stat every file (never listed, or overdue)."""
        return not self.files or full_due(self.full_at, now, rescan_hours)

    def revision(self, key: str, inode: int, now: float, rescan_hours: float) -> str | None:
        """The recorded revision of ``key``, to use without a ``stat``: only if its inode
        is the recorded one and it last changed more than ``rescan_hours`` ago (a file
        changed recently, an upload in progress, is stat'ed every time)."""
        known = self.files.get(key)
        if known is None or known[0] != inode:
            return None
        mtime_ns = int(known[1].rsplit("-", 1)[-1])
        return known[1] if now - mtime_ns / 1e9 > rescan_hours * 3600 else None

    def trusted(
        self, listed: dict[str, int], now: float, rescan_hours: float
    ) -> dict[str, tuple[int, str]]:
        """The entries of ``listed`` (``key -> inode``) whose recorded revision holds
        without a ``stat``: the rule of :meth:`revision`, for a whole folder at once."""
        files = self.files
        if self.was_recent is not None:
            # Same name and inode, and not changed within rescan_hours at the last listing
            # (so not since: its mtime is older still). One comprehension, no tuple per
            # file: 0.02 s at 100,000 files, where parsing each mtime took 0.1 s and set
            # operations on (name, inode) pairs 0.15 s (the garbage collector, woken by
            # 200,000 new tuples, walking the cache's own).
            recent = self.was_recent
            return {
                k: known
                for k, inode in listed.items()
                if (known := files.get(k)) is not None and known[0] == inode and k not in recent
            }
        cutoff_ns = (now - rescan_hours * 3600) * 1e9
        return {
            key: known
            for key, inode in listed.items()
            if (known := files.get(key)) is not None
            and known[0] == inode
            and int(known[1].rsplit("-", 1)[-1]) < cutoff_ns
        }

    def to_json(self) -> str:
        """Columns (keys, inodes, revisions) rather than one ``[inode, revision]`` pair a
        file: decoding then builds no container per file, which in a long-lived process
        with a large heap kept triggering the garbage collector (at 10,000 files: 9 ms
        rather than 15 ms median and 150 ms worst, measured)."""
        return json.dumps(
            {
                "full_at": self.full_at,
                "keys": list(self.files),
                "inodes": [inode for inode, _ in self.files.values()],
                "revisions": [revision for _, revision in self.files.values()],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> ListingCache:
        """The cache stored as ``text`` (columns, or the older ``files`` pairs); an empty
        one if there is none or it is unreadable (the next listing is then a full one,
        which is always correct)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            if "files" in data:  # as written before the columns
                files = {str(k): (int(v[0]), str(v[1])) for k, v in data["files"].items()}
            else:
                keys, inodes, revisions = data["keys"], data["inodes"], data["revisions"]
                if not len(keys) == len(inodes) == len(revisions):
                    return cls()
                files = dict(zip(keys, zip(inodes, revisions, strict=True), strict=True))
            return cls(files=files, full_at=float(data["full_at"]))
        except (ValueError, KeyError, TypeError, IndexError):
            return cls()


@dataclass
class FolderHead:
    """What a flat folder's last listing needs to know that nothing was added or removed:
    the folder's ``<inode>-<mtime_ns>`` then, when it was taken, when the last full
    listing was, how many files it held, and its recently changed files (``key ->
    (inode, revision)``, those to stat every time)."""

    folder: str
    listed_at: float
    full_at: float
    count: int
    recent: dict[str, tuple[int, str]] = field(default_factory=dict)

    def holds(self, folder: str, now: float, rescan_hours: float) -> bool:
        """Whether the folder, now in state ``folder``, needs no listing: unchanged since
        a listing that began :data:`SETTLE` s after its last change, no full listing due."""
        if not self.count or full_due(self.full_at, now, rescan_hours):
            return False
        return unchanged(folder, self.folder, self.listed_at)

    def to_json(self) -> str:
        """The small ledger row's text."""
        return json.dumps(
            {
                "folder": self.folder,
                "listed_at": self.listed_at,
                "full_at": self.full_at,
                "count": self.count,
                "recent": {k: list(v) for k, v in self.recent.items()},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> FolderHead | None:
        """The head stored as ``text``; None if absent or unreadable (then list)."""
        if not text:
            return None
        try:
            d = json.loads(text)
            recent = {str(k): (int(v[0]), str(v[1])) for k, v in d["recent"].items()}
            at, full_at, count = float(d["listed_at"]), float(d["full_at"]), int(d["count"])
            return cls(str(d["folder"]), at, full_at, count, recent)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None
