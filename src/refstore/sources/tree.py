"""A glob across folders (``incoming/**/*.nc``, ``*/*/*.HDF5``) listed folder by folder,
each folder only when something in it may have changed.

DAACs and their mirrors keep a forward-streaming collection in one folder per year, month
or day (``GPM_3IMERGHH.07/2024/001/``). A folder's own ``(inode, mtime)`` moves whenever a
name in it is added, removed or renamed, so a folder whose state is what the last listing
recorded -- and which had not changed for :data:`~refstore.sources.listing_cache.SETTLE`
seconds before that listing, against same-tick additions -- is not listed again: its
sub-folders are still visited (one ``stat`` each) and its recently changed files
(within ``[source] rescan_hours``) and symlinks are stat'ed, as in a flat folder. A
folder that moved is listed and compared with what the last listing saw in it, file by
file: a file with the same name and inode that was not recent then keeps its revision
without a ``stat``. So a +1 sync of a decade of daily folders lists one folder and stats
a few thousand folders, whatever the number of granules.

The trade-off (the flat folder's, :mod:`refstore.sources.listing_cache`): an *older* file
rewritten *in place* (same inode) is seen at the next full listing, every
``rescan_hours``. What the listing saw is kept in the ledger: one small row for the
folders' states (:class:`TreeState`) and one row per folder for its files, read only
when that folder moved. The walker lists; matching and comparing are pure.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from refstore.sources.listing_cache import file_entry, folder_state, full_due, recheck, unchanged

__all__ = ["Folder", "TreeListing", "TreeState", "glob_regex", "stat_files", "walk"]

Entry = tuple[int, str]  # (inode, revision "<size>-<mtime_ns>"); inode 0 for a symlink


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for the relative paths ``pattern`` matches (any case), as
    :meth:`pathlib.Path.glob` matches files: ``**`` is zero or more folders, ``*`` and
    ``?`` stay within one name, ``[...]`` is a class (``[!...]`` its complement)."""
    parts = pattern.strip("/").split("/")
    out = []
    for i, part in enumerate(parts):
        if part == "**":
            out.append("(?:[^/]+/)*")
        else:
            out.append(_part(part) + ("/" if i < len(parts) - 1 else ""))
    return re.compile("".join(out), re.IGNORECASE)


def _part(part: str) -> str:
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := part.find("]", i + 2)) != -1:
            body = part[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@dataclass
class Folder:
    """What the last listing saw of one folder (its files are a row of their own)."""

    state: str  # "<inode>-<mtime_ns>" before it was listed
    listed_at: float
    subdirs: list[str]
    count: int  # matching files
    recent: dict[str, Entry] = field(default_factory=dict)  # stat'ed on every listing
    links: list[str] = field(default_factory=list)  # symlinked files: stat'ed every time

    def holds(self, state: str, full: bool) -> bool:
        """Whether the folder, now in ``state``, needs no listing."""
        return not full and unchanged(state, self.state, self.listed_at)


@dataclass
class TreeState:
    """Every folder's :class:`Folder`, and when every file was last stat'ed."""

    full_at: float = 0.0
    folders: dict[str, Folder] = field(default_factory=dict)

    def full_due(self, now: float, rescan_hours: float) -> bool:
        """Whether this listing must list every folder and stat every file."""
        return not self.folders or full_due(self.full_at, now, rescan_hours)

    def to_json(self) -> str:
        return json.dumps(
            {
                "full_at": self.full_at,
                "folders": {
                    k: [f.state, f.listed_at, f.subdirs, f.count, f.recent, f.links]
                    for k, f in self.folders.items()
                },
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> TreeState:
        """The state stored as ``text``; an empty one (list everything) if unreadable."""
        if not text:
            return cls()
        try:
            d = json.loads(text)
            folders = {
                str(k): Folder(
                    str(s),
                    float(at),
                    [str(x) for x in subs],
                    int(n),
                    {str(a): (int(b[0]), str(b[1])) for a, b in recent.items()},
                    [str(x) for x in links],
                )
                for k, (s, at, subs, n, recent, links) in d["folders"].items()
            }
            return cls(float(d["full_at"]), folders)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return cls()


@dataclass
class TreeListing:
    """What one walk found, against the state it started from."""

    state: TreeState  # to store once the plan is recorded
    changed: dict[str, Entry]  # key -> entry: new, replaced, changed, or a symlink
    gone: set[str]  # keys no longer there
    files: dict[str, dict[str, Entry]]  # the listed folders' files (rows to store)
    removed: set[str]  # folders gone (rows to delete)

    @property
    def count(self) -> int:
        return sum(f.count for f in self.state.folders.values())


def walk(
    root: str,
    pattern: str,
    old: TreeState,
    load_files: Callable[[str], dict[str, Entry]],
    *,
    now: float,
    rescan_hours: float,
) -> TreeListing:
    """List the files under ``root`` that ``pattern`` matches, folder by folder, against
    what ``old`` recorded (``load_files(folder)``: that folder's files then)."""
    regex = glob_regex(pattern)
    parts = pattern.strip("/").split("/")
    depth = None if "**" in parts else len(parts) - 1  # folders below root to visit
    full = old.full_due(now, rescan_hours)
    cutoff_ns = (now - rescan_hours * 3600) * 1e9
    out = TreeListing(TreeState(now if full else old.full_at), {}, set(), {}, set())
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel)
        prev = old.folders.get(rel)
        try:
            st = os.stat(path)
        except OSError:
            continue  # removed while walking: its parent moved, the next walk sees it
        state = folder_state(st)
        if prev is not None and prev.holds(state, full):
            folder = _unlisted(path, rel, prev, out)
        else:
            folder = _listed(path, rel, state, prev, load_files, regex, now, cutoff_ns, full, out)
        out.state.folders[rel] = folder
        if depth is None or rel.count("/") < depth:  # rel ends with "/": its depth
            stack.extend(f"{rel}{name}/" for name in folder.subdirs)
        for name in set(prev.subdirs if prev else ()) - set(folder.subdirs):
            _drop(f"{rel}{name}/", old, load_files, out)
    return out


def _unlisted(path: str, rel: str, prev: Folder, out: TreeListing) -> Folder:
    """A folder no name was added to or removed from: stat its recent files and links."""
    now = stat_files(path, [*prev.recent, *prev.links])
    recent, changed, gone = recheck(prev.recent, now)
    out.changed.update((rel + n, e) for n, e in changed.items())
    # A symlink: its target may have changed.
    out.changed.update((rel + n, now[n]) for n in prev.links if n in now)
    out.gone.update(rel + n for n in gone)
    return Folder(prev.state, prev.listed_at, prev.subdirs, prev.count, recent, prev.links)


def _listed(
    path: str,
    rel: str,
    state: str,
    prev: Folder | None,
    load_files: Callable[[str], dict[str, Entry]],
    regex: re.Pattern[str],
    now: float,
    cutoff_ns: float,
    full: bool,
    out: TreeListing,
) -> Folder:
    """List a folder that moved (or is new, or a full listing is due) and compare."""
    subdirs, names, links = [], {}, []
    with os.scandir(path) as entries:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                subdirs.append(e.name)
            elif not e.name.startswith(".") and regex.fullmatch(rel + e.name):
                if e.is_symlink():
                    links.append(e.name)
                elif e.is_file(follow_symlinks=False):
                    names[e.name] = e.inode()
    before = load_files(rel) if prev is not None else {}
    was_recent = prev.recent if prev is not None else {}
    files: dict[str, Entry] = {}
    unknown = []
    for name, inode in names.items():
        known = before.get(name)
        if not full and known is not None and known[0] == inode and name not in was_recent:
            files[name] = known  # same inode, older than rescan_hours when last stat'ed
        else:
            unknown.append(name)
    files.update(stat_files(path, unknown))
    recent = {n: files[n] for n in unknown if n in files and _mtime(files[n]) >= cutoff_ns}
    for name, entry in files.items():
        if before.get(name) != entry:
            out.changed[rel + name] = entry
    for name, entry in stat_files(path, links).items():
        out.changed[rel + name] = entry
        files[name] = entry
    out.gone.update(rel + n for n in before.keys() - files.keys())
    out.files[rel] = files
    kept_links = sorted(n for n in links if n in files)
    return Folder(state, now, sorted(subdirs), len(files), recent, kept_links)


def _drop(
    rel: str, old: TreeState, load_files: Callable[[str], dict[str, Entry]], out: TreeListing
) -> None:
    """A folder (and everything under it) that is gone: its files are gone."""
    for folder in [k for k in old.folders if k.startswith(rel)]:
        out.gone.update(folder + n for n in load_files(folder))
        out.removed.add(folder)


def stat_files(path: str, names: Iterable[str]) -> dict[str, Entry]:
    """``name -> entry`` of the plain files (symlinks followed) among ``names`` (relative
    paths) in folder ``path`` that exist now."""
    found = {}
    for name in names:
        try:
            st = os.stat(os.path.join(path, name))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found[name] = file_entry(st)
    return found


def _mtime(entry: Entry) -> int:
    return int(entry[1].rsplit("-", 1)[-1])
