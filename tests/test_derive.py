"""Loaded values from a proved derivation (issue 13): with a sidecar, a granule after the
first of its kind costs 1 request (the sidecar) and 0 bytes of the granule.

The rules are pure (:mod:`refstore.derive`); the end-to-end tests sync the real GAMSSA
pair, copies of the real GPM IMERG subset renamed and moved to other half hours, and
copies of a real RSS SSMIS day moved to other days, from the loopback Range HTTP server
with sidecars from the DMR++ writer fixture, and count what the server sent.
"""

from __future__ import annotations

import logging
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import refstore
from refstore import derive
from refstore.config import load_config
from refstore.derive import Proof, Rule, apply, learn
from refstore.verify import verify
from tests.conftest import GRANULES
from tests.dmrpp_writer import write_dmrpp
from tests.granule_factory import imerg_half_hour, imerg_name, rss_day
from tests.helpers import assert_same_values, direct_read
from tests.remote_env import write_config
from tests.servers import RangeHTTPServer

GAMSSA = sorted((GRANULES / "gamssa").glob("*.nc"))
IMERG_TIME = {"units": "seconds since 1970-01-01 00:00:00 UTC", "calendar": "julian"}
RSS = sorted((GRANULES / "rssmif16d").glob("*.nc"))
# The real attributes of the GAMSSA, MUR25 and RSS SSMIS granules in tests/data.
GAMSSA_ATTRS = {
    "start_time": "20241011T000000Z",
    "time_coverage_start": "20241011T000000Z",
    "stop_time": "20241012T000000Z",
    "time_coverage_end": "20241012T000000Z",
    "date_modified": "20241012T120000Z",
}
GAMSSA_TIME = {"units": "seconds since 1981-01-01 00:00:00", "calendar": "Standard"}
SECONDS = np.dtype("int32")


# -- rules: pure --------------------------------------------------------------------------------
def test_gamssa_time_is_the_midpoint_of_its_coverage_and_the_rule_carries_to_the_next_day() -> None:
    rule = learn(np.array([1381492800], SECONDS), GAMSSA_ATTRS, GAMSSA_TIME)
    assert rule == Rule("mid", ("time_coverage_start", "time_coverage_end"), (0,))
    day2 = {"time_coverage_start": "20241012T000000Z", "time_coverage_end": "20241013T000000Z"}
    raw, problem = apply(rule, day2, GAMSSA_TIME, SECONDS, 1)
    assert problem is None and raw.dtype == SECONDS and raw.tolist() == [1381492800 + 86400]


def test_mur_time_is_its_start_time_attribute_not_the_coverage() -> None:
    attrs = {
        "start_time": "20181231T090000Z",
        "time_coverage_start": "20181230T210000Z",
        "time_coverage_end": "20181231T210000Z",
    }
    units = {"units": "seconds since 1981-01-01 00:00:00 UTC"}
    rule = learn(np.array([1199091600], SECONDS), attrs, units)
    assert rule is not None and (rule.kind, rule.names) == ("attr", ("start_time",))


def test_rss_pass_index_repeats_under_each_days_units_and_never_under_the_same_units() -> None:
    day1 = {"units": "hours since 2020-01-02T00:00:00Z"}
    attrs = {"begin_time": "2020-01-02T00:00:00Z", "end_time": "2020-01-02T23:59:59Z"}
    rule = learn(np.array([1, 2], "int16"), attrs, day1)
    assert rule is not None and rule.kind == "same"
    raw, _ = apply(rule, attrs, {"units": "hours since 2021-04-26T00:00:00Z"}, np.int16, 2)
    assert raw.tolist() == [1, 2]
    # Under the proved granule's own units the values would repeat its instants.
    raw, problem = apply(rule, attrs, day1, np.int16, 2)
    assert raw is None and problem is not None and "units" in problem


def test_imerg_time_is_the_start_in_its_file_name_in_its_julian_calendar() -> None:
    noon = datetime(2020, 1, 1, 12)
    # No time among the Grid group's attributes: the file name holds it.
    rule = learn(np.array([1577880000], "i4"), {"GridHeader": "..."}, IMERG_TIME, imerg_name(noon))
    assert rule == Rule("name", ("%Y%m%d-S%H%M%S",), (0,))
    later = imerg_name(noon + timedelta(hours=2, minutes=30))
    raw, problem = apply(rule, {}, IMERG_TIME, np.dtype("i4"), 1, later)
    assert problem is None and raw.dtype == np.dtype("i4") and raw.tolist() == [1577889000]
    # The name is the URL's last segment, unescaped, without its query.
    url = f"https://daac.example/GPM/{later.replace('.', '%2E', 1)}?token=x"
    assert derive.file_name(url) == later
    # A name without that date-time places nothing.
    raw, problem = apply(rule, {}, IMERG_TIME, np.dtype("i4"), 1, "GPM_3IMERGHH_bounds.nc4")
    assert raw is None and problem is not None and "does not match" in problem
    # The first half hour of a day: its day alone (midnight) reproduces it too, and would
    # place every later half hour of the day at midnight.
    midnight = datetime(2020, 1, 1)
    rule = learn(np.array([1577836800], "i4"), {}, IMERG_TIME, imerg_name(midnight))
    later = imerg_name(midnight + timedelta(minutes=30))
    assert rule is not None and apply(rule, {}, IMERG_TIME, "i4", 1, later)[0].tolist() == [
        1577836800 + 1800
    ]
    # The end of the half hour (E122959) is not the time: no rule from the name's end.
    assert learn(np.array([1577881799], "i4"), {}, IMERG_TIME, imerg_name(noon)) != Rule(
        "name", ("%Y%m%d-S%H%M%S",), (0,)
    )


def test_an_uncompressed_coordinate_is_a_grid_only_if_every_value_is_on_it() -> None:
    lat = np.arange(-89.875, 90, 0.25, dtype="f4")  # RSS SSMIS latitude
    assert derive.regular_grid(lat)
    assert derive.regular_grid(np.arange(-179.95, 180, 0.1).astype("f4"))  # within one ulp
    nudged = lat.copy()
    nudged[300] = np.nextafter(np.nextafter(nudged[300], np.float32(90)), np.float32(90))
    assert not derive.regular_grid(nudged)  # two ulps off: data, not a formula
    assert not derive.regular_grid(np.array([0, 1, 3], "i2"))
    assert not derive.regular_grid(np.array([1.0, 2.0, np.nan], "f4"))


def test_a_value_the_units_cannot_hold_exactly_or_a_changed_length_is_not_derived() -> None:
    rule = learn(np.array([1381492800], SECONDS), GAMSSA_ATTRS, GAMSSA_TIME)
    assert rule is not None
    odd = {"time_coverage_start": "20241012T000000Z", "time_coverage_end": "20241012T000001Z"}
    raw, problem = apply(rule, odd, GAMSSA_TIME, SECONDS, 1)  # 00:00:00.5 in whole seconds
    assert raw is None and problem is not None and "exact" in problem
    raw, problem = apply(rule, GAMSSA_ATTRS, GAMSSA_TIME, SECONDS, 2)
    assert raw is None and problem is not None and "steps" in problem


def test_a_proof_survives_the_ledger_text_with_a_scalar_and_an_unreadable_one_is_none() -> None:
    proof = Proof("k", Rule("attr", ("start_time",), (0, 3600)), {"crs": np.array(7, "i4")}, "g")
    back = Proof.from_json(proof.to_json())
    assert back is not None and back.rule == proof.rule and back.proved_on == "g"
    assert back.loaded["crs"].shape == () and back.loaded["crs"].dtype == np.dtype("i4")
    assert Proof.from_json("{not json") is None


def _described(path: Path, edit: Any = None) -> dict[str, Any] | None:
    from refstore.dmrpp import manifest_group
    from refstore.virtualize import choose_loadable
    from tests.dmrpp_writer import dmrpp_text

    text = dmrpp_text(path)
    group = manifest_group((edit(text) if edit else text).encode(), f"http://daac/{path.name}")
    dims = {n: tuple(a.metadata.dimension_names or ()) for n, a in group.arrays.items()}
    return derive.describe(group, choose_loadable(dims, "time", None), "time")


def test_two_days_describe_alike_unless_a_compressed_length_differs_and_raw_grids_never() -> None:
    day1, day2 = (_described(f) for f in GAMSSA)
    assert day1 is not None and day2 is not None and derive.key(day1) == derive.key(day2)
    # Another compressed size of lat's chunk: another grid may hide there, so read it.
    longer = _described(GAMSSA[1], lambda t: t.replace('nBytes="823"', 'nBytes="824"', 1))
    assert longer is not None and derive.key(longer) != derive.key(day1)


def test_an_uncompressed_grid_is_described_by_where_it_lies_too() -> None:
    # RSS SSMIS keeps lat/lon uncompressed: any grid of that shape has the same lengths,
    # so where they lie is part of the description; files a year apart differ by 16 B.
    day1, year_later = (_described(f) for f in RSS)
    assert day1 is not None and year_later is not None
    assert day1["latitude"]["raw_at"] == [("0", 106792, 2880)]
    assert derive.key(day1) != derive.key(year_later)
    moved = _described(RSS[0], lambda t: t.replace('offset="106792"', 'offset="106800"', 1))
    assert moved is not None and derive.key(moved) != derive.key(day1)


# -- end to end: the loopback server counts what the granules cost ------------------------------
def _daac(tmp_path: Path, edit_day2: Any = None) -> Path:
    served = tmp_path / "daac"
    served.mkdir()
    for f in GAMSSA:
        shutil.copy(f, served / f.name)
    write_dmrpp(served / GAMSSA[0].name)
    write_dmrpp(served / GAMSSA[1].name, edit=edit_day2)
    return served


def _config(folder: Path, urls: list[str], group: str = "") -> Any:
    (folder / "granules.txt").write_text("".join(u + "\n" for u in urls))
    sections = {"source": {"urls_file": "granules.txt"}, "sync": {"executor": "serial"}}
    if group:
        sections["dataset"] = {"concat_dim": "time", "group": group}
    write_config(folder, sections)
    return load_config(folder / "refstore.toml", environ={})


@pytest.fixture
def unsampled(monkeypatch: pytest.MonkeyPatch) -> None:
    """No granule is picked for the sampled read (the keys carry a random port)."""
    monkeypatch.setattr(derive, "CHECK_EVERY", 2**62)


def _wrong_day(text: str) -> str:
    # A sidecar whose coverage says the next day: the file's time is 2024-10-12T12:00.
    out = text.replace("20241013T000000Z", "20241014T000000Z")
    return out.replace("20241012T000000Z", "20241013T000000Z")


@pytest.mark.usefixtures("unsampled")
def test_after_the_first_granule_a_sidecar_places_a_granule_with_zero_granule_bytes(
    tmp_path: Path,
) -> None:
    served = _daac(tmp_path)
    day1, day2 = (f.name for f in GAMSSA)
    with RangeHTTPServer(served) as srv:
        config = _config(tmp_path, [srv.url_for(day1), srv.url_for(day2)])
        result = refstore.sync(config)
        assert len(result.added) == 2 and not result.quarantined
        first, second = srv.stats(day1), srv.stats(day2)
        assert first.bytes_sent > 0  # the first of its kind reads its coordinates (proof)
        # The second: HEAD at discovery, its sidecar, nothing of the granule.
        assert (second.gets, second.bytes_sent) == (0, 0), second
        assert srv.stats(day2 + ".dmrpp").gets == 1
        expected = direct_read(GAMSSA)
        assert_same_values(refstore.open_dataset(config).load(), expected)
        assert_same_values(refstore.open_dataset(config, source="export").load(), expected)


def test_a_wrong_coverage_in_a_later_sidecar_is_caught_by_the_sampled_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(derive, "CHECK_EVERY", 1)  # every derived granule is read too
    served = _daac(tmp_path, edit_day2=_wrong_day)
    with RangeHTTPServer(served) as srv:
        config = _config(tmp_path, [srv.url_for(f.name) for f in GAMSSA])
        with caplog.at_level(logging.WARNING, logger="refstore"):
            result = refstore.sync(config)
        assert len(result.added) == 2
        assert_same_values(refstore.open_dataset(config).load(), direct_read(GAMSSA))
    assert f"{GAMSSA[1].name}: values of time differ from the derivation" in caplog.text
    assert "refstore verify" in caplog.text


@pytest.mark.usefixtures("unsampled")
def test_a_wrong_coverage_placed_unsampled_is_named_by_verify(tmp_path: Path) -> None:
    served = _daac(tmp_path, edit_day2=_wrong_day)
    with RangeHTTPServer(served) as srv:
        config = _config(tmp_path, [srv.url_for(f.name) for f in GAMSSA])
        refstore.sync(config)
        report = verify(config, sample=1, seed=0)
    assert not report.ok
    assert any(GAMSSA[1].name in m and "time" in m for m in report.mismatches), report.mismatches


def _epoch_granule(path: Path, day: int, hours: list[int]) -> Path:
    """A small netCDF-4 granule whose time is ``hours`` since its own day (compressed lat
    and lon), as products with a per-file epoch write it."""
    import pandas as pd
    import xarray as xr

    epoch = pd.Timestamp("2024-10-01") + pd.Timedelta(days=day)
    times = [epoch + pd.Timedelta(hours=h) for h in hours]
    lat, lon = np.linspace(-60, 60, 24, dtype="f4"), np.linspace(0, 350, 36, dtype="f4")
    sst = np.full((len(hours), lat.size, lon.size), 290.0 + day, dtype="f4")
    ds = xr.Dataset(
        {"sst": (("time", "lat", "lon"), sst)},
        coords={"time": times, "lat": lat, "lon": lon},
    )
    units = f"hours since {epoch:%Y-%m-%dT%H:%M:%S}Z"
    zlib = {"zlib": True, "_FillValue": None}
    ds.to_netcdf(
        path,
        engine="h5netcdf",
        encoding={
            "time": {"dtype": "int32", "units": units},
            "lat": zlib,
            "lon": zlib,
            "sst": {"zlib": True},
        },
    )
    write_dmrpp(path)
    return path


@pytest.mark.usefixtures("unsampled")
def test_repeated_raw_values_are_applied_only_after_a_second_granule_shows_them(
    tmp_path: Path,
) -> None:
    served = tmp_path / "daac"
    served.mkdir()
    # Day 2's raw values differ from day 1's: one granule cannot tell repeating raw
    # values from a coincidence, so day 1's rule must not place day 2.
    days = {1: [0, 12], 2: [6, 18], 3: [0, 12], 4: [0, 12]}
    files = [_epoch_granule(served / f"epoch_{d}.nc", d, h) for d, h in days.items()]
    with RangeHTTPServer(served) as srv:
        config = _config(tmp_path, [srv.url_for(f.name) for f in files[:3]])
        assert len(refstore.sync(config).added) == 3
        assert all(srv.stats(f.name).bytes_sent > 0 for f in files[:3])
        with (tmp_path / "granules.txt").open("a") as out:
            out.write(srv.url_for(files[3].name) + "\n")
        srv.reset_stats()
        assert len(refstore.sync(config).added) == 1
        # Day 3 showed day 1's raw values again under its own units: day 4 reads nothing.
        assert srv.stats(files[3].name).bytes_sent == 0
        assert_same_values(refstore.open_dataset(config).load(), direct_read(files))


def test_an_unconfirmed_derivation_leaves_the_coordinates_read_in_the_sidecars_round_trip(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from refstore.models import Granule
    from refstore.sources.https import http_registry
    from refstore.virtualize import HINT_MARGIN, DatasetSpec, virtualize_granule

    served = tmp_path / "daac"
    served.mkdir()
    day1, day2 = (_epoch_granule(served / f"epoch_{d}.nc", d, [0, 12]) for d in (1, 2))
    with RangeHTTPServer(served) as srv:
        urls = [srv.url_for(f.name) for f in (day1, day2)]

        class Source:
            def registry(self) -> Any:
                return http_registry(urls, None)

        spec = DatasetSpec("time", dmrpp="always")
        g1, g2 = (
            Granule(u, u, "r", size=f.stat().st_size)
            for u, f in zip(urls, (day1, day2), strict=True)
        )
        first = virtualize_granule(g1, spec, Source())
        assert first.proof is not None and not Proof.from_json(first.proof).confirmed
        srv.reset_stats()
        hinted = replace(spec, coord_hint=first.coord_ranges, proofs=(first.proof,))
        second = virtualize_granule(g2, hinted, Source())
        st = srv.stats(day2.name)
    # Read while the sidecar was fetched: the hint (widened by the margin), not after it.
    assert st.gets == 1 and st.ranges[0][0] <= min(o for o, _ in first.coord_ranges) - HINT_MARGIN
    assert not second.derived and second.proof is not None  # day 2 confirmed it
    assert Proof.from_json(second.proof).confirmed


def test_the_ledger_keeps_a_known_derivation_until_a_confirmed_one_or_a_contradiction() -> None:
    from types import SimpleNamespace

    from refstore.sync import _learn_proofs

    def result(proof: Proof | None, disproved: str | None = None) -> Any:
        return SimpleNamespace(proof=proof.to_json() if proof else None, disproved=disproved)

    same = Rule("same", ("hours since 2024-10-02",), raw=(0, 12))
    first = Proof("k", same, {}, "day1", confirmed=False)
    proofs: dict[str, str] = {}
    assert _learn_proofs(proofs, [result(first)]) and proofs["k"] == first.to_json()
    # Learnt again unconfirmed (other raw values): no ledger write per granule.
    other = Proof("k", Rule("same", ("hours since 2024-10-03",), raw=(6, 18)), {}, "day2", False)
    assert not _learn_proofs(proofs, [result(other)]) and proofs["k"] == first.to_json()
    shown = Proof("k", same, {}, "day3", confirmed=True)
    assert _learn_proofs(proofs, [result(shown)]) and proofs["k"] == shown.to_json()
    assert _learn_proofs(proofs, [result(None, disproved="k")]) and proofs == {}


# -- GPM IMERG: time from the file name; RSS SSMIS: an uncompressed regular grid ---------------
def _imerg(folder: Path, start: datetime, time: datetime | None = None) -> Path:
    path = imerg_half_hour(folder, start, time)
    write_dmrpp(path, "Grid")
    return path


@pytest.mark.usefixtures("unsampled")
def test_imerg_after_the_first_half_hour_costs_its_sidecar_alone(tmp_path: Path) -> None:
    served = tmp_path / "daac"
    served.mkdir()
    noon = datetime(2020, 1, 1, 12)
    files = [_imerg(served, noon + timedelta(minutes=30 * i)) for i in range(3)]
    with RangeHTTPServer(served) as srv:
        config = _config(tmp_path, [srv.url_for(f.name) for f in files], group="Grid")
        result = refstore.sync(config)
        assert len(result.added) == 3 and not result.quarantined
        assert srv.stats(files[0].name).bytes_sent > 0  # the first proves the rule
        for f in files[1:]:
            assert (srv.stats(f.name).gets, srv.stats(f.name).bytes_sent) == (0, 0), f.name
            assert srv.stats(f.name + ".dmrpp").gets == 1
        expected = direct_read(files, group="Grid")
        assert_same_values(refstore.open_dataset(config).load(), expected)
        assert_same_values(refstore.open_dataset(config, source="export").load(), expected)


@pytest.mark.usefixtures("unsampled")
def test_an_imerg_file_named_for_another_half_hour_is_named_by_verify(tmp_path: Path) -> None:
    served = tmp_path / "daac"
    served.mkdir()
    noon = datetime(2020, 1, 1, 12)
    first = _imerg(served, noon)
    # Named 12:30, holding 13:00: placed at 12:30 from its name, its data says 13:00.
    liar = _imerg(served, noon + timedelta(minutes=30), noon + timedelta(hours=1))
    with RangeHTTPServer(served) as srv:
        config = _config(tmp_path, [srv.url_for(f.name) for f in (first, liar)], group="Grid")
        refstore.sync(config)
        assert srv.stats(liar.name).bytes_sent == 0
        report = verify(config, sample=1, seed=0)
    assert not report.ok
    assert any(liar.name in m and "time" in m for m in report.mismatches), report.mismatches


@pytest.mark.usefixtures("unsampled")
@pytest.mark.parametrize("nudge", [False, True], ids=["regular", "irregular-lat"])
def test_rss_uncompressed_lat_lon_are_derived_only_from_a_regular_grid(
    tmp_path: Path, nudge: bool
) -> None:
    served = tmp_path / "daac"
    served.mkdir()
    days = [date(2020, 1, 2) + timedelta(days=i) for i in range(3)]
    files = [rss_day(served, d, nudge) for d in days]
    for f in files:
        write_dmrpp(f)
    with RangeHTTPServer(served) as srv:
        config = _config(tmp_path, [srv.url_for(f.name) for f in files])
        assert len(refstore.sync(config).added) == 3
        # Days 1 and 2 read, each alone (repeated raw times are applied once a second
        # day showed them): in the same sync, day 3 costs its sidecar alone, unless its
        # latitude is no regular grid.
        assert all(srv.stats(f.name).bytes_sent > 0 for f in files[:2])
        third = srv.stats(files[2].name)
        assert (third.bytes_sent > 0) is nudge, third
        assert srv.stats(files[2].name + ".dmrpp").gets == 1
        _same_in_a_window(config, files)


def _same_in_a_window(config: Any, files: list[Path]) -> None:
    """The store and its export hold what the files hold: coordinates whole, the data
    variables in one chunk's window (every chunk is one loopback request, 128 per
    variable and granule: the whole would take minutes)."""
    expected = direct_read(files)
    window = {"latitude": slice(360, 450), "longitude": slice(0, 90)}  # Gulf of Guinea, land
    for source in ("repo", "export"):
        got = refstore.open_dataset(config, source=source)
        data = list(expected.data_vars)
        assert_same_values(got.drop_vars(data).load(), expected.drop_vars(data))
        assert_same_values(got.isel(window).load(), expected.isel(window))


def test_a_later_rss_day_on_another_grid_in_the_same_layout_is_caught_by_the_sampled_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The trade-off of an uncompressed grid: nothing in day 3's sidecar shows its moved
    # latitude. The sampled read (here every derived granule) does.
    monkeypatch.setattr(derive, "CHECK_EVERY", 1)
    served = tmp_path / "daac"
    served.mkdir()
    days = [date(2020, 1, 2) + timedelta(days=i) for i in range(3)]
    files = [rss_day(served, d, nudge=i == 2) for i, d in enumerate(days)]
    for f in files:
        write_dmrpp(f)
    with RangeHTTPServer(served) as srv:
        config = _config(tmp_path, [srv.url_for(f.name) for f in files])
        with caplog.at_level(logging.WARNING, logger="refstore"):
            result = refstore.sync(config)
        assert srv.stats(files[2].name).bytes_sent > 0
    assert f"{files[2].name}: values of latitude differ from the derivation" in caplog.text
    assert not any(files[2].name in k for k in result.added), "placed on day 1's grid"
    assert any(files[2].name in f.key for f in result.quarantined), result.quarantined
