"""End to end on loopback servers: an S3 prefix, an HTTPS list and a CMR collection.

Real servers on 127.0.0.1, nothing else reachable: moto S3 (granules in one bucket, the
Icechunk repository and the export in another), an HTTP/1.1 range server checking a bearer
token, and CMR replaying the real recorded responses (TELLUS 163-granule page, the MOD02QKM
CMR-Search-After chain) with links rewritten to the loopback S3/HTTP servers. Only Earthdata
Login and the DAAC ``/s3credentials`` endpoint are SIMULATED (``EarthdataAuthServer``):
NASA's login cannot run offline. Each store is synced twice in a row (the CLI, as a user
runs it), read back through the repository and the export, and compared with direct reads
of the same files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import refstore
from refstore.config import load_config
from refstore.sources import source_for
from refstore.sources.earthdata import EarthdataSource
from tests.conftest import run_cli
from tests.helpers import assert_same_values, direct_read
from tests.remote_env import (
    CCMP,
    EDL_PASSWORD,
    EDL_TOKEN,
    HTTP_TOKEN,
    aws_env,
    bucket_name,
    ccmp_catalog,
    ccmp_item,
    download_bucket,
    files_under,
    s3_prefix_to_s3_store,
    s3_section,
    secret_hits,
    write_config,
)
from tests.servers import (
    CmrReplayServer,
    EarthdataAuthServer,
    GranuleCatalog,
    MotoS3Server,
    RangeHTTPServer,
    granule_item,
)
from tests.servers.cmr import recorded_files

MOD02QKM = "python_cmr/MOD02QKM_searchafter.granules.umm_json.page_size2.i*.json"
TELLUS = "earthaccess/TELLUS_GRAC_L3_JPL_RL06_LND_v04.granules.umm_json.page_size2000.i01.json"
TELLUS_SHORT_NAME = "TELLUS_GRAC_L3_JPL_RL06_LND_v04"


# Every test here runs with Python-level traffic off loopback refused and no cached
# credential leaking between tests (fixtures in conftest.py).
pytestmark = pytest.mark.usefixtures("loopback_only")


@pytest.fixture
def ccmp(tmp_path: Path, ccmp_archive: Callable[..., list[Path]]) -> list[Path]:
    """Six consecutive CCMP-like daily granules (4 six-hourly steps each)."""
    return ccmp_archive(6)


def _sync(tmp_path: Path, *extra: str) -> Any:
    """``refstore sync --json`` in a subprocess, as a user runs it."""
    proc = run_cli("sync", "--json", "--no-progress", *extra, cwd=tmp_path)
    return json.loads(proc.stdout)


def _plain_fsspec_export(export: str, s3: MotoS3Server) -> Any:
    """The S3 export opened with nothing but fsspec (s3fs) and xarray."""
    import fsspec
    import xarray as xr

    opts = {
        "endpoint_url": s3.endpoint_url,
        "key": s3.access_key_id,
        "secret": s3.secret_access_key,
        "client_kwargs": {"region_name": s3.region},
    }
    version = fsspec.filesystem("s3", **opts).cat_file(f"{export}/LATEST").decode().strip()
    fs = fsspec.filesystem(
        "reference",
        fo=f"{export}/{version}/",
        target_protocol="s3",
        target_options=opts,
        remote_protocol="s3",
        remote_options={**opts, "asynchronous": True},
        asynchronous=True,  # zarr 3 reads through an asynchronous filesystem
    )
    return xr.open_dataset(
        fs.get_mapper(""), engine="zarr", consolidated=False, zarr_format=2, chunks={}
    )


# -- S3 prefix -> S3 repository + S3 export -----------------------------------------------------
def test_s3_prefix_to_s3_repo_and_export(
    tmp_path: Path, moto: MotoS3Server, ccmp: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, granules, refs, export = s3_prefix_to_s3_store(tmp_path, moto, monkeypatch, ccmp[:4])
    first = _sync(tmp_path)
    assert len(first["added"]) == 4 and first["export"] == export
    for f in ccmp[4:]:
        moto.upload_file(granules, f"ccmp/{f.name}", f)
    second = _sync(tmp_path)
    assert second["added"] == [f.name for f in ccmp[4:]] and len(second["snapshots"]) == 1

    config = load_config(tmp_path / "refstore.toml", environ={})
    assert refstore.sync(config).up_to_date
    expected = direct_read(ccmp)
    assert_same_values(refstore.open_dataset(config).load(), expected)
    assert_same_values(refstore.open_dataset(config, source="export").load(), expected)
    assert_same_values(_plain_fsspec_export(export, moto).load(), expected)
    # One published version (+ the one it replaced), a pointer, nothing written locally.
    keys = moto.list_keys(refs, "exports/ccmp.parquet/")
    assert "exports/ccmp.parquet/LATEST" in keys
    assert 1 <= len({k.split("/")[2] for k in keys if "/v" in k}) <= 2
    assert not (tmp_path / "state" / "repo").exists()


# -- HTTPS list with a bearer token ---------------------------------------------------------------
def test_https_list_with_bearer_token_faults_and_quarantine(
    tmp_path: Path, ccmp: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRANULE_TOKEN", HTTP_TOKEN)
    with RangeHTTPServer(ccmp[0].parent, bearer_token=HTTP_TOKEN) as srv:
        urls = tmp_path / "granules.txt"
        urls.write_text("".join(srv.url_for(f.name) + "\n" for f in ccmp[:3]))
        write_config(
            tmp_path,
            {
                "source": {"urls_file": "granules.txt", "token_env": "GRANULE_TOKEN"},
                "sync": {"executor": "serial"},
            },
        )
        first = _sync(tmp_path)
        assert len(first["added"]) == 3
        with urls.open("a") as f:
            f.write("".join(srv.url_for(p.name) + "\n" for p in ccmp[3:]))
            f.write(srv.base_url + "/CCMP_Wind_Analysis_20991231_V03.1_L4.nc\n")  # 404
        srv.fail_next(1, status=503)  # transient faults, retried by the client
        srv.fail_next(1, status=429)
        proc = run_cli("-v", "sync", "--json", "--no-progress", cwd=tmp_path)
        second = json.loads(proc.stdout)
        assert second["added"] == [f.name for f in ccmp[3:]]
        (failure,) = second["quarantined"]
        assert failure["key"] == "CCMP_Wind_Analysis_20991231_V03.1_L4.nc"
        assert "404" in failure["reason"] or "not found" in failure["reason"].lower()

        config = load_config(tmp_path / "refstore.toml", environ={})
        expected = direct_read(ccmp)
        srv.fail_next(1, status=503)  # Icechunk's own retries cover virtual chunk reads
        assert_same_values(refstore.open_dataset(config).load(), expected)
        assert_same_values(refstore.open_dataset(config, source="export").load(), expected)
        statuses = {s for st in srv.all_stats().values() for s in st.statuses}
        assert 401 not in statuses and {503, 429} <= statuses
        # The token reaches Icechunk only in memory: the saved config (compressed on disk,
        # so decoded here) names the HTTP container without headers.
        texts = [proc.stdout, proc.stderr, *_decoded_repository(config)]
        assert "Http(" in texts[2]
    state = tmp_path / "state"
    assert secret_hits([HTTP_TOKEN], files_under(state, tmp_path / "refstore.toml"), texts) == []


# -- CMR collection, direct S3 access, keys expiring mid-sync ---------------------------------
def test_cmr_direct_access_keys_expire_mid_sync(
    tmp_path: Path, moto: MotoS3Server, ccmp: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 keys from /s3credentials live 1-2 s here; a slow sync (0.7 s a granule) outlives
    several sets. The 'in-region' moto server rejects any request signed with an expired
    or unknown session token (400 ExpiredToken): none may happen."""
    aws_env(monkeypatch, moto)  # the repository's bucket (not NASA's) uses the AWS chain
    monkeypatch.setenv("EARTHDATA_TOKEN", EDL_TOKEN)
    podaac, refs = bucket_name("podaac"), bucket_name("refs")
    moto.make_bucket(podaac)
    moto.make_bucket(refs)
    for f in ccmp:
        moto.upload_file(podaac, f"{CCMP}/{f.name}", f)
    with (
        EarthdataAuthServer(lifetime=2, bearer_token=EDL_TOKEN) as auth,
        MotoS3Server(session_token_validator=auth.is_session_token_valid) as nasa,
    ):
        catalog = ccmp_catalog(
            ccmp[:4], bucket=podaac, http_base=None, s3credentials_url=auth.s3credentials_url
        )
        with CmrReplayServer(catalog) as cmr:
            write_config(
                tmp_path,
                {
                    "source": s3_section(
                        nasa, short_name=CCMP, version="3.1", access="direct",
                        cmr_url=cmr.search_url,
                    ),
                    "store": s3_section(
                        moto, repo=f"s3://{refs}/ccmp", export=f"s3://{refs}/ccmp.parquet"
                    ),
                    "sync": {"executor": "serial"},
                },
            )  # fmt: skip
            config = load_config(tmp_path / "refstore.toml", environ={})

            def slow(total: int, label: str) -> Callable[[Any], None]:
                return lambda _result: time.sleep(0.7)

            t0 = time.monotonic()
            first = refstore.sync(config, progress=slow)
            elapsed = time.monotonic() - t0
            assert len(first.added) == 4 and first.quarantined == ()
            refreshed_in_run = auth.issued_count - 1
            assert elapsed > 2.8 and refreshed_in_run >= 1

            for i, f in enumerate(ccmp[4:], 5):
                catalog.add(ccmp_item(f, i, None))  # revised now, long after the others
            cmr.clear_requests()
            second = refstore.sync(config)
            assert second.added == tuple(f.stem for f in ccmp[4:])
            # CMR was asked for what changed since the last run: the 2 new granules and the
            # newest old one (within the overlap for CMR's indexing delay), not all 6.
            incremental = [r for r in cmr.requests if "revision_date" in r.params]
            assert len(incremental) == 1 and second.discovered == 3

            time.sleep(2.1)  # every key handed out so far has expired
            issued = auth.issued_count
            assert_same_values(refstore.open_dataset(config).load(), direct_read(ccmp))
            assert auth.issued_count > issued  # Icechunk's refreshable credentials
            # No request refused (expired keys); a 404 is the look-up of a DMR++ sidecar
            # this collection does not publish ([source] dmrpp = "auto").
            refused = [r for r in nasa.requests if r.status >= 400]
            assert [r for r in refused if not (r.status == 404 and r.path.endswith(".dmrpp"))] == []
            print(f"\ns3credentials issued {auth.issued_count} keys; {refreshed_in_run} "
                  f"refresh(es) during the first sync ({elapsed:.1f} s)")  # fmt: skip


# -- CMR collection, HTTPS (external) access, EDL username/password, processes ---------------
def test_cmr_external_access_cli_twice_and_missing_login_hint(
    tmp_path: Path, ccmp: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARTHDATA_USERNAME", "alice")
    monkeypatch.setenv("EARTHDATA_PASSWORD", EDL_PASSWORD)
    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    with (
        EarthdataAuthServer(
            bearer_token=EDL_TOKEN, username="alice", password=EDL_PASSWORD
        ) as auth,
        RangeHTTPServer(ccmp[0].parent, bearer_token=EDL_TOKEN) as http,
    ):
        catalog = ccmp_catalog(ccmp[:4], bucket="unused", http_base=http.base_url)
        with CmrReplayServer(catalog) as cmr:
            write_config(
                tmp_path,
                {
                    "source": {
                        "short_name": CCMP,
                        "access": "external",
                        "cmr_url": cmr.search_url,
                        "edl_url": auth.base_url,
                    },
                    "sync": {"executor": "processes", "workers": 2},
                },
            )
            assert len(_sync(tmp_path)["added"]) == 4
            for i, f in enumerate(ccmp[4:], 5):
                catalog.add(ccmp_item(f, i, None))
            second = _sync(tmp_path)
            assert second["added"] == [f.stem for f in ccmp[4:]]
            assert second["discovered"] == 3  # by revision date, not the whole collection
            config = load_config(tmp_path / "refstore.toml", environ={})
            expected = direct_read(ccmp)
            assert_same_values(refstore.open_dataset(config).load(), expected)
            assert_same_values(refstore.open_dataset(config, source="export").load(), expected)
            assert 401 not in {s for st in http.all_stats().values() for s in st.statuses}

            # A user without a login opening the store later: one line and a hint.
            no_login = {"EARTHDATA_USERNAME": "", "EARTHDATA_PASSWORD": ""}
            proc = run_cli("open", cwd=tmp_path, env=no_login, check=False)
            assert proc.returncode == 2, proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert lines[0] == "refstore: error: No Earthdata login found (login = 'all')."
            assert lines[1].startswith("  hint: Set EARTHDATA_TOKEN") and len(lines) == 2


# -- no credential is ever written ---------------------------------------------------------------
def test_no_credential_in_ledger_repo_export_or_logs(
    tmp_path: Path,
    moto: MotoS3Server,
    ccmp: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Earthdata direct access (EDL password -> token -> temporary S3 keys) into an S3
    repository and export: grep everything written for every credential used."""
    aws_env(monkeypatch, moto)
    monkeypatch.setenv("EARTHDATA_USERNAME", "alice")
    monkeypatch.setenv("EARTHDATA_PASSWORD", EDL_PASSWORD)
    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    podaac, refs = bucket_name("podaac"), bucket_name("refs")
    moto.make_bucket(podaac)
    moto.make_bucket(refs)
    for f in ccmp[:5]:
        moto.upload_file(podaac, f"{CCMP}/{f.name}", f)
    caplog.set_level(logging.DEBUG)
    with (
        EarthdataAuthServer(
            bearer_token=EDL_TOKEN, username="alice", password=EDL_PASSWORD
        ) as auth,
        MotoS3Server(session_token_validator=auth.is_session_token_valid) as nasa,
    ):
        catalog = ccmp_catalog(
            ccmp[:3], bucket=podaac, http_base=None, s3credentials_url=auth.s3credentials_url
        )
        with CmrReplayServer(catalog) as cmr:
            write_config(
                tmp_path,
                {
                    "source": s3_section(
                        nasa, short_name=CCMP, access="direct", cmr_url=cmr.search_url,
                        edl_url=auth.base_url,
                    ),
                    "store": s3_section(
                        moto, repo=f"s3://{refs}/ccmp", export=f"s3://{refs}/ccmp.parquet"
                    ),
                    "sync": {"executor": "serial"},
                },
            )  # fmt: skip
            logs = []
            proc = run_cli("-v", "sync", "--no-progress", cwd=tmp_path)
            logs += [proc.stdout, proc.stderr]
            catalog.add(ccmp_item(ccmp[3], 4, None))
            config = load_config(tmp_path / "refstore.toml", environ={})
            result = refstore.sync(config)  # in-process: its logs are captured
            assert result.added == (ccmp[3].stem,)
            proc = run_cli("-v", "status", cwd=tmp_path)
            logs += [proc.stdout, proc.stderr]
            refstore.open_dataset(config).load()
            # Client-side records only: the loopback servers run in this process too, and
            # moto's own request logs naturally show what the clients sent it.
            logs += [
                f"{r.name}: {r.getMessage()}"
                for r in caplog.records
                if not r.name.startswith(("moto", "werkzeug"))
            ]
            secrets = [
                EDL_PASSWORD,
                EDL_TOKEN,
                moto.secret_access_key,
                auth.secret_access_key,
                *(c.session_token for c in auth.issued),
            ]
            assert auth.issued_count >= 2  # the CLI and this process each fetched keys
            # Snapshots, manifests and Parquet are compressed: grep their decoded content too.
            decoded = _decoded_repository(config)
    written = download_bucket(moto, refs, tmp_path / "downloaded")
    assert any(p.name == "LATEST" for p in written) and any("/repo" in str(p) for p in written)
    decoded += [_parquet_text(p) for p in written if p.suffix == ".parq"]
    state = files_under(tmp_path / "state", tmp_path / "refstore.toml")
    assert any(p.name.startswith("ledger.db") for p in state)
    assert secret_hits(secrets, [*written, *state], [*logs, *decoded]) == []


def _decoded_repository(config: Any) -> list[str]:
    """The repository's saved config, commit metadata and every reference, as text."""
    import icechunk

    from refstore.export import build_refs
    from refstore.storage import export_registry, repo_storage, store_options

    store = refstore.open_store(config)
    saved = icechunk.Repository.fetch_config(repo_storage(config.repo, store_options(config)))
    history = [dataclasses.asdict(c) for c, _ in store.log()]
    registry = export_registry(store.source.registry(), store.url, store.options)
    refs = build_refs(store.session(None), registry, store.native_chunks_prefix)
    return [repr(saved), json.dumps(history), json.dumps(refs)]


def _parquet_text(path: Path) -> str:
    import fastparquet

    handles: list[Any] = []

    def opener(name: str, mode: str = "rb") -> Any:
        handles.append(open(name, mode))  # closed below: fastparquet leaves files open
        return handles[-1]

    try:
        return str(fastparquet.ParquetFile(str(path), open_with=opener).to_pandas().to_csv())
    finally:
        for h in handles:
            h.close()


# -- CMR discovery against the real recorded responses --------------------------------------------
def _earthdata(tmp_path: Path, cmr: CmrReplayServer, **source: Any) -> EarthdataSource:
    section = {"short_name": TELLUS_SHORT_NAME, "cmr_url": cmr.search_url, **source}
    config = load_config(write_config(tmp_path, {"source": section}), environ={})
    found = source_for(config)
    assert isinstance(found, EarthdataSource)
    return found


def test_tellus_163_granules_in_one_page_then_by_revision_date(tmp_path: Path) -> None:
    """The recorded page says CMR-Hits 652 but holds 163 granules: discovery trusts the
    items, not the hits. Later runs ask only for revisions since a date."""
    catalog = GranuleCatalog.from_recorded(TELLUS)
    items = catalog.items()
    with CmrReplayServer(catalog, hits_override=652) as cmr:
        source = _earthdata(tmp_path, cmr, version="RL06v04", provider="POCLOUD")
        granules = list(source.discover())
        assert len(granules) == 163 and len({g.key for g in granules}) == 163
        assert [g.key for g in granules] == [i["meta"]["native-id"] for i in items]
        assert [g.revision for g in granules] == [str(i["meta"]["revision-id"]) for i in items]
        assert all(g.url.startswith("https://archive.podaac.earthdata.nasa.gov/") for g in granules)
        (request,) = cmr.requests
        assert request.params["page_size"] == ["2000"] and request.search_after is None

        catalog.revise(items[5]["meta"]["native-id"], "2024-01-02T03:04:05Z")  # before
        catalog.revise(items[77]["meta"]["native-id"])  # now
        catalog.add(
            granule_item(
                native_id="GRD-3_2017153-2017181_GRAC_JPLEM_BA01_0600_LND_v04",
                short_name=TELLUS_SHORT_NAME,
                version="RL06v04",
                begin="2017-06-02T00:00:00Z",
                end="2017-06-30T23:59:59Z",
                https_url="https://archive.podaac.earthdata.nasa.gov/x/GRD-3_2017153.nc",
                revision_date="2024-02-01T00:00:00Z",
            )
        )
        changed = list(source.discover(since="2024-01-15T00:00:00.000Z"))
        assert sorted(g.key for g in changed) == sorted(
            [items[77]["meta"]["native-id"], "GRD-3_2017153-2017181_GRAC_JPLEM_BA01_0600_LND_v04"]
        )
        assert cmr.requests[-1].params["revision_date"] == ["2024-01-14T23:00:00Z,"]


def test_mod02qkm_search_after_chain(tmp_path: Path) -> None:
    """Paging follows CMR-Search-After: with 2 granules a page, the tokens sent back are the
    ones CMR sent in the recording, page after page, and every granule comes once."""
    tokens = [
        json.loads(p.with_name(p.name.removesuffix(".json") + ".meta.json").read_text())[
            "cmr_headers"
        ]["CMR-Search-After"][0]
        for p in recorded_files(MOD02QKM)
    ]
    catalog = GranuleCatalog.from_recorded(MOD02QKM)
    with CmrReplayServer(catalog) as cmr:
        source = dataclasses.replace(_earthdata(tmp_path, cmr, short_name="MOD02QKM"), page_size=2)
        cmr.fail_next(1, status=503)  # CMR hiccups are retried (urllib3 Retry)
        cmr.fail_next(1, status=429)
        granules = list(source.discover())
        assert [g.key for g in granules] == catalog.native_ids() and len(granules) == 20
        sent = [r.search_after for r in cmr.requests if r.status == 200]
        assert sent == [None, *tokens]  # the 11th page is empty: the end
        assert all(g.revision == "5" for g in granules)
