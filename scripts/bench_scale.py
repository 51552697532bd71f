#!/usr/bin/env python
"""Scale benchmark (issue 12): an IMERG-like collection (48 small granules a day) synced
as it would be backfilled, measured at checkpoints, extrapolated to 500,000 granules.

Not run by CI (a 10,000-granule run writes 10,000 files and takes tens of minutes here).

    python scripts/bench_scale.py --sizes 1000 2000           # what fits on a busy machine
    python scripts/bench_scale.py --sizes 1000 10000 100000   # the issue's sizes
    python scripts/bench_scale.py --layout flat ...           # all in one folder

``--layout nested`` (the default) files each granule under ``YYYY/DDD/`` as GES DISC
publishes IMERG (``GPM_3IMERGHH.07/2024/001/``) and syncs ``source/**/*.nc``; ``flat``
puts all of them in one folder (the listing's floor: docs/benchmarks.md).

The backfill adds ``--batch`` granules per sync (one commit each, in process, imports
warm) and records each commit's seconds, so "time per commit flat across batches" can be
read off directly. At every checkpoint in ``--sizes``: no-op sync, +1 granule (sync +
commit + export), open through Icechunk and through the Parquet export (medians of 3),
the head's manifest bytes and references, the snapshot file's bytes, and the peak RSS of
this process so far. Then a least-squares line (a + b*N) per figure extrapolates to
``--target`` granules; JSON to ``<out>/latest-scale.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _benchutil import log, timed

ROOT = Path(__file__).resolve().parent.parent
START = dt.datetime(2000, 6, 1)
STEP = dt.timedelta(minutes=30)  # 48 granules a day, one step each
GRID = {"nlat": 8, "nlon": 16}
REPEAT = 3


def ensure_pool(pool: Path, n: int) -> list[Path]:
    """``n`` half-hourly one-step granules, named in time order, aged a week."""
    from refstore.synthetic import write_ccmp_like_granule

    pool.mkdir(parents=True, exist_ok=True)
    have = sorted(pool.glob("*.nc"))
    if len(have) < n:
        log(f"writing {n - len(have)} granules into {pool}")
    for k in range(len(have), n):
        t = START + k * STEP
        write_ccmp_like_granule(
            pool / f"IMERG_like_{t:%Y%m%dT%H%M}.nc", t, steps_per_file=1, **GRID
        )
    files = sorted(pool.glob("*.nc"))[:n]
    old = time.time() - 7 * 86400
    for f in files:
        if f.stat().st_mtime > old:
            os.utime(f, (old, old))
    return files


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def repo_bytes(config: Any) -> dict[str, Any]:
    """Manifest bytes and references of the head, and the head snapshot file's bytes."""
    from refstore.api import open_history

    store = open_history(config)
    head = store.head_snapshot()
    manifests = store.repo.list_manifest_files(head)
    snapshot = Path(config.repo) / "snapshots" / head
    return {
        "manifest_bytes": sum(m.size_bytes for m in manifests),
        "manifest_refs": sum(m.num_chunk_refs for m in manifests),
        "manifests": len(manifests),
        "snapshot_bytes": snapshot.stat().st_size if snapshot.exists() else None,
    }


def place(f: Path, source: Path, nested: bool) -> None:
    """Link pool file ``f`` into the source: under ``YYYY/DDD/`` when ``nested``."""
    if nested:
        t = dt.datetime.strptime(f.stem.rsplit("_", 1)[-1], "%Y%m%dT%H%M")
        folder = source / f"{t:%Y}" / f"{t:%j}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(f, folder / f.name)
    else:
        os.link(f, source / f.name)


def settle(source: Path) -> None:
    """Every source folder last changed a minute ago: as between two cron runs, and so
    a listing can trust its folders' state (a folder that changed within
    ``listing_cache.SETTLE`` s of a listing is listed again)."""
    when = time.time() - 60
    for p in [source, *(p for p in source.rglob("*") if p.is_dir())]:
        os.utime(p, (when, when))


def checkpoint(config: Any, source: Path, spare: list[Path], nested: bool) -> dict[str, Any]:
    from refstore.api import open_dataset, open_export
    from refstore.sync import sync

    settle(source)
    sync(config)  # the folders' states moved (settle): listed once more
    noop = [timed(lambda: sync(config))[0] for _ in range(REPEAT)]
    plus = []
    for _ in range(REPEAT):
        settle(source)
        sync(config)
        place(spare.pop(0), source, nested)
        seconds, result = timed(lambda: sync(config))
        assert len(result.added) == 1, result
        plus.append({"seconds": seconds, **result.timings})
    return {
        "noop_s": statistics.median(noop),
        "add_one_s": statistics.median(p["seconds"] for p in plus),
        "add_one_commit_s": statistics.median(p.get("commit", 0.0) for p in plus),
        "add_one_export_s": statistics.median(p.get("export", 0.0) for p in plus),
        "open_icechunk_s": statistics.median(
            timed(lambda: open_dataset(config))[0] for _ in range(REPEAT)
        ),
        "open_parquet_s": statistics.median(
            timed(lambda: open_export(config.export))[0] for _ in range(REPEAT)
        ),
        "peak_rss_mib": peak_rss_mib(),
        "load": os.getloadavg()[0],
        **repo_bytes(config),
    }


def fit(xs: Sequence[float], ys: Sequence[float], at: float) -> dict[str, float] | None:
    """Least-squares a + b*x through the points, and its value at ``at``."""
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    if b <= 0:  # no growth measured (a falling time is load noise): flat at the worst
        return {"a": max(ys), "b_per_granule": 0.0, "at_target": max(ys)}
    a = my - b * mx
    return {"a": a, "b_per_granule": b, "at_target": a + b * at}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--batch", type=int, default=1000, help="Granules per backfill sync.")
    parser.add_argument("--target", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=ROOT / "state" / "bench")
    parser.add_argument("--work", type=Path, help="Scratch folder (default <out>/scale).")
    parser.add_argument("--executor", default="auto", help="Backfill executor ([sync]).")
    parser.add_argument("--workers", type=int, help="Workers of a pool or local dask cluster.")
    parser.add_argument("--name", default="scale", help="JSON is <out>/latest-<name>.json.")
    parser.add_argument("--layout", choices=("nested", "flat"), default="nested")
    args = parser.parse_args(argv)
    import icechunk

    from refstore.config import load_config
    from refstore.sync import sync

    icechunk.set_logs_filter("error")
    sizes = sorted(args.sizes)
    work = args.work or args.out / "scale"
    nested = args.layout == "nested"
    files = ensure_pool(work / "pool", sizes[-1] + REPEAT * len(sizes) + 1)
    source, state = work / "source", work / "state"
    for folder in (source, state):
        shutil.rmtree(folder, ignore_errors=True)
    source.mkdir(parents=True)
    config = load_config(
        None,
        overrides={
            "concat_dim": "time",
            "source_url": str(source / "**" / "*.nc") if nested else str(source),
            "repo": str(state / "repo"),
            "ledger": str(state / "ledger.db"),
            "export": str(state / "export" / "refs.parquet"),
            "batch_size": args.batch,
            "executor": args.executor,
            **({"workers": args.workers} if args.workers else {}),
        },
        environ={},
    )
    queue = list(files)
    commits: list[dict[str, Any]] = []
    points: dict[int, dict[str, Any]] = {}
    held = 0
    for size in sizes:
        while held < size:
            chunk = [queue.pop(0) for _ in range(min(args.batch, size - held))]
            for f in chunk:
                place(f, source, nested)
            seconds, result = timed(lambda: sync(config))
            held += len(result.added)
            commits.append(
                {
                    "granules": held,
                    "seconds": seconds,
                    "commit_s": result.timings.get("commit", 0.0),
                    "granules_per_s": len(chunk) / seconds,
                    "peak_rss_mib": peak_rss_mib(),
                    "load": os.getloadavg()[0],
                }
            )
            log(
                f"{held} granules: batch of {len(chunk)} in {seconds:.1f} s "
                f"(commit {commits[-1]['commit_s']:.2f} s, RSS {commits[-1]['peak_rss_mib']:.0f}"
                f" MiB, load {os.getloadavg()[0]:.1f})"
            )
        log(f"checkpoint at {held}")
        points[held] = checkpoint(config, source, queue, nested)
        held += REPEAT
    ns = list(points)
    keys = ("noop_s", "add_one_s", "open_icechunk_s", "open_parquet_s", "manifest_bytes")
    model = {k: fit(ns, [points[n][k] for n in ns], args.target) for k in keys}
    snap = [n for n in ns if points[n]["snapshot_bytes"] is not None]
    model["snapshot_bytes"] = fit(snap, [points[n]["snapshot_bytes"] for n in snap], args.target)
    first, last = commits[0]["commit_s"], commits[-1]["commit_s"]
    report = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sizes": sizes,
        "batch": args.batch,
        "layout": args.layout,
        "commits": commits,
        "checkpoints": points,
        "last_vs_first_commit": round(last / first, 3) if first else None,
        "add_one_big_vs_small": round(points[ns[-1]]["add_one_s"] / points[ns[0]]["add_one_s"], 3),
        "model": model,
        "target": args.target,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"latest-{args.name}.json").write_text(json.dumps(report, indent=2, default=str))
    for n, p in points.items():
        print(
            f"{n:>7}: +1 {p['add_one_s']:.3f} s (commit {p['add_one_commit_s']:.3f}), no-op "
            f"{p['noop_s']:.3f} s, open {p['open_icechunk_s']:.3f} / {p['open_parquet_s']:.3f} s,"
            f" manifests {p['manifest_bytes']} B / {p['manifest_refs']} refs, "
            f"RSS {p['peak_rss_mib']:.0f} MiB"
        )
    print(f"per-batch commit, last vs first: {report['last_vs_first_commit']}")
    print(f"+1 at {ns[-1]} vs {ns[0]}: {report['add_one_big_vs_small']}")
    for k, m in model.items():
        if m:
            at, slope = m["at_target"], m["b_per_granule"]
            print(f"  {k:<16} at {args.target}: {at:.4g} (slope {slope:.3g} per granule)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
