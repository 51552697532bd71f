"""Cost of uneven layouts (issue 10): native bytes share and sync time, rectilinear vs regular.

Writes a series of netCDF4 profile granules (120-profile HDF5 chunks, shuffle + deflate)
of 3,495 profiles each (last chunk padded: stored natively) and, for comparison, of
3,480 profiles (whole chunks: a regular store), syncs each into a fresh store and prints
the Icechunk chunk storage split and the time. Then one-step granules without a time
dim (``concat_from``: scalar coordinate, global attribute, file name) against the same
series written with a length-1 time dim, in the same run (the ratio is to that baseline).
Usage: python scripts/bench_layouts.py [N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.granule_factory import one_step_granule, profile_granule

import refstore
from refstore.config import load_config, render_toml


def run(n: int, length: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp())
    incoming = root / "incoming"
    incoming.mkdir()
    for i in range(n):
        profile_granule(incoming / f"p{i:04d}.nc", i * 10_000, length)
    (root / "refstore.toml").write_text(render_toml(source_url="incoming", concat_dim="time"))
    config = load_config(root / "refstore.toml", environ={})
    t = time.perf_counter()
    result = refstore.sync(config)
    seconds = time.perf_counter() - t
    store = refstore.open_store(config)
    stats = store.repo.chunk_storage_stats()
    head = store.head()
    total = stats.native_bytes + stats.inlined_bytes + stats.virtual_bytes
    return {
        "granules": len(result.added),
        "profiles_each": length,
        "layout": head.layout if head else None,
        "sync_s": round(seconds, 2),
        "native_bytes": stats.native_bytes,
        "inlined_bytes": stats.inlined_bytes,
        "virtual_bytes": stats.virtual_bytes,
        "non_virtual_share": round((stats.native_bytes + stats.inlined_bytes) / total, 4),
    }


CONCAT_FROM = {"dim": "auto", "scalar": "auto", "attr": "attr:time_coverage_start"}
CONCAT_FROM["name"] = "filename:%Y%m%d"


def run_one_step(n: int, how: str) -> dict[str, object]:
    """Sync ``n`` one-day granules whose time is in ``how`` (dim, scalar, attr, name)."""
    root = Path(tempfile.mkdtemp())
    incoming = root / "incoming"
    incoming.mkdir()
    for i in range(n):
        day = f"{20240101 + i if i < 31 else 20240201 + i - 31}"
        one_step_granule(incoming / f"ssh_{day}.nc", i, time=how)
    toml = render_toml(source_url="incoming", concat_from=CONCAT_FROM[how])
    (root / "refstore.toml").write_text(toml)
    config = load_config(root / "refstore.toml", environ={})
    t = time.perf_counter()
    result = refstore.sync(config)
    seconds = time.perf_counter() - t
    return {"time_in": how, "granules": len(result.added), "sync_s": round(seconds, 2)}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    layouts = [run(n, 3495), run(n, 3480)]
    run_one_step(3, "dim")  # warm-up: imports and first-use costs stay out of the figures
    steps = [run_one_step(min(n, 59), how) for how in ("dim", "scalar", "attr", "name")]
    base = float(steps[0]["sync_s"])  # type: ignore[arg-type]
    for s in steps:
        s["ratio_to_dim"] = round(float(s["sync_s"]) / base, 2)  # type: ignore[arg-type]
    print(json.dumps({"layouts": layouts, "one_step": steps}, indent=1))
