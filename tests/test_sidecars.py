"""Where sidecars are looked for (issue 13): a collection without them stops paying a 404
per granule, and CMR's ``RelatedUrls`` name the sidecar instead of a guess.

The decision logic is pure (:mod:`refstore.sidecars`); the end-to-end tests sync real
netCDF-4 granules from the loopback Range HTTP server, with a real ledger and repository,
and count the requests the server saw.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import refstore
from refstore.config import load_config
from refstore.sidecars import ABSENT_AFTER, REPROBE_EVERY, Memory, phase, remember
from refstore.sources.earthdata import _sidecar
from tests.conftest import GRANULES
from tests.dmrpp_writer import write_dmrpp
from tests.helpers import assert_same_values, direct_read
from tests.remote_env import IGNORE_SIZE_WARNING, write_config
from tests.servers import CmrReplayServer, GranuleCatalog, RangeHTTPServer

GAMSSA = sorted((GRANULES / "gamssa").glob("*.nc"))
# A real PO.DAAC UMM-G page (UAT): data link, .md5 and .cmr.json as EXTENDED METADATA.
RECORDED = GRANULES.parent / "cmr" / "hitide-backfill-tool" / "sample_granules_1.json"
UAT = "https://archive.podaac.uat.earthdata.nasa.gov/"
COLL = "MODIS_T-JPL-L2P-v2019.0"  # the recorded items' collection folder
TOKEN = "refstore-test-sidecar-bearer-5e4d"


# -- the memory: pure ---------------------------------------------------------------------------
def _run(memory: Memory, found: list[bool], named: list[bool] | None = None) -> tuple[int, Memory]:
    """Drive phase/remember over granules whose sidecar exists per ``found``: looks made."""
    named = named or [False] * len(found)
    looks, start = 0, 0
    while start < len(found):
        want, n = phase(memory, named[start:])
        probes = [
            ("found" if found[start + i] else "absent") if want[i] else None for i in range(n)
        ]
        looks += sum(want[i] and not named[start + i] for i in range(n))
        memory = remember(memory, named[start : start + n], probes)
        start += n
    return looks, memory


def test_a_collection_without_sidecars_pays_a_few_misses_then_one_look_per_hundred() -> None:
    looks, memory = _run(Memory(), [False] * 1000)
    assert memory.absent
    # ABSENT_AFTER misses, then one re-look every REPROBE_EVERY granules.
    assert looks == ABSENT_AFTER + (1000 - ABSENT_AFTER) // REPROBE_EVERY
    assert Memory.from_json(memory.to_json()) == memory


def test_sidecars_present_are_looked_for_every_granule_and_a_gap_does_not_stop_it() -> None:
    found = [True] * 50 + [False] * (ABSENT_AFTER - 1) + [True] * 50
    looks, memory = _run(Memory(), found)
    assert looks == len(found) and memory.found and not memory.absent


def test_sidecars_published_later_are_noticed_within_one_reprobe_interval() -> None:
    _, memory = _run(Memory(), [False] * 10)
    assert memory.absent and memory.skipped == 10 - ABSENT_AFTER
    looks, memory = _run(memory, [True] * (REPROBE_EVERY + 20))
    assert memory.found and not memory.absent
    # Not looked for until the re-look (which finds one); every later granule is again.
    not_looked = REPROBE_EVERY - 1 - (10 - ABSENT_AFTER)
    assert looks == REPROBE_EVERY + 20 - not_looked


def test_named_sidecars_are_always_fetched_and_do_not_count() -> None:
    _, memory = _run(Memory(), [False] * 10)
    want, n = phase(memory, [True, False, True])
    assert want == [True, False, True] and n == 3
    assert remember(memory, [True], ["absent"]) == memory


def test_an_unreadable_memory_starts_afresh() -> None:
    assert Memory.from_json("{not json") == Memory()
    assert Memory.from_json(None) == Memory()


# -- end to end: a collection without sidecars over HTTP ----------------------------------------
def _http_config(folder: Path, urls: list[str], **source: Any) -> Any:
    (folder / "granules.txt").write_text("".join(u + "\n" for u in urls))
    write_config(
        folder, {"source": {"urls_file": "granules.txt", **source}, "sync": {"executor": "serial"}}
    )
    return load_config(folder / "refstore.toml", environ={})


def test_auto_without_sidecars_stops_looking_and_remembers_across_syncs(
    tmp_path: Path, ccmp_archive: Callable[..., list[Path]]
) -> None:
    files = ccmp_archive(8)
    with RangeHTTPServer(files[0].parent) as srv:
        config = _http_config(tmp_path, [srv.url_for(f.name) for f in files[:6]])
        first = refstore.sync(config)
        assert len(first.added) == 6 and not first.quarantined
        looked = [f.name for f in files if srv.stats(f.name + ".dmrpp").requests]
        assert looked == [f.name for f in files[:ABSENT_AFTER]]
        for f in files[ABSENT_AFTER:6]:  # HEAD at discovery + one head read, nothing else
            st = srv.stats(f.name)
            assert (st.heads, st.gets) == (1, 1), (f.name, st)
        # The next sync starts from what the ledger remembers: no look at all.
        with (tmp_path / "granules.txt").open("a") as out:
            out.writelines(srv.url_for(f.name) + "\n" for f in files[6:])
        srv.reset_stats()
        second = refstore.sync(config)
        assert len(second.added) == 2
        assert [f.name for f in files if srv.stats(f.name + ".dmrpp").requests] == []
        assert_same_values(refstore.open_dataset(config).load(), direct_read(files))


# -- CMR RelatedUrls name the sidecar ------------------------------------------------------------
def _recorded_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(RECORDED.read_text())["items"]
    return items


def test_related_urls_pick_the_dmrpp_link_not_other_extended_metadata() -> None:
    item = copy.deepcopy(_recorded_items()[0])
    data = item["umm"]["RelatedUrls"][1]["URL"]
    assert _sidecar(item, data) is None  # .md5 and .cmr.json are EXTENDED METADATA too
    item["umm"]["RelatedUrls"] += [
        {
            "URL": data + ".dmrpp.missing",
            "Type": "EXTENDED METADATA",
            "Subtype": "DMR++ MISSING DATA",
        },
        {"URL": "s3://bucket/x.nc.dmrpp", "Type": "EXTENDED METADATA", "Subtype": "DMR++"},
        {"URL": UAT + "meta/x.dmrpp", "Type": "EXTENDED METADATA", "Subtype": "DMR++"},
    ]
    assert _sidecar(item, data) == UAT + "meta/x.dmrpp"  # reached like the data (HTTPS)
    assert _sidecar(item, "s3://bucket/x.nc") == "s3://bucket/x.nc.dmrpp"


def _gamssa_item(recorded: dict[str, Any], path: Path, sidecar: str | None) -> dict[str, Any]:
    """A recorded PO.DAAC item made to describe a GAMSSA granule, its sidecar elsewhere."""
    item = copy.deepcopy(recorded)
    stem, day = path.stem, path.name[:8]
    item["meta"].update({"native-id": stem, "concept-id": None})
    del item["meta"]["concept-id"]
    umm = item["umm"]
    umm["GranuleUR"] = stem
    umm["TemporalExtent"]["RangeDateTime"] = {
        "BeginningDateTime": f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00.000Z",
        "EndingDateTime": f"{day[:4]}-{day[4:6]}-{day[6:]}T23:59:59.000Z",
    }
    umm["DataGranule"]["ArchiveAndDistributionInformation"] = [
        {"Name": path.name, "SizeInBytes": path.stat().st_size}
    ]
    links = []
    for link in umm["RelatedUrls"]:
        if link["Type"] in ("GET DATA", "EXTENDED METADATA"):
            old = link["URL"].rsplit("/", 1)[1]
            link["URL"] = link["URL"].replace(old, old.replace(recorded["umm"]["GranuleUR"], stem))
        links.append(link)
    if sidecar is not None:
        links.append(
            {"URL": sidecar, "Description": "OPeNDAP DMR++", "Type": "EXTENDED METADATA",
             "Subtype": "DMR++"}
        )  # fmt: skip
    umm["RelatedUrls"] = links
    return item


@IGNORE_SIZE_WARNING
@pytest.mark.usefixtures("loopback_only")
def test_cmr_related_urls_sidecar_is_used_instead_of_a_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "daac"
    protected = served / "podaac-uat-cumulus-protected" / COLL
    public = served / "podaac-uat-cumulus-public" / COLL / "dmrpp"
    protected.mkdir(parents=True)
    public.mkdir(parents=True)
    for f in GAMSSA:
        shutil.copy(f, protected / f.name)
        write_dmrpp(protected / f.name)  # written next to the granule, then moved away:
        (protected / (f.name + ".dmrpp")).rename(public / (f.name + ".dmrpp"))
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    recorded = _recorded_items()[0]
    short_name = recorded["umm"]["CollectionReference"]["ShortName"]
    items = [
        _gamssa_item(recorded, f, f"{UAT}podaac-uat-cumulus-public/{COLL}/dmrpp/{f.name}.dmrpp")
        for f in GAMSSA
    ]
    for item, f in zip(items, GAMSSA, strict=True):
        data = next(u["URL"] for u in item["umm"]["RelatedUrls"] if u["Type"] == "GET DATA")
        assert data == f"{UAT}podaac-uat-cumulus-protected/{COLL}/{f.name}"
    with RangeHTTPServer(served, bearer_token=TOKEN) as srv:
        catalog = GranuleCatalog(items, link_rewrites={UAT: srv.base_url + "/"})
        with CmrReplayServer(catalog) as cmr:
            write_config(
                tmp_path,
                {
                    "source": {
                        "short_name": short_name,
                        "access": "external",
                        "cmr_url": cmr.search_url,
                        "login": "token",
                    },
                    "sync": {"executor": "serial"},
                },
            )
            config = load_config(tmp_path / "refstore.toml", environ={})
            result = refstore.sync(config)
        assert len(result.added) == 2 and not result.quarantined
        for f in GAMSSA:
            named = srv.stats(f"podaac-uat-cumulus-public/{COLL}/dmrpp/{f.name}.dmrpp")
            guessed = srv.stats(f"podaac-uat-cumulus-protected/{COLL}/{f.name}.dmrpp")
            assert (named.gets, named.statuses[200]) == (1, 1), f.name
            assert guessed.requests == 0, f.name
        # The second granule (a verified signature) was built from its sidecar alone: its
        # coordinates follow from it as day 1 proved (refstore.derive; day 1 was
        # cross-checked), no byte of the granule.
        day2 = srv.stats(f"podaac-uat-cumulus-protected/{COLL}/{GAMSSA[1].name}")
        assert (day2.gets, day2.bytes_sent) == (0, 0), day2
        assert_same_values(refstore.open_dataset(config).load(), direct_read(GAMSSA))


@IGNORE_SIZE_WARNING
@pytest.mark.usefixtures("loopback_only")
def test_a_sidecar_named_on_a_host_the_login_may_not_reach_is_not_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    served = tmp_path / "daac"
    protected = served / "podaac-uat-cumulus-protected" / COLL
    protected.mkdir(parents=True)
    shutil.copy(GAMSSA[0], protected / GAMSSA[0].name)
    write_dmrpp(protected / GAMSSA[0].name)
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    recorded = _recorded_items()[0]
    mirror = "https://mirror.example.net/"
    item = _gamssa_item(recorded, GAMSSA[0], f"{mirror}{COLL}/{GAMSSA[0].name}.dmrpp")
    with (
        RangeHTTPServer(served, bearer_token=TOKEN) as srv,
        RangeHTTPServer(protected, host="127.0.0.2") as foreign,
    ):
        rewrites = {UAT: srv.base_url + "/", mirror: foreign.base_url + "/"}
        with CmrReplayServer(GranuleCatalog([item], link_rewrites=rewrites)) as cmr:
            write_config(
                tmp_path,
                {
                    "source": {
                        "short_name": recorded["umm"]["CollectionReference"]["ShortName"],
                        "access": "external",
                        "cmr_url": cmr.search_url,
                        "login": "token",
                    },
                    "sync": {"executor": "serial"},
                },
            )
            config = load_config(tmp_path / "refstore.toml", environ={})
            with caplog.at_level(logging.INFO, logger="refstore"):
                result = refstore.sync(config)
        assert result.added == (GAMSSA[0].stem,) and not result.quarantined
        assert foreign.total_requests == 0 and foreign.authorization_headers == 0
        assert "from its own metadata: sidecar http://127.0.0.2" in caplog.text
        assert_same_values(refstore.open_dataset(config).load(), direct_read(GAMSSA[:1]))


# -- coordinates read while the sidecar is fetched -----------------------------------------------
def _timed_sidecar_build(url: str, size: int, hint: tuple[tuple[int, int], ...]) -> Any:
    import time

    from refstore.models import Granule
    from refstore.sources.https import http_registry
    from refstore.virtualize import DatasetSpec, virtualize_granule

    class Source:
        def registry(self) -> Any:
            return http_registry([url], None)

    spec = DatasetSpec("time", dmrpp="always", coord_hint=hint)
    start = time.perf_counter()
    out = virtualize_granule(Granule(url, url, "r", size=size), spec, Source())
    return out, time.perf_counter() - start


def test_a_coordinate_hint_reads_the_coordinates_in_the_sidecars_round_trip(
    tmp_path: Path,
) -> None:
    served = tmp_path / "daac"
    served.mkdir()
    for f in GAMSSA:
        shutil.copy(f, served / f.name)
        write_dmrpp(served / f.name)
    day1, day2 = (served / f.name for f in GAMSSA)
    latency = 1.0  # per request: the saved round trip stands out of CPU noise
    with RangeHTTPServer(served, latency=latency) as srv:
        first, _ = _timed_sidecar_build(srv.url_for(day1.name), day1.stat().st_size, ())
        assert first.origin == "dmrpp" and first.coord_ranges
        srv.reset_stats()
        plain, t_plain = _timed_sidecar_build(srv.url_for(day2.name), day2.stat().st_size, ())
        srv.reset_stats()
        hinted, t_hint = _timed_sidecar_build(
            srv.url_for(day2.name), day2.stat().st_size, first.coord_ranges
        )
        st = srv.stats(day2.name)
        assert st.gets == 1 and st.bytes_sent < 30_000, st.ranges  # the hint was right
        assert t_hint < t_plain - latency / 2, (t_hint, t_plain)
        # A wrong hint costs its bytes and the exact read after the sidecar; same granule.
        srv.reset_stats()
        wrong, _ = _timed_sidecar_build(
            srv.url_for(day2.name), day2.stat().st_size, ((500_000, 20_000),)
        )
        assert srv.stats(day2.name).gets == 2
    for out in (hinted, wrong):
        assert out.origin == "dmrpp" and out.first == plain.first
        for name in plain.dataset.variables:
            a, b = out.dataset.variables[name], plain.dataset.variables[name]
            if not hasattr(b.data, "manifest"):
                assert a.dtype == b.dtype and (a.values == b.values).all(), name
