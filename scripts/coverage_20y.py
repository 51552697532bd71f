"""Draw docs/coverage-20y-hourly.png: 20 years of hourly steps with planted gaps, late
days, a revision, a quarantined day, a missing source and one snapshot a day — the
facts `refstore coverage` gathers from a store, built directly so the picture's
readability at this scale can be checked without syncing 7,300 granules."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from refstore.coverage import Coverage, draw, find_runs

ROOT = Path(__file__).resolve().parent.parent


def main(out: Path = ROOT / "docs" / "coverage-20y-hourly.png") -> None:
    steps = np.arange("2005-01-01T00", "2025-01-01T00", dtype="datetime64[h]")
    keep = np.ones(steps.size, bool)
    for a, b in ((20_000, 20_024), (61_000, 61_720), (120_000, 120_006), (150_000, 152_160)):
        keep[a:b] = False  # a day, a month, 6 hours, three months
    values = steps[keep].astype("datetime64[s]")
    runs, gaps = find_runs(values, 3600)
    day = np.timedelta64(1, "D")

    def granule(i: int, **extra: object) -> dict[str, object]:
        start = steps[i].astype("datetime64[s]")
        return {"key": f"day-{i // 24}", "start": start, "end": start + day, **extra}

    cov = Coverage(
        concat_dim="time",
        cadence_s=3600.0,
        cadence_inferred=False,
        start=values[0],
        end=values[-1],
        steps=int(values.size),
        runs=[{"start": a, "end": b, "steps": n} for a, b, n in runs],
        gaps=gaps,
        late=[granule(i) for i in (30_000, 30_024, 95_000, 140_000)],
        revised=[granule(100_000)],
        quarantined=[granule(20_000, reason="latitude differs")],
        missing=[granule(160_000, since="2024-06-01")],
        snapshots=[
            {"snapshot": f"S{k}", "written_at": "", "end": values[0] + k * day}
            for k in range(0, 7305, 1)
        ],
    )
    draw(cov, str(out), title="synthetic 20 years hourly")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:2]))
