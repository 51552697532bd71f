"""``refstore watch``: sync every interval, for users without cron.

Each run is a real ``refstore sync --json`` child process, so the watcher itself stays
small for years (it imports no xarray/Icechunk) and a run's memory is returned when it
ends. Between runs it sleeps the interval with jitter (so many stores do not hit a
server together); after a failed run it retries sooner and backs off exponentially
(:func:`next_delay`). A heartbeat JSON file says what it is doing, how the last run
ended (time, exit code, counts, error) and when the next one is due; it is replaced
whole, never half-written.

Stopping (SIGTERM or SIGINT): while sleeping, it exits at once; while a sync runs, it
lets that run finish (up to ``grace`` seconds), then exits. A second signal, or the end
of the grace, kills the run: a sync is crash-safe, so the next one finishes its work.
The sync runs in its own session (a terminal's Ctrl-C reaches the watcher only) and
dies with the watcher if the watcher is killed (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "RunOutcome",
    "WatchPolicy",
    "Watcher",
    "next_delay",
    "refstore_command",
    "sync_command",
]

POLL_S = 0.2  # how often a sleep or a running sync looks at the stop flag


@dataclass(frozen=True, slots=True)
class WatchPolicy:
    """When to run. Seconds throughout.

    ``interval`` between successful runs, each varied by ±``jitter`` (a fraction);
    after ``n`` failed runs in a row the next comes after ``min(max_backoff, retry *
    2**(n-1))`` (``retry`` = the smaller of the interval and a minute), jittered too;
    ``grace``: how long a running sync may take to finish after a stop request.
    """

    interval: float
    jitter: float = 0.1
    max_backoff: float = 3600.0
    grace: float = 300.0

    def __post_init__(self) -> None:
        from refstore.errors import ConfigError

        if self.interval <= 0 or not 0 <= self.jitter < 1 or self.grace < 0:
            raise ConfigError(
                f"watch: interval must be positive, jitter in [0, 1), grace not negative "
                f"(got {self.interval}, {self.jitter}, {self.grace}).",
                "Use e.g. --interval 6h --jitter 0.1 --grace 300.",
            )


def next_delay(policy: WatchPolicy, failures: int, rnd: random.Random) -> float:
    """Pure: seconds until the next run after ``failures`` failed runs in a row."""
    if failures <= 0:
        base = policy.interval
    else:
        retry = min(policy.interval, 60.0)
        cap = max(policy.max_backoff, retry)
        base = min(cap, retry * 2.0 ** min(failures - 1, 60))
    return max(0.0, base * (1.0 + rnd.uniform(-policy.jitter, policy.jitter)))


@dataclass
class RunOutcome:
    """How one sync run ended."""

    started_at: str
    finished_at: str = ""
    seconds: float = 0.0
    exit_code: int | None = None
    added: int = 0
    quarantined: int = 0
    snapshots: list[str] = field(default_factory=list)
    up_to_date: bool | None = None
    error: str | None = None
    abandoned: bool = False  # killed on stop (the next sync finishes its work)
    published: bool | None = None  # --publish: whether the page was refreshed (None: not due)

    @property
    def ok(self) -> bool:
        """Exit 0, or 9 (data committed, only the tag name was taken)."""
        return self.exit_code in (0, 9)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
            "ok": self.ok,
            "added": self.added,
            "quarantined": self.quarantined,
            "snapshots": self.snapshots,
            "up_to_date": self.up_to_date,
            "error": self.error,
            "abandoned": self.abandoned,
            "published": self.published,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _preexec() -> None:
    from refstore.orphans import set_pdeathsig, use_pdeathsig

    if use_pdeathsig():
        set_pdeathsig(signal.SIGKILL)


class Watcher:
    """The loop; :meth:`run` returns the exit code (0 after a requested stop).

    Parameters
    ----------
    sync_argv
        The command of one run, e.g. ``[python, "-m", "refstore", "--config", p, "sync",
        "--json"]``.
    heartbeat
        The heartbeat JSON file.
    runs
        Stop after this many runs (None: until a signal).
    say
        Where one line per run goes.
    publish_argv
        Run after each sync that committed a snapshot (and after the first good run),
        e.g. ``refstore publish``; its failure is reported, the sync's outcome stands.
    """

    def __init__(
        self,
        policy: WatchPolicy,
        sync_argv: Sequence[str],
        heartbeat: Path,
        *,
        runs: int | None = None,
        rnd: random.Random | None = None,
        say: Callable[[str], None] = print,
        publish_argv: Sequence[str] | None = None,
    ) -> None:
        self.policy = policy
        self.sync_argv = list(sync_argv)
        self.heartbeat = heartbeat
        self.max_runs = runs
        self.rnd = rnd or random.Random()
        self.say = say
        self.stop_requested = 0  # signals received
        self.runs = 0
        self.failures = 0
        self.started_at = _now()
        self.last: RunOutcome | None = None
        self.publish_argv = list(publish_argv) if publish_argv else None
        self.published_once = False

    # -- signals ----------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_requested += 1

    def install_handlers(self) -> None:
        """Turn SIGTERM and SIGINT into a stop request (a second one abandons a run)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # -- heartbeat --------------------------------------------------------------------
    def write_heartbeat(self, state: str, next_at: float | None = None) -> None:
        """Replace the heartbeat file whole (a temporary file, then a rename)."""
        data = {
            "pid": os.getpid(),
            "state": state,
            "started_at": self.started_at,
            "updated_at": _now(),
            "interval_s": self.policy.interval,
            "runs": self.runs,
            "failures_in_a_row": self.failures,
            "last_run": self.last.to_dict() if self.last else None,
            "next_run_at": (
                datetime.fromtimestamp(next_at, UTC).isoformat(timespec="seconds")
                if next_at is not None
                else None
            ),
        }
        self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.heartbeat.name}.", dir=self.heartbeat.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.replace(tmp, self.heartbeat)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- one run ----------------------------------------------------------------------
    def _child(self, argv: Sequence[str]) -> tuple[int, str, str, bool]:
        """Run ``argv``; on a stop request let it finish within grace, then kill it.
        Returns (exit code, stdout, stderr, abandoned)."""
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C goes to the watcher only
            preexec_fn=_preexec,
        )
        stop_seen_at: float | None = None
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=POLL_S)
                return proc.returncode, stdout, stderr, False
            except subprocess.TimeoutExpired:
                if self.stop_requested and stop_seen_at is None:
                    stop_seen_at = time.monotonic()
                    grace = self.policy.grace
                    what = "publish" if "publish" in argv else "sync"
                    self.say(f"stop requested: the running {what} may finish ({grace:g} s at most)")
                late = stop_seen_at is not None and (
                    time.monotonic() - stop_seen_at > self.policy.grace
                )
                if self.stop_requested > 1 or late:
                    proc.kill()  # crash-safe: the next sync finishes what this one began
                    stdout, stderr = proc.communicate()
                    return proc.returncode, stdout, stderr, True

    def run_once(self) -> RunOutcome:
        """One sync in a child process (then publish, if asked and something landed)."""
        out = RunOutcome(started_at=_now())
        t0 = time.monotonic()
        out.exit_code, stdout, stderr, out.abandoned = self._child(self.sync_argv)
        out.seconds = time.monotonic() - t0
        out.finished_at = _now()
        self._read(out, stdout, stderr)
        due = out.ok and (out.snapshots or not self.published_once)
        if self.publish_argv and due and not out.abandoned:
            code, _, perr, killed = self._child(self.publish_argv)
            out.published = code == 0 and not killed
            self.published_once = self.published_once or out.published
            if not out.published:
                lines = [ln.strip() for ln in perr.splitlines() if ln.strip()]
                out.error = "publish failed: " + " ".join(lines[-2:] or [f"exit {code}"])
        return out

    @staticmethod
    def _read(out: RunOutcome, stdout: str, stderr: str) -> None:
        try:
            result = json.loads(stdout) if stdout.strip() else None
        except ValueError:
            result = None
        if isinstance(result, dict):
            out.added = len(result.get("added", []))
            out.quarantined = len(result.get("quarantined", []))
            out.snapshots = list(result.get("snapshots", []))
            out.up_to_date = bool(result.get("up_to_date"))
        if out.abandoned:
            out.error = "stopped: the running sync was killed (the next sync finishes its work)"
        elif not out.ok:
            lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error" in ln.lower() or ln.startswith("hint:")]
            out.error = " ".join(errors[-2:] or lines[-1:]) or f"exit code {out.exit_code}"

    # -- the loop ---------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop_requested:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(POLL_S, left))

    def run(self) -> int:
        """Sync, sleep, repeat until stopped (or ``runs`` runs); returns 0."""
        while not self.stop_requested:
            self.write_heartbeat("syncing")
            out = self.run_once()
            self.runs += 1
            self.last = out
            self.failures = 0 if out.ok else self.failures + 1
            done = self.stop_requested or (self.max_runs is not None and self.runs >= self.max_runs)
            delay = None if done else next_delay(self.policy, self.failures, self.rnd)
            next_at = time.time() + delay if delay is not None else None
            self.write_heartbeat("stopping" if done else "sleeping", next_at)
            what = (
                f"+{out.added} granule(s), {out.quarantined} quarantined"
                if out.ok
                else (out.error or "")
            )
            self.say(
                f"{out.finished_at} run {self.runs}: exit {out.exit_code} in {out.seconds:.1f} s, "
                f"{what}" + (f"; next in {delay:.0f} s" if delay is not None else "")
            )
            if done:
                break
            self._sleep(delay or 0.0)
        self.write_heartbeat("stopped")
        self.say(f"{_now()} stopped after {self.runs} run(s)")
        return 0


def refstore_command(config_path: str | None, *args: str) -> list[str]:
    """The argv of a refstore command with this interpreter (and the config file)."""
    argv = [sys.executable, "-m", "refstore"]
    if config_path:
        argv += ["--config", str(Path(config_path).resolve())]
    return [*argv, *args]


def sync_command(config_path: str | None, extra: Sequence[str] = ()) -> list[str]:
    """The argv of one run: ``refstore sync --json``."""
    return refstore_command(config_path, "sync", "--json", "--no-progress", *extra)
