"""A local listing stats only what changed (issue 12): new names, renamed-over files and
recently changed files every time; an older file rewritten in place at the next full
listing (``[source] rescan_hours``). Real files, real inodes."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import refstore
from refstore.ledger import Ledger
from refstore.sources.listing_cache import ListingCache
from refstore.sources.local import LocalSource
from tests.conftest import MakeConfig

DAY = 86400.0


def _file(folder: Path, name: str, data: bytes, age_s: float = 2 * DAY) -> Path:
    path = folder / name
    path.write_bytes(data)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def _list(source: LocalSource, cache: ListingCache) -> dict[str, str]:
    return {g.key: g.revision for g in source.discover(cache=cache)}


def test_unchanged_folder_is_listed_without_a_stat(tmp_path: Path) -> None:
    for i in range(20):
        _file(tmp_path, f"g{i:02d}.nc", b"x" * (i + 1))
    source, cache = LocalSource(str(tmp_path)), ListingCache()
    first = _list(source, cache)
    assert cache.stats == 20 and cache.full_at > 0  # the first listing is a full one
    assert _list(source, cache) == first and cache.stats == 0
    assert ListingCache.from_json(cache.to_json()) == ListingCache(cache.files, cache.full_at)


def test_new_deleted_renamed_over_and_recent_files_are_seen_at_once(tmp_path: Path) -> None:
    for i in range(5):
        _file(tmp_path, f"g{i}.nc", b"old", age_s=60 if i == 2 else 2 * DAY)
    source, cache = LocalSource(str(tmp_path / "*.nc")), ListingCache()
    before = _list(source, cache)
    _file(tmp_path, "g5.nc", b"new granule", age_s=3 * DAY)  # arrives (an old mtime even)
    (tmp_path / "g0.nc").unlink()
    tmp = _file(tmp_path, ".g1.nc.part", b"revised by rename", age_s=3 * DAY)
    os.replace(tmp, tmp_path / "g1.nc")  # a new inode under the old name
    # g2 changed a minute before the last listing: rewritten in place, still seen.
    recent = _file(tmp_path, "g2.nc", b"upload finished", age_s=1)
    after = _list(source, cache)
    assert set(after) == {"g1.nc", "g2.nc", "g3.nc", "g4.nc", "g5.nc"}
    assert after["g1.nc"] != before["g1.nc"] and after["g5.nc"].startswith("11-")
    assert after["g2.nc"] == f"15-{recent.stat().st_mtime_ns}"
    assert cache.stats == 3  # g1 (new inode), g2 (recent), g5 (new); g3, g4 trusted


def test_older_file_rewritten_in_place_waits_for_the_full_listing(tmp_path: Path) -> None:
    path = _file(tmp_path, "g0.nc", b"old")
    cache = ListingCache()
    _list(LocalSource(str(tmp_path), rescan_hours=24), cache)
    inode = path.stat().st_ino
    with open(path, "r+b") as f:  # same inode; the mtime says "2 days ago" again
        f.write(b"NEW and longer")
    when = time.time() - 2 * DAY
    os.utime(path, (when, when))
    assert path.stat().st_ino == inode
    assert _list(LocalSource(str(tmp_path), rescan_hours=24), cache)["g0.nc"].startswith("3-")
    cache.full_at -= 25 * 3600  # a day later: the full listing is due
    assert _list(LocalSource(str(tmp_path), rescan_hours=24), cache)["g0.nc"].startswith("14-")
    cache.full_at = time.time()  # rescan_hours = 0: every listing is a full one
    with open(path, "r+b") as f:
        f.write(b"NEWER, longer still")
    os.utime(path, (when, when))
    assert _list(LocalSource(str(tmp_path), rescan_hours=0), cache)["g0.nc"].startswith("19-")


def test_sync_keeps_the_listing_in_the_ledger(make_config: MakeConfig, incoming: Path) -> None:
    from datetime import datetime

    from refstore.synthetic import write_ccmp_like_series

    files = write_ccmp_like_series(incoming, datetime(2024, 1, 1), 3, nlat=8, nlon=16)
    for f in files:  # granules of last week: trusted by inode once listed
        os.utime(f, (time.time() - 7 * DAY, time.time() - 7 * DAY))
    config = make_config()
    assert len(refstore.sync(config).added) == 3
    with Ledger(config.ledger) as ledger:
        stored = ListingCache.from_json(ledger.get_meta(f"listing:{incoming}"))
    assert set(stored.files) == {f.name for f in files}
    # A revision published by rename (new inode) is re-read and put in place.
    revised = write_ccmp_like_series(incoming, datetime(2024, 1, 2), 1, nlat=8, nlon=16, seed=9)
    result = refstore.sync(config)
    assert result.added == (revised[0].name,)


def test_symlinked_granules_are_stat_ed_and_point_at_their_target(tmp_path: Path) -> None:
    store, folder = tmp_path / "store", tmp_path / "in"
    store.mkdir()
    folder.mkdir()
    a = _file(store, "a.nc", b"aaa")
    b = _file(store, "b.nc", b"bbbbb")
    (folder / "g.nc").symlink_to(a)
    source, cache = LocalSource(str(folder)), ListingCache()
    (first,) = list(source.discover(cache=cache))
    assert first.url == a.resolve().as_uri() and first.revision.startswith("3-")
    (folder / "g.nc").unlink()
    (folder / "g.nc").symlink_to(b)  # retargeted: the link is never trusted by inode
    (again,) = list(source.discover(cache=cache))
    assert again.url == b.resolve().as_uri() and again.revision.startswith("5-")
    assert cache.stats == 1


def test_the_listing_is_stored_as_columns_and_the_older_pairs_still_read() -> None:
    cache = ListingCache({"a.nc": (7, "3-100"), "b.nc": (8, "5-200")}, full_at=12.5)
    text = cache.to_json()
    assert '"files"' not in text and ListingCache.from_json(text) == cache
    older = '{"full_at":12.5,"files":{"a.nc":[7,"3-100"],"b.nc":[8,"5-200"]}}'
    assert ListingCache.from_json(older) == cache  # an upgrade keeps trusting the listing
    torn = '{"full_at":1,"keys":["a.nc","b.nc"],"inodes":[7],"revisions":["3-100"]}'
    assert ListingCache.from_json(torn) == ListingCache()  # unreadable: a full listing


def test_an_unchanged_folder_is_not_listed_and_every_change_is_still_seen(
    make_config: MakeConfig, incoming: Path, monkeypatch: object
) -> None:
    """A flat folder whose (inode, mtime) the last listing saw is not listed again: only
    its recent files and unsettled rows are stat'ed. A name added, a name removed and a
    recent file rewritten in place (same inode, same folder mtime) are each seen."""
    import pytest

    from refstore.sources import local
    from refstore.synthetic import write_ccmp_like_granule, write_ccmp_like_series
    from tests.helpers import assert_same_values, direct_read, rewrite_in_place

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    listings: list[str] = []
    scandir = os.scandir

    def counted(path: object) -> object:  # os.scandir, counting the incoming folder's
        if Path(str(path)) == incoming:
            listings.append(str(path))
        return scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(local.os, "scandir", counted)

    def settle() -> None:  # the folder last changed a minute ago
        when = time.time() - 60
        os.utime(incoming, (when, when))

    def sync(expect_listing: bool) -> refstore.SyncResult:
        before = len(listings)
        result = refstore.sync(config)
        assert (len(listings) > before) == expect_listing, (expect_listing, result)
        return result

    files = write_ccmp_like_series(incoming, datetime(2024, 1, 1), 3, nlat=4, nlon=8)
    for f in files:
        os.utime(f, (time.time() - 7 * DAY, time.time() - 7 * DAY))
    config = make_config()
    assert len(sync(True).added) == 3
    settle()
    assert sync(True).up_to_date  # the folder's state moved (its mtime): listed once more
    result = sync(False)  # now unchanged since a settled listing: not listed
    assert result.up_to_date and result.discovered == 3
    # A new granule: the folder moves, it is listed and the granule lands.
    (new,) = write_ccmp_like_series(incoming, datetime(2024, 1, 4), 1, nlat=4, nlon=8)
    assert sync(True).added == (new.name,)
    # Listed within SETTLE s of the folder's last change: a name added in the same mtime
    # tick would share that mtime, so the folder is listed again.
    assert sync(True).up_to_date
    settle()
    sync(True)
    assert sync(False).up_to_date
    # The new granule is recent: rewritten in place (same inode, folder untouched), the
    # unlisted sync still stats it and puts the revision in place.
    inode, folder_state = new.stat().st_ino, os.stat(incoming).st_mtime_ns
    other = write_ccmp_like_granule(
        incoming.parent / "tmp.nc", datetime(2024, 1, 4), seed=5, steps_per_file=4, nlat=4, nlon=8
    )
    rewrite_in_place(new, other)
    assert new.stat().st_ino == inode and os.stat(incoming).st_mtime_ns == folder_state
    assert sync(False).added == (new.name,)
    assert_same_values(refstore.open_dataset(config).load(), direct_read([*files, new]))
    # Rewritten in place again while a name is added: the folder is listed, and the
    # listing (deciding by the last listing's recent files) still stats the recent one.
    settle()
    sync(True)
    back = write_ccmp_like_granule(
        incoming.parent / "tmp2.nc", datetime(2024, 1, 4), seed=6, steps_per_file=4, nlat=4, nlon=8
    )
    rewrite_in_place(new, back)
    (fifth,) = write_ccmp_like_series(incoming, datetime(2024, 1, 5), 1, nlat=4, nlon=8)
    assert sorted(sync(True).added) == sorted([new.name, fifth.name])
    files.append(fifth)
    assert_same_values(refstore.open_dataset(config).load(), direct_read([*files[:3], new, fifth]))
    # A granule removed: the folder moves, it is listed, the granule is missing.
    files[0].unlink()
    assert sync(True).missing == (files[0].name,)
