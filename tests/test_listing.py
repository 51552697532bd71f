"""`refstore ls`: one row per granule from the ledger, filters, and what a snapshot held."""

from __future__ import annotations

import json
from pathlib import Path

import refstore
from refstore.listing import list_granules
from tests.conftest import run_cli


def test_ls_rows_filters_and_at(make_config, arrive, ccmp_archive, tmp_path: Path) -> None:
    config = make_config(executor="serial")
    files = ccmp_archive(3)
    arrive(files[0], files[2])
    first = refstore.sync(config, tag="one").snapshots[0]
    arrive(files[1])  # late: lands in place, the tail is rewritten
    (Path(config.source_url) / "0_broken.nc").write_bytes(b"not a netcdf file")
    refstore.sync(config)

    rows = json.loads(run_cli("ls", "--json", cwd=tmp_path).stdout)
    committed = [r for r in rows if r["state"] == "committed"]
    assert [r["key"] for r in committed] == [f.name for f in files]
    assert [(r["offset"], r["length"]) for r in committed] == [(0, 4), (4, 4), (8, 4)]
    assert committed[1]["start"] == "2024-01-02T00:00:00"
    assert committed[1]["end"] == "2024-01-02T18:00:00"
    assert committed[0]["snapshot"] == first and committed[1]["snapshot"] != first
    (bad,) = list_granules(config, state="quarantined")
    assert bad.key == "0_broken.nc" and bad.reason and bad.offset is None

    assert [r.key for r in list_granules(config, since="2024-01-02T12:00")] == [
        files[1].name,
        files[2].name,
    ]
    held = list_granules(config, at="one")
    assert [(r.key, r.offset) for r in held] == [(files[0].name, 0), (files[2].name, 4)]
    text = run_cli("ls", "--state", "quarantined", cwd=tmp_path).stdout.splitlines()
    assert text[0].split()[:3] == ["key", "state", "start"] and "0_broken.nc" in text[1]

    # Concat order, not key order: placed granules by offset, then the unplaced (whose
    # key sorts first here); a placed granule gone from the source shows as missing.
    Path(config.source_url, files[0].name).unlink()
    refstore.sync(config)
    rows = json.loads(run_cli("ls", "--json", cwd=tmp_path).stdout)
    assert [r["key"] for r in rows] == [f.name for f in files] + ["0_broken.nc"]
    assert rows[0]["state"] == "missing" and rows[0]["offset"] == 0
    assert rows[0]["reason"].startswith("gone from the source since 20")


def test_ls_of_an_empty_ledger(make_config, tmp_path: Path) -> None:
    make_config()
    assert run_cli("ls", cwd=tmp_path).stdout.split() == [
        "key",
        "state",
        "start",
        "end",
        "offset",
        "rev",
        "snapshot",
        "reason",
    ]


def test_ls_values_as_text_equal_the_numpy_conversion() -> None:
    import json

    import numpy as np

    from refstore.admit import placed_value, to_json_value
    from refstore.listing import value_text
    from refstore.virtualize import format_value

    values = [
        np.datetime64("2024-01-01T06:00", "ns"),
        np.datetime64("1969-12-31T23:59:59.5", "ns"),
        np.datetime64("1900-02-28T12:00:00.123456789", "ns"),
        np.datetime64("2262-04-11T23:47:16", "ns"),
        np.int64(17),
        2.5,
        "orbit-0001",
    ]
    for v in values:
        text = json.dumps(to_json_value(v))
        assert value_text(text) == format_value(placed_value(text)), text
    assert value_text(None) is None and value_text("") is None


def test_status_gaps_from_placements_as_planted() -> None:
    import json

    import numpy as np

    from refstore.admit import order_key, placed_value, to_json_value
    from refstore.models import Placement
    from refstore.status import _order_keys, coverage_gaps

    def placements(values: list[tuple[object, object]]) -> list[Placement]:
        return [
            Placement(
                key=f"g{i}",
                revision="r",
                url="u",
                offset=4 * i,
                length=4,
                first=json.dumps(to_json_value(a)),
                last=json.dumps(to_json_value(b)),
            )
            for i, (a, b) in enumerate(values)
        ]

    days = np.arange("1969-12-01", "1970-02-01", dtype="datetime64[D]")
    kept = [d for i, d in enumerate(days) if i not in (3, 40, 41)]  # planted: 1 day, 2 days
    six = np.timedelta64(18, "h")
    ps = placements([(np.datetime64(d, "ns"), np.datetime64(d, "ns") + six) for d in kept])
    assert coverage_gaps(ps) == [
        {"after": f"{days[2]}T18:00:00", "before": f"{days[4]}T00:00:00"},
        {"after": f"{days[39]}T18:00:00", "before": f"{days[42]}T00:00:00"},
    ]
    texts = [p.first for p in ps if p.first]
    assert _order_keys(texts) == [order_key(placed_value(t)) for t in texts]
    numbers = placements([(0, 3), (4, 7), (12, 15), (16, 19)])  # not datetimes: one gap
    assert coverage_gaps(numbers) == [{"after": "7", "before": "12"}]
