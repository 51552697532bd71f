"""The ledger's mirror of the repository head and log (refstore.mirror): status, log,
ls and a no-op sync answer without importing Icechunk while it is current, and see the
real head as soon as another writer (a second ledger, plain Icechunk) moves it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from refstore.config import load_config
from refstore.ledger import Ledger, read_meta
from refstore.mirror import KEY, Mirror, load
from refstore.repo_ref import state_token
from refstore.sync import RECONCILED
from tests.conftest import cli_env, run_cli
from tests.remote_env import aws_env, bucket_name

HEAVY = ("xarray", "zarr", "icechunk", "virtualizarr", "sqlite_utils", "numpy")
SMALL = {"nlat": 8, "nlon": 16}

# Runs the CLI and reports, at exit, which heavy modules it imported (on stderr).
_TRACE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    f"'HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules) + '\\n'))\n"
    "sys.argv = ['refstore', *sys.argv[1:]]\n"
    "from refstore.cli import main\n"
    "main()\n"
)


def traced(*args: str, cwd: Path) -> tuple[str, list[str]]:
    """Run the CLI; its stdout and the heavy modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-c", _TRACE, *args],
        cwd=cwd,
        env=cli_env(),
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    return proc.stdout, [m for m in line.removeprefix("HEAVY=").split(",") if m]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from refstore.synthetic import write_ccmp_like_series

    folder = tmp_path_factory.mktemp("pool")
    return write_ccmp_like_series(folder, datetime(2024, 1, 1), 4, **SMALL)


def _state(root: Path, incoming: Path) -> Path:
    """A state folder (its own refstore.toml, ledger, lock, export) on ``root/repo``."""
    folder = root / f"state-{len(list(root.glob('state-*')))}"
    folder.mkdir()
    (folder / "refstore.toml").write_text(
        f'[dataset]\nconcat_dim = "time"\n[source]\nurl = "{incoming}"\n'
        f'[store]\nrepo = "{root / "repo"}"\nledger = "ledger.db"\n'
        'export = "export/refs.parquet"\n'
    )
    return folder


@pytest.fixture
def store(tmp_path: Path, pool: list[Path]) -> Callable[..., Path]:
    """A store of the first ``n`` pool granules (one sync each); returns its folder."""

    def make(n: int, tag: str | None = None) -> Path:
        incoming = tmp_path / "incoming"
        incoming.mkdir(exist_ok=True)
        folder = _state(tmp_path, incoming)
        for i, p in enumerate(pool[:n]):
            shutil.copy2(p, incoming / p.name)
            extra = ["--tag", tag] if tag and i == n - 1 else []
            run_cli("sync", "--executor", "serial", *extra, cwd=folder)
        return folder

    return make


def _log(folder: Path) -> tuple[list[dict[str, object]], list[str]]:
    out, heavy = traced("log", "--json", cwd=folder)
    return json.loads(out), heavy


def _head(folder: Path) -> str:
    import icechunk

    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(folder.parent / "repo")))
    return str(repo.lookup_branch("main"))


# -- the token -------------------------------------------------------------------------------
def test_state_token_is_none_without_a_readable_icechunk_2_repository(tmp_path: Path) -> None:
    assert state_token(str(tmp_path / "none")) is None
    (tmp_path / "repo").write_bytes(b"not an icechunk file")
    assert state_token(str(tmp_path)) is None  # unknown layout: ask Icechunk


def test_a_mirror_is_current_only_while_its_token_is(store: Callable[..., Path]) -> None:
    folder = store(1)
    cfg = load_config(folder / "refstore.toml", environ={})
    text = read_meta(cfg.ledger, KEY)
    mirror = Mirror.from_json(text)
    assert mirror is not None and mirror.tip == _head(folder)
    assert load(cfg, text) == mirror
    stale = text.replace(mirror.token, "sha256:" + "0" * 64) if text else None
    assert load(cfg, stale) is None


# -- readers answer from the ledger ------------------------------------------------------------
def test_status_log_ls_and_a_noop_sync_import_no_icechunk(store: Callable[..., Path]) -> None:
    folder = store(2)
    for args in (("status", "--json"), ("log", "--json"), ("ls",), ("sync", "--json")):
        out, heavy = traced(*args, cwd=folder)
        if args[0] == "sync":  # it writes the ledger through sqlite-utils; plans with numpy
            heavy = [m for m in heavy if m not in ("sqlite_utils", "numpy")]
        assert heavy == [], f"refstore {' '.join(args)} imported {heavy}"
    assert json.loads(out)["snapshots"] == []  # the sync above was a no-op
    entries, _ = _log(folder)
    assert entries[0]["snapshot"] == _head(folder)


def test_another_ledger_moving_the_head_is_seen_by_status_log_and_sync(
    tmp_path: Path, store: Callable[..., Path], pool: list[Path]
) -> None:
    first = store(1)
    second = _state(tmp_path, tmp_path / "incoming")
    shutil.copy2(pool[1], tmp_path / "incoming" / pool[1].name)
    run_cli("sync", "--executor", "serial", cwd=second)  # its own ledger and lock
    head = _head(first)

    status, heavy = traced("status", "--json", cwd=first)
    assert json.loads(status)["head"] == head and json.loads(status)["length"] == 8
    assert json.loads(status)["ledger_behind"] is True  # its rows are not reconciled yet
    assert "icechunk" in heavy  # the mirror was stale: Icechunk answered
    entries, heavy = _log(first)
    assert entries[0]["snapshot"] == head and heavy == []  # status saved a fresh mirror
    assert "the ledger is behind the repository" in run_cli("ls", cwd=first).stderr
    run_cli("sync", "--executor", "serial", cwd=first)
    assert "behind" not in run_cli("ls", cwd=first).stderr
    assert json.loads(run_cli("status", "--json", cwd=first).stdout)["ledger_behind"] is False
    with Ledger(first / "ledger.db", readonly=True) as ledger:
        assert ledger.get_meta(RECONCILED) == head
        assert {r.key: r.in_store for r in ledger.rows().values()} == {
            p.name: True for p in pool[:2]
        }


def test_a_plain_icechunk_commit_and_tag_are_seen(store: Callable[..., Path]) -> None:
    import icechunk
    import zarr

    folder = store(1)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(folder.parent / "repo")))
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="r+").attrs["note"] = "outside refstore"
    outside = session.commit("an outside commit")
    repo.create_tag("outside-tag", snapshot_id=outside)

    entries, _ = _log(folder)
    assert entries[0]["snapshot"] == outside and entries[0]["tags"] == ["outside-tag"]
    run_cli("sync", "--executor", "serial", cwd=folder)  # a no-op that must reconcile
    with Ledger(folder / "ledger.db", readonly=True) as ledger:
        assert ledger.get_meta(RECONCILED) == outside


# -- writers keep it current ------------------------------------------------------------------
def test_tag_and_gc_keep_the_mirror_current(store: Callable[..., Path]) -> None:
    folder = store(3, tag="v3")
    entries, heavy = _log(folder)
    assert heavy == [] and entries[0]["tags"] == ["v3"] and len(entries) == 4  # + root

    run_cli("gc", "--keep-last", "1", "--keep-days", "0", cwd=folder)
    entries, heavy = _log(folder)
    assert heavy == []  # gc refreshed the mirror
    assert [e["tags"] for e in entries] == [["v3"], []]  # head, then the root


def test_a_refresh_from_a_base_equals_reading_the_whole_history(
    store: Callable[..., Path],
) -> None:
    """A sync refreshes the mirror from the one current at its start, reading only the
    snapshots after that one's tip; tags anywhere and a reset branch still come out as a
    full read of the history would give them."""
    import icechunk
    import zarr

    from refstore.mirror import capture

    folder = store(2)
    cfg = load_config(folder / "refstore.toml", environ={})
    base = capture(cfg)
    assert base is not None and len(base.log) == 3  # two syncs and the root
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(folder.parent / "repo")))

    def outside_commit(note: str) -> str:
        session = repo.writable_session("main")
        zarr.open_group(session.store, mode="r+").attrs["note"] = note
        return str(session.commit(note))

    # New snapshots after the base's tip, and a tag on a snapshot the base already held.
    outside_commit("one")
    repo.create_tag("old", snapshot_id=base.log[1][0].snapshot)
    grown = capture(cfg, base=base)
    assert grown == capture(cfg) and grown is not None and len(grown.log) == 4
    assert {c.snapshot: t for c, t in grown.log}[base.log[1][0].snapshot] == ("old",)

    # main reset behind the base's tip, then moved on: the base's log is no longer history.
    repo.reset_branch("main", base.log[1][0].snapshot)
    outside_commit("two")
    reset = capture(cfg, base=base)
    assert reset == capture(cfg) and reset is not None
    assert base.tip not in {c.snapshot for c, _ in reset.log}


def test_s3_token_is_one_head_request_and_changes_with_the_repository(
    moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import icechunk

    from refstore.storage import S3Options

    aws_env(monkeypatch, moto)
    bucket = bucket_name("mirror")
    moto.make_bucket(bucket)
    url = f"s3://{bucket}/store"
    options = S3Options(region=moto.region, endpoint_url=moto.endpoint_url, allow_http=True)
    assert state_token(url, options) is None  # no repository yet
    repo = icechunk.Repository.create(moto.icechunk_storage(bucket, "store"))
    before = len(moto.requests)
    created = state_token(url, options)
    assert created is not None and len(moto.requests) == before + 1
    assert state_token(url, options) == created
    repo.create_tag("t", snapshot_id=repo.lookup_branch("main"))
    assert state_token(url, options) not in (None, created)
    wrong = S3Options(region=moto.region, endpoint_url="http://127.0.0.1:9", allow_http=True)
    assert state_token(url, wrong) is None  # unreachable: the caller asks Icechunk
