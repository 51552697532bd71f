"""A glob across folders is listed folder by folder, each only when it moved (issue 12):
a +1 in a decade of daily folders lists one folder. Real folders, real inodes, the real
sync; the matching is checked against pathlib's own glob."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import refstore
from refstore.sources import tree
from refstore.sources.local import LocalSource
from refstore.synthetic import write_ccmp_like_granule
from tests.conftest import MakeConfig
from tests.helpers import assert_same_values, direct_read, rewrite_in_place

DAY = 86400.0
LAYOUT = [
    "2023/364/a.nc",
    "2023/365/b.NC",
    "2024/001/c.nc",
    "2024/001/.partial.nc",
    "2024/001/notes.txt",
    "2024/002/d.h5",
    "2024/002/deeper/e.nc",
    "2024/.hidden/f.nc",
    "top.nc",
]


@pytest.mark.parametrize(
    "pattern",
    [
        "**/*.nc",
        "*/*/*.nc",
        "*/*/*.NC",
        "20??/00[12]/*.nc",
        "2024/**/*.nc",
        "**/deeper/*.nc",
        "[!2]*/*.nc",
        "*/*/*",
        "2023/*/[ab].*",
    ],
)
def test_the_walk_matches_what_pathlib_globs(tmp_path: Path, pattern: str) -> None:
    for rel in LAYOUT:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    expected = sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.glob(pattern, case_sensitive=False)
        if p.is_file() and not p.name.startswith(".")
    )
    walked = tree.walk(
        str(tmp_path), pattern, tree.TreeState(), lambda _: {}, now=time.time(), rescan_hours=24
    )
    assert sorted(walked.changed) == expected
    source = LocalSource(str(tmp_path / pattern))  # keys start below the fixed part
    keys = sorted(str((source.root / g.key).relative_to(tmp_path)) for g in source.discover())
    assert keys == expected


def _granule(incoming: Path, t: datetime, seed: int = 0) -> Path:
    folder = incoming / f"{t:%Y}" / f"{t:%j}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"G_{t:%Y%m%dT%H}.nc"
    write_ccmp_like_granule(path, t, steps_per_file=1, nlat=4, nlon=8, seed=seed)
    return path


def _age(*paths: Path, seconds: float) -> None:
    when = time.time() - seconds
    for p in paths:
        os.utime(p, (when, when))


def test_a_nested_archive_lists_only_the_folders_that_moved(
    make_config: MakeConfig, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[str] = []
    scandir = os.scandir

    def counted(path: str) -> object:  # os.scandir, recording the folders under incoming
        if str(path).startswith(str(incoming)):
            listed.append(os.path.relpath(path, incoming))
        return scandir(path)

    monkeypatch.setattr(tree.os, "scandir", counted)

    def sync() -> tuple[refstore.SyncResult, list[str]]:
        before = len(listed)
        result = refstore.sync(config)
        return result, sorted(listed[before:])

    def settle() -> None:  # every folder last changed a minute ago
        _age(*[p for p in incoming.rglob("*") if p.is_dir()], incoming, seconds=60)

    start = datetime(2024, 1, 1)
    files = [_granule(incoming, start + timedelta(hours=6 * i)) for i in range(12)]  # 3 days
    _age(*files, seconds=7 * DAY)
    config = make_config(source="incoming/**/*.nc")
    result, _ = sync()
    assert len(result.added) == 12
    every = sorted(os.path.relpath(p, incoming) for p in incoming.rglob("*") if p.is_dir())
    settle()  # mtimes set back (as rsync -t does): each folder's state moved all the same
    assert sync()[1] == [".", *every]
    result, folders = sync()
    assert result.up_to_date and result.discovered == 12 and folders == []
    assert not result.missing
    # +1 in the newest day's folder: that folder alone is listed.
    new = _granule(incoming, start + timedelta(hours=69))  # one more on day 3
    files.append(new)
    result, folders = sync()
    assert result.added == ("2024/003/" + new.name,) and folders == ["2024/003"]
    # A new day: its year folder moved (a new name in it) and the day folder is new.
    day4 = _granule(incoming, start + timedelta(days=3))
    files.append(day4)
    result, folders = sync()
    assert result.added == ("2024/004/" + day4.name,)
    # (2024/003 again: it moved less than SETTLE s before the listing that recorded it.)
    assert folders == ["2024", "2024/003", "2024/004"]
    settle()
    sync()
    result, folders = sync()
    assert result.up_to_date and folders == [] and not result.missing
    # The newest granule is recent: rewritten in place (same inode, folder untouched),
    # the walk stats it without listing any folder, and the revision is put in place.
    inode, folder_mtime = day4.stat().st_ino, day4.parent.stat().st_mtime_ns
    spare = incoming.parent / "spare"
    spare.mkdir()
    other = write_ccmp_like_granule(
        spare / "x.nc", start + timedelta(days=3), steps_per_file=1, nlat=4, nlon=8, seed=3
    )
    rewrite_in_place(day4, other)
    assert day4.stat().st_ino == inode and day4.parent.stat().st_mtime_ns == folder_mtime
    result, folders = sync()
    assert result.added == ("2024/004/" + day4.name,) and folders == []
    assert_same_values(refstore.open_dataset(config).load(), direct_read(sorted(files)))
    # A whole day folder removed: its parent moved; its granules are missing.
    gone = sorted((incoming / "2024" / "001").iterdir())
    for p in gone:
        p.unlink()
    (incoming / "2024" / "001").rmdir()
    result, folders = sync()
    assert sorted(result.missing) == sorted(f"2024/001/{p.name}" for p in gone)
    assert folders == ["2024"]
