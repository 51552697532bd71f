"""Many writers, one S3 repository: every granule exactly once.

Each writer is a separate state folder (its own ledger, lock and export) pointed at one
Icechunk repository on the loopback moto server, as two cron hosts would be. The real
repository and ledgers are checked after real interleavings: in process (another writer's
commit injected at the exact moment between planning and committing) and through the CLI
(N writer processes at once, granules arriving while they run, random SIGKILLs).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import refstore
from refstore.concurrency import backoff, still_to_place
from refstore.config import Config, load_config
from refstore.errors import ConflictError
from refstore.ledger import Ledger
from refstore.models import Granule, LedgerRow, Status
from refstore.store import Store
from refstore.synthetic import write_ccmp_like_series
from tests.conftest import cli_env
from tests.helpers import assert_same_values, direct_read
from tests.remote_env import aws_env, bucket_name, s3_section, write_config
from tests.servers import MotoS3Server

SMALL = {"nlat": 8, "nlon": 16}  # tiny granules: the test is about commits, not bytes


# -- pure rules ---------------------------------------------------------------------------------
def _row(key: str, revision: str, offset: int | None, placed: str | None = None) -> LedgerRow:
    status = Status.COMMITTED if offset is not None else Status.NEW
    return LedgerRow(
        key=key,
        url=f"file:///x/{key}",
        revision=revision,
        status=status,
        offset=offset,
        placed_revision=placed
        if placed is not None
        else (revision if offset is not None else None),
    )


def test_still_to_place_drops_what_others_placed_and_replaces_other_revisions() -> None:
    batch = [Granule("a", "u", "r1"), Granule("b", "u", "r1"), Granule("c", "u", "r2")]
    rows = {"a": _row("a", "r1", 0), "c": _row("c", "r1", 4)}  # b: nobody placed it
    rest = still_to_place(batch, rows)
    assert rest.keys == ("b", "c")
    assert rest.placed_by_others == ("a",)
    assert dict(rest.replacing) == {"c": "r1"}
    # A row that is known but not in the store (virtualized, quarantined) stays to place.
    assert still_to_place(batch[:1], {"a": _row("a", "r1", None)}).keys == ("a",)


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [[backoff(n, rng) for _ in range(200)] for n in (1, 2, 3, 12)]
    assert all(0.02 <= d <= 0.22 for d in delays[0])
    assert max(delays[1]) > 0.25 and max(delays[2]) > 0.5  # grows with the attempts
    assert max(delays[3]) <= 5.02  # capped
    assert len({round(d, 6) for d in delays[3]}) > 150  # two losers do not retry together


# -- in process: a commit lands between planning and committing ----------------------------------
def _writer_config(
    folder: Path, s3: MotoS3Server, repo: str, incoming: Path, **sync: Any
) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    write_config(
        folder,
        {
            "source": {"url": str(incoming)},
            "store": s3_section(s3, repo=repo),
            "sync": {"executor": "serial", **sync},
        },
    )
    return load_config(folder / "refstore.toml", environ={})


@pytest.fixture
def s3_repo(moto: MotoS3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    aws_env(monkeypatch, moto)
    bucket = bucket_name("writers")
    moto.make_bucket(bucket)
    return f"s3://{bucket}/repo"


def _race_at_head(monkeypatch: pytest.MonkeyPatch, rival: Callable[[], Any], times: int) -> None:
    """Run ``rival`` (another writer's sync) the first ``times`` times any writer reads
    the store's head while placing a batch: right after the tip was reconciled and
    before the commit, the window optimistic concurrency has to close."""
    real_head = Store.head
    left = [times]
    busy: list[bool] = []  # the rival's own reads of the head are its own business

    def head(self: Store, at: str | None = None) -> Any:
        if left[0] > 0 and not busy:
            left[0] -= 1
            busy.append(True)
            try:
                rival()
            finally:
                busy.clear()
        return real_head(self, at)

    monkeypatch.setattr(Store, "head", head)


def _history_keys(config: Config) -> Counter[str]:
    """How many times the history added each granule (placements of appends/creates)."""
    from refstore.access import open_bound
    from refstore.sources import source_for

    store, _ = open_bound(config, source_for(config))
    counts: Counter[str] = Counter()
    for c in store.commits():
        counts.update(c.granules)
    return counts


def test_a_lost_race_reconciles_drops_the_winners_granules_and_places_the_rest(
    tmp_path: Path, moto: MotoS3Server, s3_repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    incoming = tmp_path / "incoming"
    files = write_ccmp_like_series(incoming, datetime(2024, 1, 1), 4, **SMALL)
    first = _writer_config(tmp_path / "a", moto, s3_repo, incoming)
    refstore.sync(first)  # the store exists with 4 granules; both writers know it
    more = write_ccmp_like_series(incoming, datetime(2024, 1, 5), 4, **SMALL)
    a = first
    b = _writer_config(tmp_path / "b", moto, s3_repo, incoming)  # a new machine: empty ledger

    won: list[refstore.SyncResult] = []
    with monkeypatch.context() as m:
        _race_at_head(m, lambda: won.append(refstore.sync(a)), times=1)
        lost = refstore.sync(b)

    # A won the race with all 4 new granules; B lost, reconciled, and had nothing left.
    assert won[0].added == tuple(f.name for f in more)
    assert lost.added == () and lost.snapshots == ()
    assert all(n == 1 for n in _history_keys(b).values())
    assert set(_history_keys(b)) == {f.name for f in files + more}
    for config in (a, b):
        with Ledger(config.ledger) as ledger:
            rows = ledger.rows()
        got = {k for k, r in rows.items() if r.status is Status.COMMITTED}
        assert got == {f.name for f in files + more}, config.ledger
    assert_same_values(refstore.open_dataset(b).load(), direct_read(files + more))


def test_gives_up_after_commit_retries_with_a_clear_error(
    tmp_path: Path, moto: MotoS3Server, s3_repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    incoming = tmp_path / "incoming"
    files = write_ccmp_like_series(incoming, datetime(2024, 1, 1), 2, **SMALL)
    # A lists days 1-5 only; B lists everything, and its own batch is day 9.
    a = _writer_config(tmp_path / "a", moto, s3_repo, incoming / "*_2024010[1-5]_*.nc")
    refstore.sync(a)
    b = _writer_config(tmp_path / "b", moto, s3_repo, incoming, commit_retries=2)
    mine = write_ccmp_like_series(incoming, datetime(2024, 1, 9), 1, **SMALL)
    arriving = write_ccmp_like_series(tmp_path / "later", datetime(2024, 1, 3), 3, **SMALL)

    def rival() -> None:  # one more granule for A, committed in B's window every time
        path = arriving.pop(0)
        os.replace(path, incoming / path.name)
        assert len(refstore.sync(a).added) == 1

    with monkeypatch.context() as m:
        _race_at_head(m, rival, times=3)
        with pytest.raises(ConflictError) as info:
            refstore.sync(b)
    assert "after 3 attempt(s)" in info.value.message and s3_repo in info.value.message
    assert "commit_retries" in info.value.hint
    # Nothing half-done: A's five granules once each, B's not at all, B's ledger not lying.
    assert _history_keys(a) == Counter(
        {f"CCMP_Wind_Analysis_2024010{d}_V03.1_L4.nc": 1 for d in range(1, 6)}
    )
    with Ledger(b.ledger) as ledger:
        row = ledger.row(mine[0].name)
    assert row is not None and not row.in_store and row.status is not Status.COMMITTED
    # The next run (no rival) places it once.
    assert refstore.sync(b).added == (mine[0].name,)
    assert max(_history_keys(b).values()) == 1 and len(files) == 2


# -- through the CLI: N writer processes, arrivals while they run, random kills ------------------
def _start(folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``refstore sync --json`` in its own process group (as a separate host runs it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "refstore", "sync", "--json", "--no-progress"],
        cwd=folder,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _round(
    folders: list[Path],
    env: dict[str, str],
    rng: random.Random,
    *,
    kill: bool,
    fault: int | None = None,
    arrive: Callable[[], None] | None = None,
) -> list[str]:
    """Run one sync per writer at once; optionally SIGKILL one at a random moment, let
    granules ``arrive`` while they run. Returns what happened to each writer."""
    procs: list[subprocess.Popen[str]] = []
    for i, folder in enumerate(folders):
        time.sleep(rng.uniform(0, 0.3))
        extra = {"REFSTORE_FAULT": "after-commit"} if i == fault else {}
        procs.append(_start(folder, {**env, **extra}))
    victim = rng.randrange(len(procs)) if kill else None
    kill_at = time.monotonic() + rng.uniform(0.5, 6.0)
    pending = [arrive] if arrive is not None else []
    outcomes: list[str] = []
    while any(p.poll() is None for p in procs):
        if pending and time.monotonic() > kill_at - 2.0:
            pending.pop()()
        if victim is not None and time.monotonic() > kill_at:
            if procs[victim].poll() is None:
                os.killpg(procs[victim].pid, signal.SIGKILL)
            victim = None
        time.sleep(0.05)
    if pending:
        pending.pop()()
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=60)
        if p.returncode == 0:
            got = json.loads(out)
            outcomes.append(
                f"w{i}: +{len(got['added'])} lost {got['conflicts']} race(s), "
                f"{len(got['placed_elsewhere'])} placed by others"
            )
        elif p.returncode == -signal.SIGKILL:
            outcomes.append(f"w{i}: killed")
        else:
            raise AssertionError(f"writer {i} failed ({p.returncode}):\n{out}\n{err}")
    return outcomes


def _writers_trial(
    tmp_path: Path, s3: MotoS3Server, rng: random.Random, *, writers: int, days: int
) -> list[str]:
    """Granules arrive in three waves while ``writers`` sync at once (round 1: one writer
    dies right after a commit, another at a random moment; round 2: a random kill; round
    3: every writer and a new machine settle), then every writer syncs once more in
    process. Checks the head holds every granule once in sorted place and that every
    ledger equals the history."""
    bucket = bucket_name("writers")
    s3.make_bucket(bucket)
    repo = f"s3://{bucket}/repo"
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    files = write_ccmp_like_series(tmp_path / "archive", datetime(2024, 1, 1), days, **SMALL)
    waves = [files[i::3] for i in range(3)]  # each wave spans the period: late ones too
    for f in waves[0]:
        os.link(f, incoming / f.name)

    def wave(n: int) -> Callable[[], None]:
        def land() -> None:
            for f in waves[n]:
                os.link(f, incoming / f.name)

        return land

    configs = [
        _writer_config(tmp_path / f"w{i}", s3, repo, incoming, batch_size=2) for i in range(writers)
    ]
    folders = [tmp_path / f"w{i}" for i in range(writers)]
    env = cli_env()
    log = [f"round 1: {_round(folders, env, rng, kill=True, fault=0, arrive=wave(1))}"]
    log.append(f"round 2: {_round(folders, env, rng, kill=True, arrive=wave(2))}")
    newcomer = _writer_config(tmp_path / "new", s3, repo, incoming, batch_size=2)
    log.append(f"round 3: {_round([*folders, tmp_path / 'new'], env, rng, kill=False)}")
    configs.append(newcomer)
    for config in configs:  # one more sync each: nothing left to add anywhere
        assert refstore.sync(config).added == (), log

    expected = direct_read(files)
    assert_same_values(refstore.open_dataset(newcomer).load(), expected)
    names = [f.name for f in files]  # name order is time order
    views = []
    for config in configs:
        with Ledger(config.ledger) as ledger:
            rows = ledger.rows()
        assert sorted(rows) == names, (config.ledger, log)
        assert all(r.status is Status.COMMITTED for r in rows.values()), (config.ledger, log)
        views.append([(k, rows[k].offset, rows[k].placed_revision) for k in names])
    assert [offset for _, offset, _ in views[-1]] == [4 * i for i in range(days)], log
    assert all(v == views[-1] for v in views), log
    assert_same_values(refstore.open_dataset(configs[0], source="export").load(), expected)
    return log


def test_three_writers_through_the_cli_every_granule_once(
    tmp_path: Path, moto: MotoS3Server, s3_repo: str
) -> None:
    seed = random.randrange(1 << 30)
    log = _writers_trial(tmp_path, moto, random.Random(seed), writers=3, days=9)
    print(f"seed {seed}", *log, sep="\n")


@pytest.mark.slow
def test_writers_soak(tmp_path: Path, moto: MotoS3Server, s3_repo: str) -> None:
    """Randomized: ``REFSTORE_WRITERS_TRIALS`` trials (default 5) of 4 writers, 18 days."""
    for trial in range(int(os.environ.get("REFSTORE_WRITERS_TRIALS", "5"))):
        seed = random.randrange(1 << 30)
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        try:
            _writers_trial(folder, moto, random.Random(seed), writers=4, days=18)
        except AssertionError as e:
            raise AssertionError(f"trial {trial} (seed {seed}) failed: {e}") from e
