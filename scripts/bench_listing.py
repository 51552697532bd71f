#!/usr/bin/env python
"""Discovery and plan of a local source at 1,000 / 10,000 / 100,000 files (issue 12):
one flat folder, and the same files in one folder per year and day (``YYYY/DDD/``, how
DAAC archives are laid out), through ``refstore.sync._plan_listing`` with a real ledger.

For each layout and size: the first listing, a no-op (nothing changed since a settled
listing), and a +1 (one file added to the newest folder), medians of 5, each followed by
saving what it listed (``remember``), as a sync does. Files are hard links to a pool of
half-hourly granule names (their content is never read here). Ratios are against 1,000
files of the same layout, measured in the same run. JSON to ``<out>/latest-listing.json``.

    python scripts/bench_listing.py                       # 1,000 / 10,000 / 100,000
    python scripts/bench_listing.py --sizes 1000 10000    # quicker
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _benchutil import log, timed

ROOT = Path(__file__).resolve().parent.parent
START = dt.datetime(2000, 6, 1)
STEP = dt.timedelta(minutes=30)
REPEAT = 5


def name(k: int) -> tuple[str, str]:
    """The folder (``YYYY/DDD``) and file name of the ``k``-th half-hourly granule."""
    t = START + k * STEP
    return f"{t:%Y}/{t:%j}", f"IMERG_like_{t:%Y%m%dT%H%M}.nc"


LINKS = 50_000  # hard links per file at most (ext4 allows 65,000)


def build(folder: Path, n: int, nested: bool, blob: Path) -> None:
    """``n`` hard links to copies of ``blob``, a week old, flat or nested; folders
    settled."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    old = time.time() - 7 * 86400
    for k in range(n):
        sub, file = name(k)
        target = folder / sub / file if nested else folder / file
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(copy(blob, k), target)
    for k in range(0, n + LINKS, LINKS):
        os.utime(copy(blob, k), (old, old))
    settle(folder)


def copy(blob: Path, k: int) -> Path:
    """The copy of ``blob`` the ``k``-th file links to (one per ``LINKS`` files)."""
    path = blob.with_name(f"{blob.stem}-{k // LINKS}{blob.suffix}")
    if not path.exists():
        shutil.copy2(blob, path)
    return path


def settle(folder: Path) -> None:
    """Every folder last changed a minute ago (a listing then trusts its state)."""
    when = time.time() - 60
    for p in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        os.utime(p, (when, when))


def measure(work: Path, n: int, nested: bool, blob: Path) -> dict[str, Any]:
    from refstore.ledger import Ledger
    from refstore.plan import dataset_fingerprint
    from refstore.sources.local import LocalSource
    from refstore.sync import _plan_listing

    layout = "nested" if nested else "flat"
    folder = work / f"{layout}-{n}"
    log(f"{layout} {n}: building")
    build(folder, n, nested, blob)
    db = work / f"{layout}-{n}.db"
    db.unlink(missing_ok=True)
    ledger = Ledger(str(db))
    url = str(folder / "**" / "*.nc") if nested else str(folder)
    source = LocalSource(url)
    fingerprint = dataset_fingerprint("time")

    def plan() -> int:
        _, _, p, remember = _plan_listing(source, ledger, fingerprint, trust_cache=True)
        remember()
        return len(p.todo)

    first, todo = timed(plan)
    assert todo == n, (todo, n)
    settle(folder)
    plan()  # the folder states moved (settle): listed once more
    noop = []
    for _ in range(REPEAT):
        seconds, todo = timed(plan)
        assert todo == 0, todo
        noop.append(seconds)
    plus = []
    for i in range(REPEAT):
        sub, file = name(n + i)
        target = folder / sub / file if nested else folder / file
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(copy(blob, n + i), target)
        seconds, todo = timed(plan)
        assert todo == 1, todo
        plus.append(seconds)
        settle(folder)
        plan()  # settled again, so the next +1 starts from an unlisted state
    ledger.close()
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "first_s": first,
        "noop_s": statistics.median(noop),
        "add_one_s": statistics.median(plus),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--out", type=Path, default=ROOT / "state" / "bench")
    parser.add_argument("--work", type=Path, help="Scratch folder (default <out>/listing).")
    args = parser.parse_args(argv)
    work = args.work or args.out / "listing"
    work.mkdir(parents=True, exist_ok=True)
    blob = work / "blob.nc"
    blob.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 1024)
    sizes = sorted(args.sizes)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for nested in (False, True):
        layout = "nested" if nested else "flat"
        results[layout] = {n: measure(work, n, nested, blob) for n in sizes}
    base = sizes[0]
    for layout, points in results.items():
        for n, p in points.items():
            p["noop_vs_base"] = round(p["noop_s"] / points[base]["noop_s"], 2)
            p["add_one_vs_base"] = round(p["add_one_s"] / points[base]["add_one_s"], 2)
            print(
                f"{layout:<6} {n:>7}: first {p['first_s']:.3f} s, no-op {p['noop_s'] * 1e3:.1f} ms "
                f"({p['noop_vs_base']}x), +1 {p['add_one_s'] * 1e3:.1f} ms "
                f"({p['add_one_vs_base']}x)"
            )
    report = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sizes": sizes,
        "load": os.getloadavg()[0],
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest-listing.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
