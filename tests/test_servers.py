"""Tests of the loopback test servers themselves (tests/servers/).

Everything runs on 127.0.0.1; an autouse fixture fails any test whose Python code tries to open a
connection (or resolve a name) off loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.servers import no_external_network
from tests.servers.cmr import (
    DEFAULT_CMR_DIR,
    CmrReplayServer,
    GranuleCatalog,
    granule_item,
    recorded_files,
    rewrite_links,
)
from tests.servers.earthdata_auth import EarthdataAuthServer
from tests.servers.http_range import RangeHTTPServer, parse_range
from tests.servers.s3 import MotoS3Server

_REPO_GRANULES = Path(__file__).parent / "data" / "granules"
GRANULES = Path(
    os.environ.get("REFSTORE_TEST_GRANULES")
    or (_REPO_GRANULES if _REPO_GRANULES.is_dir() else "/work/shared/data/granules")
)
GAMSSA = GRANULES / "gamssa"
GAMSSA_DAY1 = "20241011120000-ABOM-L4_GHRSST-SSTfnd-GAMSSA_28km-GLOB-v02.0-fv01.0.nc"
GAMSSA_DAY2 = "20241012120000-ABOM-L4_GHRSST-SSTfnd-GAMSSA_28km-GLOB-v02.0-fv01.0.nc"
MOD02QKM = "python_cmr/MOD02QKM_searchafter.granules.umm_json.page_size2.i*.json"
TELLUS = "earthaccess/TELLUS_GRAC_L3_JPL_RL06_LND_v04.granules.umm_json.page_size2000.i01.json"
TELLUS_SHORT_NAME = "TELLUS_GRAC_L3_JPL_RL06_LND_v04"

# DataGranule.__init__ calls its own deprecated size(), warning on every granule (earthaccess 0.18).
ignore_earthaccess_size_warning = pytest.mark.filterwarnings(
    "ignore:As of version 1.0, `DataGranule.size`:FutureWarning"
)

pytestmark = pytest.mark.skipif(
    not (GAMSSA / GAMSSA_DAY1).is_file() or not DEFAULT_CMR_DIR.is_dir(),
    reason="shared test data (granules / recorded CMR responses) not available",
)


@pytest.fixture(autouse=True)
def _loopback_only() -> Iterator[None]:
    with no_external_network() as blocked:
        yield
    assert blocked == [], f"traffic tried to leave 127.0.0.1: {blocked}"


# -- helpers ------------------------------------------------------------------------------------
def _request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def _get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    status, hdrs, body = _request(url, headers=headers)
    return status, hdrs, json.loads(body)


# -- RangeHTTPServer ----------------------------------------------------------------------------
def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-3", 10) == (0, 4)
    assert parse_range("bytes=7-", 10) == (7, 10)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=-30", 10) == (0, 10)
    assert parse_range("bytes=5-100", 10) == (5, 10)
    assert parse_range("bytes=10-", 10) == "unsatisfiable"
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=0-1,4-5", 10) is None  # multi-range: ignored, full body
    assert parse_range("bytes=5-2", 10) is None  # invalid: ignored
    assert parse_range("items=0-1", 10) is None


def test_http_range_semantics_and_counters() -> None:
    data = (GAMSSA / GAMSSA_DAY1).read_bytes()
    size = len(data)
    with RangeHTTPServer(GAMSSA) as srv:
        url = srv.url_for(GAMSSA_DAY1)
        status, h, body = _request(url, method="HEAD")
        assert (status, body) == (200, b"")
        assert int(h["Content-Length"]) == size
        assert h["Accept-Ranges"] == "bytes"
        etag, last_modified = h["ETag"], h["Last-Modified"]
        assert etag.startswith('"') and last_modified.endswith("GMT")

        status, h, body = _request(url, headers={"Range": "bytes=100-199"})
        assert (status, body) == (206, data[100:200])
        assert h["Content-Range"] == f"bytes 100-199/{size}"
        assert h["ETag"] == etag  # stable for unchanged content

        status, h, body = _request(url, headers={"Range": "bytes=-16"})
        assert (status, body, h["Content-Range"]) == (
            206,
            data[-16:],
            f"bytes {size - 16}-{size - 1}/{size}",
        )
        status, _, body = _request(url, headers={"Range": f"bytes={size - 5}-"})
        assert (status, body) == (206, data[-5:])
        status, _, body = _request(url, headers={"Range": f"bytes={size - 2}-{size + 50}"})
        assert (status, body) == (206, data[-2:])
        status, h, _ = _request(url, headers={"Range": f"bytes={size}-"})
        assert status == 416 and h["Content-Range"] == f"bytes */{size}"
        status, _, body = _request(url, headers={"Range": "bytes=9-3"})  # invalid -> ignored
        assert (status, len(body)) == (200, size)

        status, _, _ = _request(url, headers={"If-None-Match": etag})
        assert status == 304
        status, _, _ = _request(url, headers={"If-Match": '"other"'})
        assert status == 412
        status, _, body = _request(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert (status, len(body)) == (200, size)
        assert _request(srv.base_url + "/../../etc/passwd")[0] == 404
        assert _request(srv.base_url + "/missing.nc")[0] == 404

        st = srv.stats(GAMSSA_DAY1)
        assert st.requests == 10 and st.heads == 1 and st.gets == 9
        assert st.bytes_sent == 100 + 16 + 5 + 2 + size + size
        assert st.ranges == [(100, 200), (size - 16, size), (size - 5, size), (size - 2, size)]
        assert st.statuses == {200: 3, 206: 4, 416: 1, 304: 1, 412: 1}
        assert srv.total_bytes == st.bytes_sent


def test_http_etag_changes_with_content(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    with RangeHTTPServer(tmp_path) as srv:
        first = _request(srv.url_for("a.bin"), method="HEAD")[1]["ETag"]
        assert _request(srv.url_for("a.bin"), method="HEAD")[1]["ETag"] == first
        f.write_bytes(b"y" * 10)
        os.utime(f, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        assert _request(srv.url_for("a.bin"), method="HEAD")[1]["ETag"] != first


def test_http_bearer_token() -> None:
    with RangeHTTPServer(GAMSSA, bearer_token="s3cr3t") as srv:
        url = srv.url_for(GAMSSA_DAY1)
        status, h, _ = _request(url, headers={"Range": "bytes=0-3"})
        assert status == 401 and h["WWW-Authenticate"].startswith("Bearer")
        assert _request(url, headers={"Authorization": "Bearer wrong"})[0] == 401
        status, _, body = _request(
            url, headers={"Range": "bytes=0-3", "Authorization": "Bearer s3cr3t"}
        )
        assert (status, body) == (206, b"\x89HDF")
        assert srv.stats(GAMSSA_DAY1).statuses == {401: 2, 206: 1}


def test_http_fault_injection() -> None:
    with RangeHTTPServer(GAMSSA) as srv:
        url = srv.url_for(GAMSSA_DAY1)
        srv.fail_next(2, status=503)
        srv.fail_next(1, status=429)
        statuses = [_request(url, headers={"Range": "bytes=0-0"})[0] for _ in range(4)]
        assert statuses == [503, 503, 429, 206]
        srv.delay_next(1, 0.3)
        t0 = time.monotonic()
        _request(url, headers={"Range": "bytes=0-0"})
        assert time.monotonic() - t0 >= 0.3
        t0 = time.monotonic()
        _request(url, headers={"Range": "bytes=0-0"})
        assert time.monotonic() - t0 < 0.3


def test_http_stop_closes_keepalive_connections() -> None:
    srv = RangeHTTPServer(GAMSSA).start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", f"/{GAMSSA_DAY1}", headers={"Range": "bytes=0-3"})
    assert conn.getresponse().read() == b"\x89HDF"  # connection stays open (HTTP/1.1)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", f"/{GAMSSA_DAY1}")
        conn.getresponse().read()
    conn.close()


def test_obstore_http_range_reads_with_bearer_token() -> None:
    import obstore
    from obstore.store import HTTPStore

    data = (GAMSSA / GAMSSA_DAY1).read_bytes()
    with RangeHTTPServer(GAMSSA, bearer_token="tok") as srv:
        store = HTTPStore.from_url(
            srv.base_url,
            client_options={
                "allow_http": True,
                "default_headers": {"Authorization": "Bearer tok"},
                "timeout": "10s",
            },
        )
        assert bytes(obstore.get_range(store, GAMSSA_DAY1, start=1000, end=1100)) == data[1000:1100]
        ranges = obstore.get_ranges(store, GAMSSA_DAY1, starts=[0, 5000], ends=[8, 5010])
        assert [bytes(r) for r in ranges] == [data[:8], data[5000:5010]]
        assert obstore.head(store, GAMSSA_DAY1)["size"] == len(data)
        st = srv.stats(GAMSSA_DAY1)
        # object_store coalesces nearby ranges: the counters show what was really fetched
        assert st.ranges == [(1000, 1100), (0, 5010)]
        assert st.bytes_sent == 100 + 5010

        no_auth = HTTPStore.from_url(srv.base_url, client_options={"allow_http": True})
        with pytest.raises(Exception, match=r"(?i)unauthenticated|401"):
            obstore.get_range(no_auth, GAMSSA_DAY1, start=0, end=8)

        srv.fail_next(1, status=503)  # obstore's default retry policy retries 5xx
        assert bytes(obstore.get_range(store, GAMSSA_DAY1, start=0, end=4)) == b"\x89HDF"


def test_fsspec_http_range_reads() -> None:
    pytest.importorskip("aiohttp")
    import fsspec

    data = (GAMSSA / GAMSSA_DAY2).read_bytes()
    with RangeHTTPServer(GAMSSA, bearer_token="tok") as srv:
        fs = fsspec.filesystem(
            "http", headers={"Authorization": "Bearer tok"}, skip_instance_cache=True
        )
        url = srv.url_for(GAMSSA_DAY2)
        assert fs.info(url)["size"] == len(data)
        assert fs.cat_file(url, start=10, end=30) == data[10:30]
        with fs.open(url, "rb", block_size=4096, cache_type="none") as fh:
            fh.seek(len(data) - 8)
            assert fh.read() == data[-8:]
        assert (10, 30) in srv.stats(GAMSSA_DAY2).ranges
        assert srv.stats(GAMSSA_DAY2).bytes_sent < len(data)


# -- MotoS3Server -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3Server]:
    with MotoS3Server() as s3:
        yield s3


@pytest.fixture
def s3(moto_s3: MotoS3Server) -> Iterator[MotoS3Server]:
    yield moto_s3
    moto_s3.session_token_validator = None
    moto_s3.reset()


def test_moto_obstore_list_and_range_read(s3: MotoS3Server) -> None:
    import obstore
    from obstore.store import S3Store

    data = (GAMSSA / GAMSSA_DAY1).read_bytes()
    s3.make_bucket("granules")
    s3.upload_file("granules", f"gamssa/{GAMSSA_DAY1}", GAMSSA / GAMSSA_DAY1)
    s3.put_bytes("granules", "other/x.bin", b"0123456789")
    assert s3.endpoint_url.startswith("http://127.0.0.1:")

    store = S3Store(
        "granules",
        endpoint=s3.endpoint_url,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        region=s3.region,
        client_options={"allow_http": True},
    )
    listed = obstore.list(store, prefix="gamssa").collect()
    assert [(m["path"], m["size"]) for m in listed] == [(f"gamssa/{GAMSSA_DAY1}", len(data))]
    got = obstore.get_range(store, f"gamssa/{GAMSSA_DAY1}", start=4096, length=64)
    assert bytes(got) == data[4096 : 4096 + 64]
    assert (
        bytes(
            obstore.get_range(s3.obstore_store("granules", prefix="other"), "x.bin", start=2, end=5)
        )
        == b"234"
    )
    gets = [r for r in s3.requests if r.method == "GET" and r.path.endswith(GAMSSA_DAY1)]
    assert [r.range for r in gets] == ["bytes=4096-4159"]


def test_icechunk_repository_on_moto(s3: MotoS3Server) -> None:
    import icechunk
    import numpy as np
    import zarr

    s3.make_bucket("refs")
    storage = icechunk.s3_storage(
        bucket="refs",
        prefix="collections/gamssa",
        endpoint_url=s3.endpoint_url,
        allow_http=True,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        region=s3.region,
        force_path_style=True,
    )
    repo = icechunk.Repository.create(storage)
    session = repo.writable_session("main")
    root = zarr.group(store=session.store)
    arr = root.create_array("sst", shape=(4,), chunks=(2,), dtype="int16")
    arr[:] = np.arange(4, dtype="int16")
    snapshot = session.commit("first")

    reopened = icechunk.Repository.open(s3.icechunk_storage("refs", "collections/gamssa"))
    ro = reopened.readonly_session(branch="main")
    assert ro.snapshot_id == snapshot
    sst = zarr.open_array(store=ro.store, path="sst", mode="r")
    assert np.asarray(sst[:]).tolist() == [0, 1, 2, 3]
    assert "collections/gamssa/repo" in s3.list_keys("refs", "collections/gamssa/")


def test_moto_reset(s3: MotoS3Server) -> None:
    s3.make_bucket("scratch")
    s3.put_bytes("scratch", "k", b"v")
    s3.reset()
    assert s3.requests == []
    assert s3.client.list_buckets()["Buckets"] == []


# -- EarthdataAuthServer (+ moto session-token enforcement) -------------------------------------
def test_earthdata_s3credentials_expire_mid_use(s3: MotoS3Server) -> None:
    import obstore

    with EarthdataAuthServer(lifetime=1, bearer_token="edl-token") as auth:
        s3.session_token_validator = auth.is_session_token_valid
        s3.make_bucket("protected")  # the helper client is exempt from the validator
        s3.put_bytes("protected", "g.nc", b"granule-bytes")
        assert _request(auth.s3credentials_url)[0] == 401
        assert auth.issued_count == 0

        status, _, creds = _get_json(
            auth.s3credentials_url, headers={"Authorization": "Bearer edl-token"}
        )
        assert status == 200
        assert set(creds) == {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}
        expires = datetime.fromisoformat(creds["expiration"])
        assert expires.tzinfo is not None and expires.microsecond == 0
        assert auth.is_session_token_valid(creds["sessionToken"])

        store = s3.obstore_store("protected", session_token=creds["sessionToken"])
        assert bytes(obstore.get_range(store, "g.nc", start=0, end=7)) == b"granule"

        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
        assert not auth.is_session_token_valid(creds["sessionToken"])
        with pytest.raises(Exception, match="ExpiredToken"):
            obstore.get_range(store, "g.nc", start=0, end=7)
        anonymous = s3.obstore_store("protected")  # no session token at all: rejected too
        with pytest.raises(Exception, match="ExpiredToken"):
            obstore.get_range(anonymous, "g.nc", start=0, end=7)

        _, _, fresh = _get_json(
            auth.s3credentials_url, headers={"Authorization": "Bearer edl-token"}
        )
        assert fresh["sessionToken"] != creds["sessionToken"]
        refreshed = s3.obstore_store("protected", session_token=fresh["sessionToken"])
        assert bytes(obstore.get_range(refreshed, "g.nc", start=8, end=13)) == b"bytes"
        assert auth.issued_count == 2 and auth.request_count("/s3credentials") == 3

        auth.expire_all()
        assert not auth.is_session_token_valid(fresh["sessionToken"])
        assert [r.status for r in s3.requests if r.method == "GET"] == [
            206,
            400,
            400,
            206,
        ]


def test_earthdata_token_endpoint() -> None:
    import base64

    with EarthdataAuthServer(username="u", password="p") as auth:
        req = urllib.request.Request(auth.token_url, method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 401
        err.value.close()
        basic = base64.b64encode(b"u:p").decode()
        req = urllib.request.Request(
            auth.token_url, method="POST", data=b"", headers={"Authorization": f"Basic {basic}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            token = json.load(resp)
        assert token["token_type"] == "Bearer"
        profile = auth.base_url + "/profile"
        assert _request(profile)[0] == 401
        assert _request(profile, headers={"Authorization": "Bearer nope"})[0] == 401
        status, _, body = _get_json(
            profile, headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        assert (status, body) == (200, {"uid": "u"})
        # /s3credentials is open when no bearer_token is configured
        assert _get_json(auth.s3credentials_url)[0] == 200 and auth.issued_count == 1


# -- CMR replay ---------------------------------------------------------------------------------
def test_cmr_search_after_chain_matches_recording() -> None:
    """page_size=2 chain over the 20 recorded MOD02QKM granules: every item exactly once, and the
    CMR-Search-After tokens are byte-identical to the ones CMR sent in the recording."""
    recorded_tokens = [
        json.loads(p.with_name(p.name.removesuffix(".json") + ".meta.json").read_text())[
            "cmr_headers"
        ]["CMR-Search-After"][0]
        for p in recorded_files(MOD02QKM)
    ]
    recorded_ids = [
        i["meta"]["concept-id"]
        for p in recorded_files(MOD02QKM)
        for i in json.loads(p.read_text())["items"]
    ]
    catalog = GranuleCatalog.from_recorded(MOD02QKM)
    assert len(catalog) == 20
    with CmrReplayServer(catalog) as cmr:
        url = cmr.search_url + "granules.umm_json?short_name=MOD02QKM&page_size=2"
        seen: list[str] = []
        tokens: list[str] = []
        headers: dict[str, str] = {}
        for _ in range(50):
            status, h, body = _get_json(url, headers=headers)
            assert status == 200 and h["CMR-Hits"] == "20"
            if not body["items"]:
                assert "CMR-Search-After" not in h
                break
            seen += [i["meta"]["concept-id"] for i in body["items"]]
            tokens.append(h["CMR-Search-After"])
            headers = {"CMR-Search-After": h["CMR-Search-After"]}
        assert seen == recorded_ids  # same order as recorded, each exactly once
        assert len(set(seen)) == 20
        assert tokens == recorded_tokens
        assert cmr.requests[1].search_after == tokens[0]

        status, _, body = _get_json(url + "&page_num=3")
        assert [i["meta"]["concept-id"] for i in body["items"]] == recorded_ids[4:6]
        status, _, body = _get_json(url, headers={"CMR-Search-After": "not-json"})
        assert status == 400 and body["errors"]


def test_cmr_search_after_is_stable_when_items_are_added() -> None:
    catalog = GranuleCatalog.from_recorded(MOD02QKM)
    with CmrReplayServer(catalog) as cmr:
        url = cmr.search_url + "granules.umm_json?short_name=MOD02QKM&page_size=5"
        _, h, first = _get_json(url)
        token = h["CMR-Search-After"]
        template = first["items"][0]
        for native_id, begin in [
            ("early", "2000-02-24T00:00:00Z"),
            ("late", "2000-02-25T00:00:00Z"),
        ]:
            item = json.loads(json.dumps(template))
            del item["meta"]["concept-id"]
            item["meta"]["native-id"] = item["umm"]["GranuleUR"] = native_id
            item["umm"]["TemporalExtent"]["RangeDateTime"]["BeginningDateTime"] = begin
            item["umm"]["TemporalExtent"]["RangeDateTime"]["EndingDateTime"] = begin
            catalog.add(item)
        rest: list[str] = []
        headers = {"CMR-Search-After": token}
        while True:
            _, h, body = _get_json(url, headers=headers)
            if not body["items"]:
                break
            rest += [i["meta"]["native-id"] for i in body["items"]]
            headers = {"CMR-Search-After": h["CMR-Search-After"]}
        assert h["CMR-Hits"] == "22"
        assert "late" in rest and "early" not in rest and len(rest) == 16


def test_cmr_filters_and_errors() -> None:
    catalog = GranuleCatalog.from_recorded(TELLUS, "titiler-cmr/GAMSSA*page_size2000*")
    items = catalog.items()
    assert len(items) == 163 and len(catalog.items("collection")) == 1
    with CmrReplayServer(catalog) as cmr:
        g = cmr.search_url + "granules.umm_json?page_size=2000"

        def native_ids(query: str) -> list[str]:
            status, _, body = _get_json(g + query)
            assert status == 200, body
            return [i["meta"]["native-id"] for i in body["items"]]

        assert len(native_ids(f"&short_name={TELLUS_SHORT_NAME.lower()}")) == 163
        assert len(native_ids("&short_name=TELLUS_GRAC_*&options[short_name][pattern]=true")) == 163
        assert native_ids("&short_name=OTHER") == []
        assert len(native_ids("&version=RL06v04&provider=POCLOUD")) == 163
        assert native_ids("&provider=LAADS") == []
        assert len(native_ids("&concept_id[]=C2077042612-POCLOUD")) == 163
        assert native_ids("&collection_concept_id=C2036881735-POCLOUD") == []
        assert native_ids("&concept_id[]=G2658326635-POCLOUD") == [items[0]["meta"]["native-id"]]

        # temporal overlap against RangeDateTime (monthly granules)
        expected = [
            i["meta"]["native-id"]
            for i in items
            if i["umm"]["TemporalExtent"]["RangeDateTime"]["BeginningDateTime"]
            <= "2003-12-31T23:59:59Z"
            and i["umm"]["TemporalExtent"]["RangeDateTime"]["EndingDateTime"]
            >= "2003-01-01T00:00:00Z"
        ]
        got = native_ids("&temporal[]=2003-01-01T00:00:00Z,2003-12-31T23:59:59Z")
        assert got == expected and 10 <= len(got) <= 14
        assert native_ids("&temporal[]=2017-05-23T00:00:00Z,") == [items[-1]["meta"]["native-id"]]
        assert len(native_ids("&temporal[]=2017-05-20T00:00:00Z,")) == 2
        assert len(native_ids("&temporal[]=,2002-04-05")) == 1
        one = items[0]["umm"]["TemporalExtent"]["RangeDateTime"]
        edge = f"&temporal[]={one['EndingDateTime']},2002-05-01T00:00:00Z"
        assert items[0]["meta"]["native-id"] in native_ids(edge)
        assert items[0]["meta"]["native-id"] not in native_ids(
            edge + "&options[temporal][exclude_boundary]=true"
        )

        assert native_ids("&sort_key[]=+start_date&page_size=2") == [
            i["meta"]["native-id"] for i in items[:2]
        ]
        ordered = native_ids("&sort_key[]=-start_date&page_size=3")
        assert ordered == [i["meta"]["native-id"] for i in items[::-1][:3]]
        assert len(native_ids("&cloud_hosted=true")) == 163  # accepted, ignored

        status, _, body = _get_json(g + "&bounding_box=-10,-10,10,10")
        assert status == 400 and "bounding_box" in body["errors"][0]
        assert _get_json(g + "&page_size=2001")[0] == 400
        assert _get_json(g + "&temporal[]=2004-01-01,2003-01-01")[0] == 400
        assert _get_json(cmr.search_url + "granules.json")[0] == 400

        status, h, body = _get_json(
            cmr.search_url + "collections.umm_json?concept_id[]=C2036881735-POCLOUD"
        )
        assert status == 200 and h["CMR-Hits"] == "1"
        assert body["items"][0]["umm"]["ShortName"] == "GAMSSA_28km-ABOM-L4-GLOB-v01"


def test_cmr_revision_date_after_revise_and_add() -> None:
    catalog = GranuleCatalog.from_recorded(TELLUS)
    with CmrReplayServer(catalog) as cmr:
        url = cmr.search_url + "granules.umm_json?page_size=2000&short_name=" + TELLUS_SHORT_NAME
        _, h, body = _get_json(url)
        assert h["CMR-Hits"] == "163" and len(body["items"]) == 163
        last_sync = max(i["meta"]["revision-date"] for i in body["items"])

        a, b = body["items"][5]["meta"], body["items"][77]["meta"]
        revised = catalog.revise(a["native-id"], "2024-01-02T03:04:05Z")
        assert revised["meta"]["revision-id"] == a["revision-id"] + 1
        assert revised["meta"]["revision-date"] == "2024-01-02T03:04:05.000Z"
        catalog.revise(b["native-id"])  # now
        catalog.add(
            granule_item(
                native_id="GRD-3_2017153-2017181_GRAC_JPLEM_BA01_0600_LND_v04",
                short_name=TELLUS_SHORT_NAME,
                version="RL06v04",
                begin="2017-06-02T00:00:00Z",
                end="2017-06-30T23:59:59Z",
                revision_date="2024-02-01T00:00:00Z",
            )
        )
        catalog.delete(body["items"][0]["meta"]["native-id"])

        _, h, changed = _get_json(
            url + f"&revision_date[]={last_sync},&options[revision_date][exclude_boundary]=true"
        )
        got = {i["meta"]["native-id"]: i["meta"]["revision-id"] for i in changed["items"]}
        assert got == {
            a["native-id"]: a["revision-id"] + 1,
            b["native-id"]: b["revision-id"] + 1,
            "GRD-3_2017153-2017181_GRAC_JPLEM_BA01_0600_LND_v04": 1,
        }
        assert h["CMR-Hits"] == "3"
        _, h, window = _get_json(url + "&revision_date[]=2024-01-01T00:00:00Z,2024-01-31T00:00:00Z")
        assert [i["meta"]["native-id"] for i in window["items"]] == [a["native-id"]]
        _, h, _ = _get_json(url + "&updated_since=2024-01-15T00:00:00Z")
        assert h["CMR-Hits"] == "2"
        _, h, _ = _get_json(url)
        assert h["CMR-Hits"] == "163"  # +1 added, -1 deleted


@ignore_earthaccess_size_warning
def test_earthaccess_datagranules_against_replay_server() -> None:
    import earthaccess

    catalog = GranuleCatalog.from_recorded(MOD02QKM)
    expected = catalog.native_ids()
    with CmrReplayServer(catalog) as cmr:
        query = earthaccess.DataGranules().mode(cmr.search_url).short_name("MOD02QKM")
        assert query._build_url() == f"{cmr.search_url}granules.umm_json?short_name=MOD02QKM"
        assert query.hits() == 20
        granules = query.get_all()
        assert [g["meta"]["native-id"] for g in granules] == expected
        assert all(g["meta"]["revision-id"] == 5 for g in granules)
        first = granules[0]
        assert first.data_links(access="external") == [
            "https://data.laadsdaac.earthdatacloud.nasa.gov/prod-lads/MOD02QKM/"
            "MOD02QKM.A2000055.0005.061.2017171194850.hdf"
        ]
        assert first.data_links(access="direct") == [
            "s3://prod-lads/MOD02QKM/MOD02QKM.A2000055.0005.061.2017171194850.hdf"
        ]
        assert (
            len(earthaccess.DataGranules().mode(cmr.search_url).short_name("MOD02QKM").get(3)) == 3
        )

        # revision_date (python-cmr >= 0.12) after a revision
        catalog.revise(expected[7], "2030-01-01T00:00:00Z")
        changed = (
            earthaccess.DataGranules()
            .mode(cmr.search_url)
            .short_name("MOD02QKM")
            .revision_date("2029-12-31T00:00:00Z", None)
            .get_all()
        )
        assert [(g["meta"]["native-id"], g["meta"]["revision-id"]) for g in changed] == [
            (expected[7], 6)
        ]
        assert cmr.requests[-1].params["revision_date"] == ["2029-12-31T00:00:00Z,"]
        temporal = (
            earthaccess.DataGranules()
            .mode(cmr.search_url)
            .short_name("MOD02QKM")
            .temporal("2000-02-24T04:00:00Z", "2000-02-24T05:00:00Z")
            .get_all()
        )
        assert len(temporal) == 4


@ignore_earthaccess_size_warning
def test_earthaccess_tellus_163_despite_recorded_hits_quirk() -> None:
    """The recording says CMR-Hits 652 for page_size=0 but delivers 163 items."""
    import earthaccess

    with CmrReplayServer(GranuleCatalog.from_recorded(TELLUS), hits_override=652) as cmr:
        query = earthaccess.DataGranules().mode(cmr.search_url).short_name(TELLUS_SHORT_NAME)
        assert query.hits() == 652
        granules = query.get_all()
        assert len(granules) == 163
        assert len({g["meta"]["concept-id"] for g in granules}) == 163
        # hits() above, then get_all(): another hits() and pages of min(hits, 2000); how many
        # pages it asks for before an empty one differs between earthaccess 0.18 and 0.19.
        sizes = [r.params.get("page_size") for r in cmr.requests]
        assert sizes[:3] == [["0"], ["0"], ["652"]] and all(s == ["652"] for s in sizes[2:])


@ignore_earthaccess_size_warning
def test_end_to_end_rewritten_links_fetch_from_loopback(s3: MotoS3Server) -> None:
    """A granule record whose archive.podaac / protected-bucket links are rewritten to the range
    server and the moto bucket: earthaccess finds it, and both links really serve the file."""
    import earthaccess
    import obstore
    from obstore.store import HTTPStore

    data = (GAMSSA / GAMSSA_DAY1).read_bytes()
    s3.make_bucket("podaac-test")
    s3.upload_file(
        "podaac-test", f"GAMSSA_28km-ABOM-L4-GLOB-v01/{GAMSSA_DAY1}", GAMSSA / GAMSSA_DAY1
    )
    archive = "https://archive.podaac.earthdata.nasa.gov/podaac-ops-cumulus-protected/"
    item = granule_item(
        native_id=GAMSSA_DAY1.removesuffix(".nc"),
        short_name="GAMSSA_28km-ABOM-L4-GLOB-v01",
        version="1.0",
        begin="2024-10-11T00:00:00Z",
        end="2024-10-11T23:59:59Z",
        collection_concept_id="C2036881735-POCLOUD",
        https_url=f"{archive}GAMSSA_28km-ABOM-L4-GLOB-v01/{GAMSSA_DAY1}",
        s3_url=f"s3://podaac-ops-cumulus-protected/GAMSSA_28km-ABOM-L4-GLOB-v01/{GAMSSA_DAY1}",
        s3_credentials_url="https://archive.podaac.earthdata.nasa.gov/s3credentials",
        size_in_bytes=len(data),
    )
    with RangeHTTPServer(GRANULES) as http_srv, EarthdataAuthServer() as auth:
        mapping = {
            f"{archive}GAMSSA_28km-ABOM-L4-GLOB-v01/": f"{http_srv.base_url}/gamssa/",
            "s3://podaac-ops-cumulus-protected/": "s3://podaac-test/",
            "https://archive.podaac.earthdata.nasa.gov/s3credentials": auth.s3credentials_url,
        }
        catalog = GranuleCatalog([item], link_rewrites=mapping, drop_unmapped_links=True)
        with CmrReplayServer(catalog) as cmr:
            (granule,) = (
                earthaccess.DataGranules()
                .mode(cmr.search_url)
                .concept_id("C2036881735-POCLOUD")
                .get_all()
            )
        (https_link,) = granule.data_links(access="external")
        (s3_link,) = granule.data_links(access="direct")
        assert https_link == http_srv.url_for(f"gamssa/{GAMSSA_DAY1}")
        assert granule.get_s3_credentials_endpoint() == auth.s3credentials_url

        base, _, name = https_link.rpartition("/")
        http_store = HTTPStore.from_url(base, client_options={"allow_http": True})
        assert bytes(obstore.get_range(http_store, name, start=0, end=8)) == data[:8]
        assert http_srv.stats(f"gamssa/{GAMSSA_DAY1}").bytes_sent == 8

        bucket, _, key = s3_link.removeprefix("s3://").partition("/")
        assert bucket == "podaac-test"
        s3_store = s3.obstore_store(bucket)
        assert bytes(obstore.get_range(s3_store, key, start=100, end=110)) == data[100:110]

    stored = catalog.get(item["meta"]["native-id"])  # the catalog keeps the original links
    assert stored["umm"]["RelatedUrls"][0]["URL"].startswith(archive)


def test_rewrite_links_prefixes_and_drop() -> None:
    (item, *_) = GranuleCatalog.from_recorded(TELLUS).items()
    out = rewrite_links(
        item,
        {
            "https://archive.podaac.earthdata.nasa.gov/": "http://127.0.0.1:1/",
            "https://archive.podaac.earthdata.nasa.gov/podaac-ops-cumulus-public/": "http://127.0.0.1:2/pub/",
            "s3://podaac-ops-cumulus-protected/": "s3://bkt/",
        },
        drop_unmapped=True,
    )
    urls = [u["URL"] for u in out["umm"]["RelatedUrls"]]
    assert urls[0].startswith("http://127.0.0.1:1/podaac-ops-cumulus-protected/")
    assert urls[1].startswith("s3://bkt/TELLUS_GRAC_L3_JPL_RL06_LND_v04/")
    assert urls[2].startswith("http://127.0.0.1:2/pub/TELLUS")  # longest prefix wins
    assert not any("opendap" in u or u.startswith("s3://podaac-ops-cumulus-public") for u in urls)
    assert item["umm"]["RelatedUrls"][0]["URL"].startswith("https://archive")  # input untouched


def test_no_external_network_guard() -> None:
    with no_external_network() as blocked:
        with pytest.raises(OSError, match="blocked"):
            urllib.request.urlopen("http://cmr.earthdata.nasa.gov/search/", timeout=1)
        with pytest.raises(OSError, match="blocked"):
            urllib.request.urlopen("http://198.51.100.7/", timeout=1)
    assert len(blocked) == 2
