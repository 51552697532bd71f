"""A granule's whole life as a Hypothesis ``RuleBasedStateMachine`` over real NetCDF4
granules, a real Icechunk repository and a real SQLite ledger.

Rules: arrive (any day, any order), revise (new bytes, same steps), break (truncate),
delete, restore (the same file back, unchanged), sync, sync with a tag (new or taken),
kill a sync at a fault step (in-process at the checkpoint, or a real subprocess SIGKILLed
by ``REFSTORE_FAULT``) and rerun, ``retry``. Invariants after every rule:

- the head holds every day that ever had a good revision synced, exactly once, at its
  sorted place; days whose file is still the one committed read equal to that file;
- the ledger equals the history (placements and revisions);
- the export equals the head;
- ``refstore status`` exits 0 and lists as unavailable exactly the placed days whose
  file changed or vanished;
- every earlier tag still opens what it held.

Short by default; ``-m slow`` runs ``REFSTORE_MACHINE_EXAMPLES`` (default 100) examples of
up to ``REFSTORE_MACHINE_STEPS`` (default 25) steps and prints the figures.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import refstore
import refstore.faults
from refstore.api import open_store
from refstore.cli import cli
from refstore.config import Config, load_config, render_toml
from refstore.errors import ConflictError
from refstore.faults import STEPS
from refstore.ledger import Ledger
from refstore.synthetic import write_ccmp_like_series
from refstore.verify import layout_at
from tests.conftest import cli_env

DAYS = 4
STEP = np.timedelta64(6, "h")
START = datetime(2024, 1, 1)
# Fault steps a run reaches only after its Icechunk commit.
AFTER_COMMIT = frozenset({"after-commit", "during-export", "during-incremental-export"})
FIGURES: dict[str, Any] = {"examples": 0, "steps": 0, "rules": {}, "states": set()}


@cache
def _granule(day: int, seed: int) -> tuple[str, bytes]:
    """Name and bytes of day ``day`` written with ``seed`` (cached per session)."""
    folder = Path(tempfile.mkdtemp(prefix="refstore-machine-"))
    (path,) = write_ccmp_like_series(
        folder, START + timedelta(days=day), 1, nlat=4, nlon=8, seed=seed
    )
    data = path.read_bytes()
    shutil.rmtree(folder)
    return path.name, data


@cache
def _expected(day: int, seed: int) -> xr.Dataset:
    name, data = _granule(day, seed)
    folder = Path(tempfile.mkdtemp(prefix="refstore-machine-"))
    (folder / name).write_bytes(data)
    with xr.open_dataset(folder / name, engine="h5netcdf") as ds:
        loaded = ds.load()
    shutil.rmtree(folder)
    return loaded


def _times(days: list[int]) -> np.ndarray:
    first = np.datetime64(START, "ns")
    return np.array(
        [first + np.timedelta64(d, "D") + k * STEP for d in sorted(days) for k in range(4)],
        dtype="datetime64[ns]",
    )


class _Killed(BaseException):
    """Stands for SIGKILL at a checkpoint, in-process."""


@contextlib.contextmanager
def _fault_at(step: str) -> Iterator[None]:
    def checkpoint(name: str) -> None:
        if name == step:
            raise _Killed(name)

    wiring: Any = importlib.import_module("refstore.sync")  # the package exports sync()
    faults: Any = refstore.faults
    saved = faults.checkpoint, wiring.checkpoint
    faults.checkpoint = checkpoint
    wiring.checkpoint = checkpoint
    try:
        yield
    finally:
        faults.checkpoint, wiring.checkpoint = saved


@dataclass
class Upstream:
    """What the model knows about one day's file."""

    seed: int | None = None  # None: never arrived
    broken: bool = False
    generation: int = 0  # bumped on every write: a new revision
    in_attic: bool = False  # deleted (kept aside to restore unchanged)


@dataclass
class Placed:
    """A day in the store, as the model expects it."""

    seed: int
    generation: int


@dataclass
class TagView:
    days: dict[int, Placed] = field(default_factory=dict)


class GranuleLife(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="refstore-life-"))
        self.incoming = self.root / "incoming"
        self.attic = self.root / "attic"
        self.incoming.mkdir()
        self.attic.mkdir()
        text = render_toml(source_url="incoming") + '[sync]\nexecutor = "serial"\n'
        (self.root / "refstore.toml").write_text(text)
        self.config: Config = load_config(self.root / "refstore.toml", environ={})
        self.up = {d: Upstream() for d in range(DAYS)}
        self.placed: dict[int, Placed] = {}
        self.tags: dict[str, TagView] = {}
        self.next_seed = 1
        self.steps = 0
        self.unavailable: set[str] = set()
        FIGURES["examples"] += 1

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------
    def _count(self, name: str, day: int | None = None) -> None:
        note(f"step {self.steps}: {name}" + ("" if day is None else f" day {day}"))
        self.steps += 1
        FIGURES["steps"] += 1
        FIGURES["rules"][name] = FIGURES["rules"].get(name, 0) + 1

    def _path(self, day: int) -> Path:
        return self.incoming / _granule(day, 0)[0]

    def _write(self, day: int, seed: int, broken: bool) -> None:
        _, data = _granule(day, seed)
        u = self.up[day]
        if broken:  # truncated at a length of its own: each upload fails its own way
            data = data[: 2000 + 97 * u.generation + 13 * day]
        self._path(day).write_bytes(data)
        u.seed, u.broken, u.generation = seed, broken, u.generation + 1

    def _readable(self, day: int) -> bool:
        """Whether the store can serve this day: its committed file is still there."""
        p, u = self.placed.get(day), self.up[day]
        return p is not None and not u.in_attic and u.generation == p.generation

    def _settle(self) -> None:
        """The model after a complete sync.

        Each present day whose newest revision is good and not the one placed is a
        candidate. Days after the store's end are appended. The others are put in place:
        the references from the first change to the last one are rewritten, and the
        placed days in between (not candidates themselves) are re-read from their
        files; if one of those cannot be read (broken or deleted), the put-in-place
        candidates wait (retried by the next sync) and only the appends land.
        """
        placed = sorted(self.placed)
        candidates = {
            d
            for d, u in self.up.items()
            if u.seed is not None
            and not u.in_attic
            and not u.broken
            and (d not in self.placed or self.placed[d].generation != u.generation)
        }
        end = max(placed, default=-1)
        appends = {d for d in candidates if d not in self.placed and d > end}
        inplace = candidates - appends
        land = set(appends)
        if inplace:
            timeline = sorted(set(placed) | candidates)
            changed = [i for i, d in enumerate(timeline) if d in candidates or placed.index(d) != i]
            window = timeline[min(changed) : max(changed) + 1]
            reread = [d for d in window if d not in candidates]
            if all(self._readable(d) for d in reread):
                land |= inplace
        for day in land:
            u = self.up[day]
            assert u.seed is not None
            self.placed[day] = Placed(u.seed, u.generation)
        # status reports what the last sync saw
        self.unavailable = {self._path(d).name for d in self.placed if not self._readable(d)}
        FIGURES["states"].add(
            tuple(
                (
                    "none"
                    if u.seed is None
                    else "attic"
                    if u.in_attic
                    else "broken"
                    if u.broken
                    else "good",
                    day in self.placed,
                    self._readable(day),
                )
                for day, u in sorted(self.up.items())
            )
        )

    def _sync(self, tag: str | None = None) -> Any:
        result = refstore.sync(self.config, tag=tag)
        self._settle()
        return result

    # -- the one rule ---------------------------------------------------------------------
    @initialize(rnd=st.randoms(use_true_random=False))
    def start(self, rnd: random.Random) -> None:
        self.rnd = rnd

    @rule()
    def step(self) -> None:
        """One step: an upstream change or a sync of some kind, half and half.

        Chosen with a random generator Hypothesis draws per example, not a strategy
        per step: Hypothesis' per-step choices tend to repeat one rule for a whole
        example (all arrivals, or all syncs), which explores little of the life.
        """
        if self.rnd.random() < 0.5:
            self.upstream(self.rnd)
        else:
            kinds = ["sync", "tag", "retry", "sigkill", "concurrent", *(f"kill:{s}" for s in STEPS)]
            weights = [3, 2, 1, 0.5, 0.5, *([1] * len(STEPS))]
            self.sync(self.rnd.choices(kinds, weights)[0], self.rnd)

    # -- upstream -----------------------------------------------------------------------
    def _days(self, action: str) -> list[int]:
        """The days ``action`` applies to now."""
        if action == "arrive":
            return [d for d, u in self.up.items() if u.seed is None]
        if action == "restore":
            return [d for d, u in self.up.items() if u.in_attic]
        return [d for d, u in self.up.items() if u.seed is not None and not u.in_attic]

    def upstream(self, rnd: random.Random) -> None:
        """Something happens to one day's file upstream.

        arrive (any day, so late and out of order too; sometimes a broken upload),
        revise (re-processed: new values, same steps; also fixes a broken one), break
        (replaced by a truncated upload), delete, restore (the same file back, same
        bytes and modification time).
        """
        actions = [a for a in ("arrive", "revise", "break", "delete", "restore") if self._days(a)]
        action = rnd.choice(actions)
        day = rnd.choice(self._days(action))
        self._count(action, day)
        u = self.up[day]
        if action == "arrive":
            self._write(day, 0, rnd.choice([False, False, True]))
        elif action == "revise":
            self._write(day, self.next_seed, False)
            self.next_seed += 1
        elif action == "break":
            assert u.seed is not None
            self._write(day, u.seed, True)
        elif action == "delete":
            self._path(day).rename(self.attic / self._path(day).name)
            u.in_attic = True
        else:
            (self.attic / self._path(day).name).rename(self._path(day))
            u.in_attic = False

    # -- syncs --------------------------------------------------------------------------
    def sync(self, how: str, rnd: random.Random) -> None:
        """A sync: plain; with a tag (new or taken); `retry`; killed at a fault step
        (in-process at the checkpoint, or a real subprocess SIGKILLed by REFSTORE_FAULT)
        and run again."""
        if how == "tag":
            name = rnd.choice(["a", "b", "c"])
            self._count("sync_with_tag")
            taken = name in self.tags
            result = self._sync(tag=name)
            if result.snapshots and taken:
                assert result.tag_refused and "exists already" in result.tag_refused
            elif result.snapshots:
                assert result.tag_refused is None
                self.tags[name] = TagView(dict(self.placed))
            else:
                assert result.tag_refused is None
            return
        if how == "concurrent":
            self._concurrent(rnd)
            return
        if how == "retry":
            self._count("retry")
            with Ledger(self.config.ledger) as ledger:
                ledger.requeue_quarantined()
        elif how == "sigkill":
            step = rnd.choice(STEPS)
            self._count(f"sigkill:{step}")
            proc = subprocess.run(
                [sys.executable, "-m", "refstore", "sync"],
                cwd=self.root,
                env=cli_env({"REFSTORE_FAULT": step}),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            # A step the run never reaches (nothing to commit or export) lets it finish.
            assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
            self._killed_after(step)
        elif how.startswith("kill:"):
            self._count(how)
            step = how.removeprefix("kill:")
            with contextlib.suppress(_Killed), _fault_at(step):
                refstore.sync(self.config)
            self._killed_after(step)
        else:
            self._count("sync")
        self._sync()

    def _concurrent(self, rnd: random.Random) -> None:
        """Two syncs at once: a real subprocess and this process, started a random
        moment apart. Each either runs whole or stops at once on the store lock
        (exit 7, ConflictError); the model settles once per sync that ran."""
        self._count("concurrent_sync")
        proc = subprocess.Popen(
            [sys.executable, "-m", "refstore", "sync"],
            cwd=self.root,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(rnd.uniform(0, 1.5))  # the subprocess takes ~1 s to import
        ran = 0
        try:
            refstore.sync(self.config)
            ran += 1
        except ConflictError as e:
            assert "Another refstore process" in str(e)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 7), err
        if proc.returncode == 7:
            assert "Another refstore process" in err and "Traceback" not in err
        else:
            ran += 1
        assert ran >= 1  # the lock never refuses both
        FIGURES["rules"]["concurrent_sync_ran"] = (
            FIGURES["rules"].get("concurrent_sync_ran", 0) + ran
        )
        for _ in range(ran):
            self._settle()

    def _killed_after(self, step: str) -> None:
        """A sync killed at or after its commit has placed what it would have: the
        model settles that sync before the rerun's (whose ledger and export heal). A
        kill before the commit leaves the store as it was. (A run that never reaches
        its kill step finished: one settle more changes nothing, as nothing lands
        twice.)"""
        if step in AFTER_COMMIT:
            self._settle()

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def store_matches_the_model(self) -> None:
        store = open_store(self.config)
        if not store.exists() or store.head() is None:
            assert not self.placed
            return
        days = sorted(self.placed)
        head = refstore.open_dataset(self.config)
        np.testing.assert_array_equal(head.time.values, _times(days))
        export = refstore.open_dataset(self.config, source="export")
        np.testing.assert_array_equal(export.time.values, _times(days))
        for i, day in enumerate(days):
            if not self._readable(day):
                continue
            want = _expected(day, self.placed[day].seed).uwnd.values
            window = slice(4 * i, 4 * i + 4)
            np.testing.assert_array_equal(head.uwnd.isel(time=window).values, want)
            np.testing.assert_array_equal(export.uwnd.isel(time=window).values, want)

    @invariant()
    def ledger_equals_history(self) -> None:
        store = open_store(self.config)
        with Ledger(self.config.ledger, readonly=True) as ledger:
            placed = [(p.key, p.revision, p.offset, p.length) for p in ledger.placements()]
            rows = ledger.rows()
        commits = store.commits() if store.exists() else []
        history = [(p.key, p.revision, p.offset, p.length) for p in layout_at(commits)]
        assert placed == history
        names = {self._path(d).name for d in self.placed}
        assert {k for k, r in rows.items() if r.in_store} == names
        assert [p[2] for p in placed] == [4 * i for i in range(len(placed))]

    @invariant()
    def status_answers(self) -> None:
        runner = CliRunner()
        result = runner.invoke(
            cli, ["status", "--json", "--config", str(self.root / "refstore.toml")]
        )
        assert result.exit_code == 0, (result.output, result.exception)
        info = json.loads(result.output)
        unavailable = {u["key"] for u in info["unavailable"]}
        assert unavailable == self.unavailable, (unavailable, self.unavailable)

    @invariant()
    def tags_open_what_they_held(self) -> None:
        for name, view in self.tags.items():
            ds = refstore.open_dataset(self.config, at=name)
            days = sorted(view.days)
            np.testing.assert_array_equal(ds.time.values, _times(days))
            for i, day in enumerate(days):
                held = view.days[day]
                u = self.up[day]
                if u.in_attic or u.generation != held.generation:
                    continue  # its bytes changed upstream since: unreadable, not wrong
                want = _expected(day, held.seed).uwnd.values
                got = ds.uwnd.isel(time=slice(4 * i, 4 * i + 4)).values
                np.testing.assert_array_equal(got, want)


def _run(examples: int, steps: int) -> None:
    GranuleLife.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        # Shrinking a failing life re-runs its syncs: minutes. Skip it when checking that
        # a planted bug is caught (REFSTORE_MACHINE_NO_SHRINK=1).
        phases=[p for p in Phase if p is not Phase.shrink]
        if os.environ.get("REFSTORE_MACHINE_NO_SHRINK")
        else list(Phase),
    )
    GranuleLife.TestCase().runTest()


def test_granule_life_short() -> None:
    before = FIGURES["steps"]
    _run(examples=5, steps=20)
    assert FIGURES["steps"] - before >= 30  # the rules did run


@pytest.mark.slow
@pytest.mark.timeout(int(os.environ.get("REFSTORE_MACHINE_TIMEOUT", "14400")))
def test_granule_life_long() -> None:
    before = FIGURES["steps"]
    _run(
        examples=int(os.environ.get("REFSTORE_MACHINE_EXAMPLES", "100")),
        steps=int(os.environ.get("REFSTORE_MACHINE_STEPS", "25")),
    )
    summary = {
        "examples": FIGURES["examples"],
        "steps": FIGURES["steps"] - before,
        "distinct_model_states": len(FIGURES["states"]),
        "rules": FIGURES["rules"],
    }
    print(json.dumps(summary))
