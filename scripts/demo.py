"""refstore demo: a CCMP-like collection arrives in three batches; `refstore sync` keeps up.

Writes everything under state/demo/ (wiped first): an "archive" of daily CCMP-like
granules (4 six-hourly steps each, CCMP v3.1 variables and encodings), an `incoming`
folder they arrive in, the Icechunk repo, the SQLite ledger and the Parquet export.
Then shows the log, time travel to the first arrival and the export read with plain
fsspec + xarray (no refstore involved).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "state" / "demo"


def run(*args: str, capture: bool = False) -> str:
    cmd = ["refstore", "--config", str(DEMO / "refstore.toml"), *args]
    print(f"\n$ refstore {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, text=True, capture_output=capture, check=False)
    if proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stderr)
        sys.exit(proc.returncode)
    return proc.stdout if capture else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=21, help="days of data (default 21)")
    args = parser.parse_args()

    from refstore.synthetic import write_ccmp_like_series

    shutil.rmtree(DEMO, ignore_errors=True)
    archive, incoming = DEMO / "archive", DEMO / "incoming"
    incoming.mkdir(parents=True)
    files = write_ccmp_like_series(archive, datetime(2024, 1, 1), args.days, nlat=64, nlon=128)
    print(f"wrote {len(files)} CCMP-like daily granules to {archive.relative_to(ROOT)}")
    subprocess.run(
        [
            "refstore",
            "init",
            "--source",
            "incoming",
            "--concat-dim",
            "time",
            "--repo",
            "repo",
            "--ledger",
            "ledger.db",
            "--export",
            "export/refs.parquet",
            "--path",
            str(DEMO / "refstore.toml"),
        ],
        check=True,
    )
    thirds = [
        files[: len(files) // 3],
        files[len(files) // 3 : 2 * len(files) // 3],
        files[2 * len(files) // 3 :],
    ]
    timings = []
    for i, arrival in enumerate(thirds, start=1):
        for f in arrival:
            shutil.copy2(f, incoming / f.name)
        print(f"\n--- arrival {i}: {len(arrival)} new granule(s) in incoming/")
        t0 = time.perf_counter()
        out = run("sync", "--tag", f"arrival-{i}", "--json", capture=True)
        wall = time.perf_counter() - t0
        result = json.loads(out)
        timings.append(
            {"arrival": i, "granules": len(arrival), "wall_s": round(wall, 3), **result["timings"]}
        )
        print(
            f"added {len(result['added'])} granule(s) {result['start']} .. {result['end']} "
            f"in snapshot {result['snapshots'][0]}  ({wall:.2f} s)"
        )
    print("\n--- a second sync right away changes nothing:")
    run("sync")
    run("log")
    run("status")
    run("ls", "--state", "committed")
    run("coverage", "-o", str(DEMO / "coverage.png"))
    print("\n--- time travel: the store as it was after the first arrival")
    run("open", "--at", "arrival-1")
    print("\n--- the Parquet export, read with plain fsspec + xarray (no refstore):")
    code = (
        "import fsspec, xarray as xr\n"
        f"fs = fsspec.filesystem('reference', fo={str(DEMO / 'export/refs.parquet')!r}, "
        "remote_protocol='file')\n"
        "ds = xr.open_dataset(fs.get_mapper(''), engine='zarr', consolidated=False, "
        "zarr_format=2, chunks={})\n"
        "print(ds)\n"
        "print('mean wind speed on the last day:', "
        "float(ds.ws.isel(time=slice(-4, None)).mean()))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    print("\n--- timings (seconds)")
    for t in timings:
        per = t.get("virtualize", 0) / max(t["granules"], 1)
        print(
            f"arrival {t['arrival']}: {t['granules']} granules, wall {t['wall_s']:.2f}, "
            f"virtualize {t.get('virtualize', 0):.2f} ({per:.3f}/granule), "
            f"commit {t.get('commit', 0):.2f}, export {t.get('export', 0):.2f}"
        )
    (DEMO / "timings.json").write_text(json.dumps(timings, indent=2))


if __name__ == "__main__":
    main()
