"""The repository's head, log, tags and containers mirrored in the ledger.

``status``, ``log`` and a no-op ``sync`` need the head of ``main``, the snapshot log
and the recorded virtual chunk containers. Asking Icechunk costs ~0.5 s of imports
(zarr) per command; the mirror answers from one ledger row instead, and only while it
is current: it carries the repository's state token (:mod:`refstore.repo_ref`) read
*before* the head and log were, so any later commit, tag, expiry or config change (by
refstore, another ledger, plain Icechunk or an older refstore that keeps no mirror)
makes the token differ and the mirror is read again from Icechunk. Stale data is never
shown: a mirror that cannot be checked (unknown layout, failed request) is not used.

refstore writers refresh it under the store lock at the end of every ``sync`` and
``gc``; readers that found it stale refresh it when they can (lock free, folder
writable), and otherwise just answer from Icechunk.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refstore.config import Config
from refstore.models import CommitInfo
from refstore.repo_ref import state_token
from refstore.storage import store_options
from refstore.store import Head, Store

__all__ = [
    "KEY",
    "RECONCILED",
    "Mirror",
    "capture",
    "known_store",
    "ledger_behind",
    "load",
    "refresh",
]

log = logging.getLogger("refstore")

KEY = "repo_mirror"  # the ledger ``meta`` row holding it
RECONCILED = "reconciled_snapshot"  # the tip of main the ledger's rows reflect
VERSION = 2  # 2: a commit's granules as a count and detail index, not their keys


@dataclass(frozen=True, slots=True)
class Mirror:
    """What Icechunk said about the repository when its state token was ``token``."""

    token: str
    tip: str  # the snapshot at the tip of ``main``
    head: Head | None  # the newest refstore commit's view (Store.head)
    log: tuple[tuple[CommitInfo, tuple[str, ...]], ...]  # main, newest first, with tags
    prefixes: tuple[str, ...]  # recorded virtual chunk containers

    def entries(self, limit: int | None = None) -> list[tuple[CommitInfo, list[str]]]:
        """``Store.log(limit)``'s answer."""
        chosen = self.log if limit is None else self.log[: max(limit, 0)]
        return [(c, list(tags)) for c, tags in chosen]

    def to_json(self) -> str:
        """The ledger row's text."""
        head = self.head
        return json.dumps(
            {
                "version": VERSION,
                "token": self.token,
                "tip": self.tip,
                "head": None
                if head is None
                else {
                    "snapshot": head.snapshot,
                    "signature": head.signature,
                    "last": head.last,
                    "first": head.first,
                    "length": head.length,
                    "attrs_dropped": list(head.attrs_dropped),
                    "layout": head.layout,
                },
                "log": [
                    [
                        c.snapshot,
                        c.message,
                        c.written_at,
                        c.count,
                        c.detail_at,
                        c.start,
                        c.end,
                        tags,
                    ]
                    for c, tags in self.log
                ],
                "prefixes": self.prefixes,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> Mirror | None:
        """The mirror in ``text``; None if absent, unreadable or of another version."""
        try:
            d = json.loads(text or "null")
            if not isinstance(d, dict) or d.get("version") != VERSION:
                return None
            h = d["head"]
            return cls(
                token=str(d["token"]),
                tip=str(d["tip"]),
                head=None
                if h is None
                else Head(
                    snapshot=h["snapshot"],
                    signature=h["signature"],
                    last=h["last"],
                    first=h["first"],
                    length=int(h["length"]),
                    attrs_dropped=tuple(h["attrs_dropped"]),
                    layout=str(h["layout"]),
                ),
                log=tuple(
                    (
                        CommitInfo(
                            snapshot=s,
                            message=m,
                            written_at=w,
                            count=int(n),
                            detail_at=at,
                            start=a,
                            end=b,
                        ),
                        tuple(tags),
                    )
                    for s, m, w, n, at, a, b, tags in d["log"]
                ),
                prefixes=tuple(d["prefixes"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


def _token(config: Config) -> str | None:
    return state_token(config.repo, store_options(config))


def load(config: Config, text: str | None) -> Mirror | None:
    """The mirror in ``text`` if it is still the repository's state, else None."""
    mirror = Mirror.from_json(text)
    if mirror is None:
        return None
    return mirror if _token(config) == mirror.token else None


def capture(config: Config, base: Mirror | None = None) -> Mirror | None:
    """Read the mirror from Icechunk (a fresh handle: nothing cached); None without a
    repository or when its state token cannot be read cheaply (nothing to check it by).

    With ``base`` (a mirror that was current earlier, whose tip is still in ``main``'s
    ancestry) only the snapshots after its tip are read: a sync's refresh then costs what
    it committed, not the whole history (0.07 s at 48 snapshots, growing with every one).
    Never pass a ``base`` across an expiry (gc): its log would keep expired snapshots.
    """
    token = _token(config)  # first: a change after this makes the copy look stale
    if token is None:
        return None
    store = Store(config.repo, options=store_options(config))
    if not store.exists():
        return None
    return Mirror(
        token=token,
        tip=store.head_snapshot(),
        head=store.head(),
        log=_log(store, base),
        prefixes=store.recorded_prefixes(),
    )


def _log(store: Store, base: Mirror | None) -> tuple[tuple[CommitInfo, tuple[str, ...]], ...]:
    newer = None if base is None else store.log_since(base.tip)
    if base is None or newer is None:  # no base, or history reset past it: read it all
        return tuple((c, tuple(tags)) for c, tags in store.log())
    tags = store.tags_by_snapshot()  # tags may have moved anywhere in the history
    commits = [*newer, *(c for c, _ in base.log)]
    return tuple((c, tuple(tags.get(c.snapshot, ()))) for c in commits)


def refresh(config: Config, ledger: Any, known: Mirror | None = None) -> Mirror | None:
    """Make ``ledger``'s mirror current (call it holding the store lock, after writing);
    ``known`` is the mirror found current at the start of the run: kept if nothing
    changed, else the base that only the new snapshots are added to. Without ``known``
    (gc: expiry rewrote history) the whole log is read again."""
    if known is not None and _token(config) == known.token:
        return known
    mirror = capture(config, base=known)
    if mirror is not None:
        ledger.set_meta(KEY, mirror.to_json())
    return mirror


def known_store(config: Config) -> Store:
    """A history-only :class:`Store` answering from a current mirror when there is one.

    Without one, it is read from Icechunk and saved for the next command when the
    ledger can be written now (the store lock is free, the folder writable); a
    read-only state folder or a running sync just means no mirror is saved.
    """
    from refstore.ledger import read_meta

    mirror = load(config, read_meta(config.ledger, KEY))
    if mirror is None:
        mirror = capture(config)
        if mirror is not None:
            _save_quietly(config, mirror)
    return Store(config.repo, options=store_options(config), known=mirror)


def ledger_behind(config: Config, store: Store | None = None) -> bool:
    """Whether the repository's ``main`` moved past what the ledger's rows reflect (another
    writer committed since the last sync here), read from ``store`` (default:
    :func:`known_store`); False without a repository."""
    from refstore.ledger import read_meta

    store = store or known_store(config)
    if not store.exists():
        return False
    return read_meta(config.ledger, RECONCILED) != store.head_snapshot()


def _save_quietly(config: Config, mirror: Mirror) -> None:
    import sqlite3

    from refstore.errors import RefstoreError
    from refstore.ledger import write_meta
    from refstore.lock import store_lock

    if not Path(config.ledger).exists():
        return  # a read command never creates a ledger
    try:
        with store_lock(config.ledger, wait=0):
            write_meta(config.ledger, KEY, mirror.to_json())
    except (RefstoreError, OSError, sqlite3.Error) as e:
        log.debug("repository mirror not saved (%s); the next command reads Icechunk", e)
