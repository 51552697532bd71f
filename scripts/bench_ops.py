"""Operations benchmarks (issue 11), run by ``scripts/bench.py --only cli|gc``.

CLI  whole-process latency of ``refstore --help``, ``status``, ``log``, ``ls`` and a
     no-op ``sync`` on a store of N granules (median of 7), beside ``python -c pass``
     and ``python -c "import <heavy>"`` baselines; ``status`` and ``log`` also with the
     ledger's repository mirror removed before each run (the fallback: Icechunk answers
     and the mirror is saved again), and the load average before and after.
GC   a store of S one-granule snapshots where every 10th sync places a late granule in
     the tail (a rewrite), a tag every 100: repository objects/bytes before and after
     ``refstore gc --keep-last 30 --keep-days 0``, what ``--dry-run`` predicted, gc's
     time, and that every tag still opens what it held.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUNS = 7
STALE = "<stale mirror>"  # a marker in a command: drop the mirror before each run


def _drop_mirror(toml: Path) -> None:
    """Forget the ledger's mirror of the repository (refstore.mirror), as after another
    writer's commit: the next command must ask Icechunk."""
    import sqlite3

    from refstore.config import load_config
    from refstore.mirror import KEY

    conn = sqlite3.connect(load_config(toml, environ={}).ledger)
    with conn:
        conn.execute("delete from meta where key = ?", [KEY])
    conn.close()


def _wall(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    if STALE in args:
        _drop_mirror(cwd / "refstore.toml")
        args = [a for a in args if a != STALE]
    t = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def _median(args: Sequence[str], cwd: Path) -> dict[str, Any]:
    runs = [_wall(args, cwd) for _ in range(RUNS)]
    return {"median_s": round(statistics.median(runs), 3), "runs": [round(r, 3) for r in runs]}


def _side_by_side(args: Sequence[str], cwd: Path, baseline: dict[str, str]) -> dict[str, Any]:
    """This code and the baseline's, runs interleaved (the load hits both alike)."""
    now, before = [], []
    for _ in range(RUNS):
        now.append(_wall(args, cwd))
        before.append(_wall(args, cwd, baseline))
    m_now, m_before = statistics.median(now), statistics.median(before)
    return {
        "median_s": round(m_now, 3),
        "runs": [round(r, 3) for r in now],
        "baseline_median_s": round(m_before, 3),
        "baseline_runs": [round(r, 3) for r in before],
        "vs_baseline": round(m_now / m_before, 3) if m_before else None,
    }


def cli_latencies(toml: Path, baseline_src: Path | None = None) -> dict[str, Any]:
    """Whole-process latencies (see the module doc); with ``baseline_src`` (another
    checkout's ``src``, e.g. ``git archive main src``) each command also runs on that
    code, interleaved, through ``PYTHONPATH``."""
    exe = str(Path(sys.executable).with_name("refstore"))
    py = sys.executable
    cwd = toml.parent
    base = [py, "-c", "pass"]
    cmds = {
        "python -c pass": base,
        "import refstore.cli": [py, "-c", "import refstore.cli"],
        "import numpy": [py, "-c", "import numpy"],
        "import sqlite_utils (light)": [
            py,
            "-c",
            "from refstore.clilog import import_sqlite_utils_lightly as f; f()",
        ],
        "import icechunk": [py, "-c", "import icechunk"],
        "import xarray": [py, "-c", "import xarray"],
        "import virtualizarr": [py, "-c", "import virtualizarr"],
        "refstore --help": [exe, "--help"],
        "refstore status": [exe, "-c", str(toml), "status"],
        "refstore log -n 20": [exe, "-c", str(toml), "log", "-n", "20"],
        "refstore ls": [exe, "-c", str(toml), "ls"],
        "refstore sync (no-op)": [exe, "-c", str(toml), "sync", "--executor", "serial"],
        "refstore status (stale mirror)": [exe, "-c", str(toml), "status", STALE],
        "refstore log -n 20 (stale mirror)": [exe, "-c", str(toml), "log", "-n", "20", STALE],
    }
    load_before = os.getloadavg()
    if baseline_src is None:
        out = {name: _median(args, cwd) for name, args in cmds.items()}
    else:
        env = {**os.environ, "PYTHONPATH": str(baseline_src.resolve())}
        out = {
            name: _side_by_side(args, cwd, env)
            if name.startswith("refstore") or "refstore" in " ".join(args[2:3])
            else _median(args, cwd)
            for name, args in cmds.items()
        }
    _wall([exe, "-c", str(toml), "status"], cwd)  # saves the mirror the last runs dropped
    out["load average (1, 5, 15 min)"] = {"before": load_before, "after": os.getloadavg()}
    floor = out["python -c pass"]["median_s"]
    for row in out.values():
        if "median_s" not in row:
            continue
        row["vs_python_pass"] = round(row["median_s"] / floor, 1) if floor else None
    return out


def _disk(path: Path) -> tuple[int, int]:
    n = b = 0
    for root, _, files in os.walk(path):
        for f in files:
            n += 1
            b += os.path.getsize(os.path.join(root, f))
    return n, b


def gc_figures(work: Path, snapshots: int) -> dict[str, Any]:
    """Build the GC store (see the module doc), then measure ``refstore gc``."""
    import shutil

    import numpy as np

    import refstore
    from refstore.config import load_config, render_toml
    from refstore.synthetic import write_ccmp_like_series

    late_every = 10
    n_files = snapshots
    root = work / f"gc{snapshots}"
    shutil.rmtree(root, ignore_errors=True)
    files = write_ccmp_like_series(root / "pool", dt.datetime(1990, 1, 1), n_files, nlat=8, nlon=16)
    incoming = root / "incoming"
    incoming.mkdir()
    text = render_toml(source_url="incoming") + '[sync]\nexecutor = "serial"\n'
    (root / "refstore.toml").write_text(text)
    config = load_config(root / "refstore.toml", environ={})
    # every 10th file is held back one step and arrives after its successor: a tail rewrite
    order: list[Path] = []
    held: Path | None = None
    for i, f in enumerate(files):
        if i % late_every == 5:
            held = f
            continue
        order.append(f)
        if held is not None:
            order.append(held)
            held = None
    tags: dict[str, int] = {}
    t0 = time.perf_counter()
    for i, f in enumerate(order, start=1):
        os.link(f, incoming / f.name)
        tag = f"t{i}" if i % 100 == 0 else None
        refstore.sync(config, tag=tag)
        if tag:
            tags[tag] = i
    build_s = time.perf_counter() - t0
    repo = Path(config.repo)
    before = _disk(repo)
    exe = str(Path(sys.executable).with_name("refstore"))
    args = [exe, "gc", "--keep-last", "30", "--keep-days", "0", "--json"]
    dry = json.loads(
        subprocess.run([*args, "--dry-run"], cwd=root, check=True, capture_output=True).stdout
    )
    t = time.perf_counter()
    out = subprocess.run(args, cwd=root, check=True, capture_output=True).stdout
    gc_s = time.perf_counter() - t
    report = json.loads(out)
    after = _disk(repo)
    tags_ok = {}
    for tag, i in tags.items():
        ds = refstore.open_dataset(config, at=tag)
        expected = sorted(order[:i])
        tags_ok[tag] = bool(ds.sizes["time"] == 4 * len(expected)) and bool(
            np.all(np.diff(ds.time.values) > np.timedelta64(0, "ns"))
        )
    head = refstore.open_dataset(config)
    return {
        "snapshots": len(order) + 1,
        "late_rewrites": len(files) // late_every,
        "build_s": round(build_s, 1),
        "objects_before": before[0],
        "bytes_before": before[1],
        "objects_after": after[0],
        "bytes_after": after[1],
        "dry_run_predicted": {
            "snapshots": len(dry["expired"]),
            "manifests": dry["manifests"],
            "bytes": dry["bytes"],
        },
        "expired": len(report["expired"]),
        "collected": report["collected"],
        "gc_s": round(gc_s, 2),
        "tags_open_what_they_held": tags_ok,
        "head_steps": int(head.sizes["time"]),
    }


def run(
    only: str, work: Path, out: Path, n: int, snapshots: int, baseline_src: Path | None = None
) -> dict[str, Any]:
    """One section; writes ``<out>/latest-<only>.json``."""
    work, out = work.resolve(), out.resolve()
    report: dict[str, Any] = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if only == "cli":
        from bench import ensure_pool, first_sync, link_source, write_toml

        files = ensure_pool(work, n)
        source, state = work / f"src{n}", work / f"state{n}"
        if not (state / "ledger.db").exists():
            link_source(files, source)
            first_sync(state, source, 1000)
        toml = write_toml(state, source)
        report |= {"granules": n, "latency": cli_latencies(toml, baseline_src)}
    else:
        report |= {"gc": gc_figures(work, snapshots)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"latest-{only}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report
