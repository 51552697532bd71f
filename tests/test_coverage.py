"""`refstore coverage`: the timeline's facts (gaps as ranges, late, revised, quarantined,
missing) from a real store with planted holes, the pure run/gap finder on 20 years of
hourly steps, and a PNG that matplotlib really writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import refstore
from refstore.coverage import find_runs, parse_cadence
from refstore.errors import ConfigError
from tests.conftest import run_cli


def test_twenty_years_hourly_gaps_come_back_as_planted() -> None:
    steps = np.arange("2000-01-01T00", "2020-01-01T00", dtype="datetime64[h]")
    planted = [(1000, 1024), (90_000, 90_001), (170_000, 170_720)]  # [first missing, end)
    keep = np.ones(steps.size, bool)
    for a, b in planted:
        keep[a:b] = False
    runs, gaps = find_runs(steps[keep].astype("datetime64[s]"), 3600)
    assert len(runs) == 4 and sum(n for *_, n in runs) == int(keep.sum())
    assert [(g["after"], g["before"], g["missing_steps"]) for g in gaps] == [
        (steps[a - 1], steps[b], b - a) for a, b in planted
    ]


def test_parse_cadence() -> None:
    assert [parse_cadence(c) for c in ("6h", "1d", "30min", "PT6H", "P1D", "PT1H30M")] == [
        21600,
        86400,
        1800,
        21600,
        86400,
        5400,
    ]
    with pytest.raises(ConfigError, match="cadence"):
        parse_cadence("weekly")


def test_coverage_of_a_store_with_planted_facts(
    make_config, arrive, ccmp_archive, tmp_path: Path
) -> None:
    config = make_config(executor="serial")
    files = ccmp_archive(6)
    arrive(files[0], files[1], files[3], files[5])  # holes at day 3 and day 5
    refstore.sync(config)
    arrive(files[2])  # day 3 arrives late
    (Path(config.source_url) / "CCMP_bad.nc").write_bytes(b"garbage")
    refstore.sync(config)
    copies = sorted(Path(config.source_url).glob("CCMP_Wind*.nc"))
    copies[0].unlink()  # a committed source disappears
    refstore.sync(config)

    facts = json.loads(run_cli("coverage", "--json", "-o", "cov.png", cwd=tmp_path).stdout)
    assert facts["cadence_s"] == 21600 and facts["steps"] == 20
    assert facts["gaps"] == [
        {"after": "2024-01-04T18:00:00", "before": "2024-01-06T00:00:00", "missing_steps": 4}
    ]
    assert [r["steps"] for r in facts["runs"]] == [16, 4]
    assert [(x["key"], x["start"]) for x in facts["late"]] == [
        (files[2].name, "2024-01-03T00:00:00")
    ]
    assert [q["key"] for q in facts["quarantined"]] == ["CCMP_bad.nc"]
    assert [m["key"] for m in facts["missing"]] == [files[0].name]
    assert len(facts["snapshots"]) == 2 and facts["revised"] == []
    png = (tmp_path / "cov.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
