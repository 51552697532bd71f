"""Cost of whole hierarchies (issue 10): sync time of a TEMPO-like series kept as one
hierarchy (``group = "*"``: root ``mirror_step``, ``product/``, ``geolocation/``,
``support_data/`` along it, ``instrument/`` without it) against the same data written in
the root group of each file (one group), in the same run after a warm-up, alternated,
best of three; and the hierarchy of real TEMPO's shape (``mirror_step`` an index,
ordered by ``time(mirror_step)``: ``concat_from = "var:time"``).

Usage: python scripts/bench_hierarchy.py [N] [STEPS]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _benchutil import log, timed
from tests.granule_factory import tempo_like_granule

import refstore
from refstore.config import load_config, render_toml


def flat_copy(src: Path, dst: Path) -> None:
    """``src``'s variables, every group's, written in the root group of ``dst``."""
    import h5netcdf
    import h5py

    with h5py.File(src, "r") as f, h5netcdf.File(dst, "w") as out:
        out.dimensions = {"mirror_step": f["mirror_step"].shape[0], "xtrack": 4, "band": 2}
        for name in ("mirror_step", "product/no2", "geolocation/lat", "support_data/sza"):
            v = f[name]
            dims = ("mirror_step",) if v.ndim == 1 else ("mirror_step", "xtrack")
            kw = {} if v.ndim == 1 else {"chunks": v.chunks, "compression": "gzip"}
            kw |= {"fillvalue": v.fillvalue} if v.ndim > 1 else {}
            w = out.create_variable(name.rsplit("/", 1)[-1], dims, v.dtype, data=v[()], **kw)
            w.attrs["units"] = v.attrs["units"]
        out.create_variable("wavelength", ("band",), "f8", data=f["instrument/wavelength"][()])


def run(n: int, steps: int, hierarchy: bool, index: bool = False) -> tuple[float, dict[str, float]]:
    root = Path(tempfile.mkdtemp())
    incoming = root / "incoming"
    incoming.mkdir()
    starts = [i * 10_000 for i in range(n)]
    random.Random(1).shuffle(starts)  # shuffled arrival: keys are not time order
    for k, start in enumerate(starts):
        path = incoming / f"g{k:04d}.nc"
        if hierarchy:
            tempo_like_granule(path, start, steps, static=True, index=index)
        else:
            tempo_like_granule(root / "h.nc", start, steps, static=True)
            flat_copy(root / "h.nc", path)
    group = "*" if hierarchy else ""
    how = "var:time" if index else "auto"
    text = render_toml(
        source_url="incoming", concat_dim="mirror_step", group=group, concat_from=how
    )
    (root / "refstore.toml").write_text(text)
    config = load_config(root / "refstore.toml", environ={})
    seconds, result = timed(lambda: refstore.sync(config))
    assert len(result.added) == n, [f.reason for f in result.quarantined]
    return seconds, {k: round(v, 2) for k, v in result.timings.items()}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 132
    run(2, steps, True)  # warm-up (imports, first readback)
    figures: dict[str, object] = {}
    best: dict[str, tuple[float, dict[str, float]]] = {}
    for round_ in range(3):  # alternated, best of 3: the machine is shared
        for label, hierarchy, index in (
            ("one_group", False, False),
            ("hierarchy", True, False),
            ("hierarchy_var_time", True, True),  # real TEMPO's index + time(mirror_step)
        ):
            log(f"{label} #{round_ + 1}: {n} granules x {steps} steps")
            seconds, timings = run(n, steps, hierarchy, index)
            if label not in best or seconds < best[label][0]:
                best[label] = (seconds, timings)
    for label, (seconds, timings) in best.items():
        figures[label], figures[f"{label}_steps"] = round(seconds, 2), timings
    figures["ratio"] = round(best["hierarchy"][0] / best["one_group"][0], 2)
    figures["ratio_var_time"] = round(best["hierarchy_var_time"][0] / best["hierarchy"][0], 2)
    print(json.dumps({"granules": n, "steps": steps, **figures}))


if __name__ == "__main__":
    main()
