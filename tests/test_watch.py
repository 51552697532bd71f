"""`refstore watch` through the real CLI in a subprocess: granules land run after run,
SIGTERM stops it promptly with exit 0 and nothing left running, a second signal abandons
a running sync safely, failures back off, and the heartbeat says what happened."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from refstore.config import render_toml
from refstore.watch import WatchPolicy, next_delay
from tests.conftest import cli_env, run_cli
from tests.processes import linux_only, marked, processes_of, wait_until_gone


def test_delays_jitter_and_back_off() -> None:
    rnd = random.Random(1)
    still = WatchPolicy(interval=3600, jitter=0, max_backoff=300)
    assert [next_delay(still, n, rnd) for n in range(6)] == [3600, 60, 120, 240, 300, 300]
    short = WatchPolicy(interval=1, jitter=0, max_backoff=8)
    assert [next_delay(short, n, rnd) for n in range(6)] == [1, 1, 2, 4, 8, 8]
    jittered = [next_delay(WatchPolicy(interval=100, jitter=0.1), 0, rnd) for _ in range(200)]
    assert all(90 <= d <= 110 for d in jittered) and len(set(jittered)) > 100


def _store(tmp_path: Path, source: str = "incoming") -> Path:
    (tmp_path / "incoming").mkdir(exist_ok=True)
    (tmp_path / "refstore.toml").write_text(
        render_toml(source_url=source, concat_dim="time") + '[sync]\nexecutor = "serial"\n'
    )
    return tmp_path


def _start(root: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    env, marker = marked(cli_env())
    proc = subprocess.Popen(
        [sys.executable, "-m", "refstore", "watch", "--heartbeat", "hb.json", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, marker


def _until(
    root: Path, proc: subprocess.Popen[str], ok: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    end = time.monotonic() + within
    beat: dict[str, Any] = {}
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"watch ended early ({proc.returncode}): {proc.communicate()}")
        try:
            beat = json.loads((root / "hb.json").read_text())
        except (OSError, ValueError):  # not written yet (it is replaced whole, never partial)
            beat = {}
        if beat and ok(beat):
            return beat
        time.sleep(0.1)
    raise AssertionError(f"heartbeat never got there within {within} s: {beat}")


def _steps(root: Path) -> list[str]:
    rows = json.loads(run_cli("ls", "--json", cwd=root).stdout)
    return sorted(r["key"] for r in rows if r["state"] == "committed")


@linux_only
def test_watch_lands_granules_and_stops_on_sigterm(tmp_path: Path, ccmp_archive: Any) -> None:
    root = _store(tmp_path)
    files = ccmp_archive(2)
    shutil.copy2(files[0], root / "incoming" / files[0].name)
    proc, marker = _start(root, "--interval", "1s", "--jitter", "0", "--publish")
    try:
        first = _until(root, proc, lambda b: (b["last_run"] or {}).get("added") == 1, 180)
        assert first["last_run"]["exit_code"] == 0 and first["pid"] == proc.pid
        shutil.copy2(files[1], root / "incoming" / files[1].name)
        beat = _until(
            root, proc, lambda b: b["runs"] > first["runs"] and b["last_run"]["added"] == 1, 180
        )
        assert _steps(root) == sorted(f.name for f in files)
        assert beat["failures_in_a_row"] == 0 and beat["interval_s"] == 1
        # --publish refreshed the page after the run that committed a snapshot
        assert first["last_run"]["published"] is True and beat["last_run"]["published"] is True
        stac = json.loads((root / "state" / "export" / "collection.json").read_text())
        assert stac["refstore:last_snapshot"]["snapshot"] == beat["last_run"]["snapshots"][-1]

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert took < 60, f"SIGTERM took {took:.1f} s"  # at most one no-op sync to finish
    wait_until_gone(marker)  # nothing it started outlives it
    final = json.loads((root / "hb.json").read_text())
    assert final["state"] == "stopped" and final["next_run_at"] is None
    assert final["last_run"]["exit_code"] == 0 and final["last_run"]["abandoned"] is False
    assert "stopped after" in out and err == ""
    assert not list(root.glob(".hb.json.*"))


@linux_only
def test_second_signal_abandons_a_running_sync_safely(tmp_path: Path, ccmp_archive: Any) -> None:
    root = _store(tmp_path)
    files = ccmp_archive(3)
    proc, marker = _start(root, "--interval", "1h", "--jitter", "0")
    try:
        for f in files:
            shutil.copy2(f, root / "incoming" / f.name)
        # The first run starts at once: wait until its sync process is there, then two signals.
        end = time.monotonic() + 60
        while len(processes_of(marker)) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(processes_of(marker)) >= 2, "the sync never started"
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    wait_until_gone(marker)
    final = json.loads((root / "hb.json").read_text())
    assert final["state"] == "stopped" and final["runs"] == 1
    # Both signals arrive within a poll (0.2 s) of the sync's start: it is still starting up.
    assert final["last_run"]["abandoned"] is True
    assert final["last_run"]["exit_code"] == -signal.SIGKILL
    run_cli("sync", cwd=root)  # the next sync finishes the work, each granule once
    assert _steps(root) == sorted(f.name for f in files)


def test_failures_back_off_and_show_in_the_heartbeat(tmp_path: Path) -> None:
    root = _store(tmp_path)
    shutil.rmtree(root / "incoming")  # the source is gone: every run fails
    t0 = time.monotonic()
    proc = run_cli(
        "watch", "--heartbeat", "hb.json", "--interval", "1s", "--jitter", "0", "--runs", "3",
        cwd=root,
    )  # fmt: skip
    took = time.monotonic() - t0
    beat = json.loads((root / "hb.json").read_text())
    assert beat["runs"] == 3 and beat["failures_in_a_row"] == 3 and beat["state"] == "stopped"
    last = beat["last_run"]
    assert last["ok"] is False and last["exit_code"] not in (0, None)
    assert "incoming" in last["error"], last["error"]
    assert took >= 1 + 2  # waited 1 s, then 2 s (backing off)
    waits = [ln.rsplit("next in ", 1)[1] for ln in proc.stdout.splitlines() if "next in" in ln]
    assert waits == ["1 s", "2 s"] and proc.stdout.count(" run ") == 3


@pytest.mark.parametrize("bad", [["--interval", "0s"], ["--jitter", "1.5"]])
def test_bad_settings_exit_2(tmp_path: Path, bad: list[str]) -> None:
    root = _store(tmp_path)
    proc = run_cli("watch", *bad, cwd=root, check=False)
    assert proc.returncode == 2 and "hint:" in proc.stderr


@linux_only
def test_sigterm_while_sleeping_exits_at_once(tmp_path: Path) -> None:
    root = _store(tmp_path)
    proc, marker = _start(root, "--interval", "1h")
    try:
        beat = _until(root, proc, lambda b: b["state"] == "sleeping", 120)
        assert beat["last_run"]["ok"] is True and beat["next_run_at"] is not None
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and took < 2, took
    wait_until_gone(marker)
    assert json.loads((root / "hb.json").read_text())["state"] == "stopped"
