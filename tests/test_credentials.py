"""Earthdata login strategies and refreshing temporary S3 credentials.

Earthdata Login and ``/s3credentials`` are SIMULATED here (``EarthdataAuthServer``: NASA's login
cannot run offline); the S3 server checking the session tokens is moto.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refstore.credentials import _MEMORY, EarthdataLogin, EarthdataS3Credentials
from refstore.errors import ConfigError
from tests.remote_env import EDL_PASSWORD, EDL_TOKEN
from tests.servers import EarthdataAuthServer, MotoS3Server, no_external_network


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    _MEMORY.forget()
    with no_external_network() as blocked:
        yield
    _MEMORY.forget()
    assert blocked == [], f"traffic tried to leave 127.0.0.1: {blocked}"


@pytest.fixture
def auth() -> Iterator[EarthdataAuthServer]:
    with EarthdataAuthServer(
        lifetime=2, bearer_token=EDL_TOKEN, username="alice", password=EDL_PASSWORD
    ) as server:
        yield server


TOKEN_API = "/api/users/find_or_create_token"


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    login = EarthdataLogin(token_env="MY_EDL_TOKEN")
    assert login.describe() is None
    monkeypatch.setenv("MY_EDL_TOKEN", EDL_TOKEN)
    assert login.describe() == "token" and login.token() == EDL_TOKEN
    assert EarthdataLogin(token_env="MY_EDL_TOKEN", strategy="netrc").describe() is None


def test_username_password_from_the_environment_exchanged_once(
    auth: EarthdataAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARTHDATA_USERNAME", "alice")
    monkeypatch.setenv("EARTHDATA_PASSWORD", EDL_PASSWORD)
    login = EarthdataLogin(edl_url=auth.base_url, strategy="environment")
    assert login.describe() == "environment"
    assert login.token() == EDL_TOKEN and login.token() == EDL_TOKEN
    assert auth.request_count(TOKEN_API) == 1  # kept in memory afterwards


def test_netrc(auth: EarthdataAuthServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login alice password {EDL_PASSWORD}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    login = EarthdataLogin(edl_url=auth.base_url)  # strategy "all" falls through to netrc
    assert login.describe() == "netrc" and login.token() == EDL_TOKEN


def test_missing_or_refused_login_is_a_config_error_with_a_hint(
    auth: EarthdataAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="No Earthdata login") as missing:
        EarthdataLogin(edl_url=auth.base_url).token()
    assert "EARTHDATA_TOKEN" in missing.value.hint and "netrc" in missing.value.hint
    monkeypatch.setenv("EARTHDATA_USERNAME", "alice")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "wrong")
    with pytest.raises(ConfigError, match="refused") as refused:
        EarthdataLogin(edl_url=auth.base_url).token()
    assert "wrong" not in str(refused.value) + refused.value.hint
    monkeypatch.setenv("EARTHDATA_TOKEN", "not-the-token")
    with pytest.raises(ConfigError, match="refused the Earthdata login"):
        EarthdataS3Credentials(auth.s3credentials_url).current()


def test_s3_credentials_are_refreshed_before_they_expire(
    auth: EarthdataAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys live 1-2 s here (lifetime 2, whole-second expiry): every set handed out over
    3.5 s must still be valid, and the endpoint is asked once per lifetime, not per call."""
    monkeypatch.setenv("EARTHDATA_TOKEN", EDL_TOKEN)
    provider = EarthdataS3Credentials(auth.s3credentials_url)
    calls = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.5:
        creds = provider()  # the obstore credential-provider protocol
        calls += 1
        assert auth.is_session_token_valid(creds["token"])
        assert creds["expires_at"] < provider.current().expiration
        time.sleep(0.02)
    assert calls > 50
    assert 2 <= auth.issued_count <= 5 and provider.fetches == auth.issued_count


def test_transient_faults_are_retried(
    auth: EarthdataAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARTHDATA_TOKEN", EDL_TOKEN)
    auth.fail_next(1, status=503)
    auth.fail_next(1, status=429)
    creds = EarthdataS3Credentials(auth.s3credentials_url).current()
    assert auth.is_session_token_valid(creds.session_token)
    assert auth.request_count("/s3credentials") == 3


def test_no_secret_in_reprs_or_pickles(
    auth: EarthdataAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARTHDATA_TOKEN", EDL_TOKEN)
    provider = EarthdataS3Credentials(auth.s3credentials_url)
    creds = provider.current()
    secrets = [EDL_TOKEN, creds.session_token, creds.secret_access_key]
    callback = provider.icechunk()  # what Icechunk pickles and calls back
    texts = [repr(provider), repr(creds), repr(provider.login), str(callback)]
    blobs = [pickle.dumps(provider), pickle.dumps(provider.login)]
    for secret in secrets:
        assert not any(secret in t for t in texts)
        assert not any(secret.encode() in b for b in blobs)
    assert pickle.loads(blobs[0]) == provider
    assert pickle.loads(blobs[0]).current() == creds  # same process: same keys in memory


def test_icechunk_and_obstore_read_with_refreshing_keys(
    auth: EarthdataAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both clients keep reading an expiring-token bucket past several key lifetimes."""
    import icechunk
    import numpy as np
    import obstore
    import zarr
    from obstore.store import S3Store

    monkeypatch.setenv("EARTHDATA_TOKEN", EDL_TOKEN)
    provider = EarthdataS3Credentials(auth.s3credentials_url)
    with MotoS3Server(session_token_validator=auth.is_session_token_valid) as s3:
        s3.make_bucket("protected-data")
        s3.put_bytes("protected-data", "g.nc", b"\x89HDF\r\n\x1a\nrest-of-granule")
        store = S3Store(
            "protected-data",
            endpoint=s3.endpoint_url,
            region=s3.region,
            client_options={"allow_http": True},
            credential_provider=provider,
        )
        config = icechunk.RepositoryConfig.default()
        container = icechunk.VirtualChunkContainer(
            "s3://protected-data/",
            icechunk.s3_store(
                region=s3.region, endpoint_url=s3.endpoint_url, allow_http=True,
                s3_compatible=True, force_path_style=True,
            ),
        )  # fmt: skip
        config.set_virtual_chunk_container(container)
        auth_map = icechunk.containers_credentials({"s3://protected-data/": provider.icechunk()})
        repo = icechunk.Repository.create(
            icechunk.in_memory_storage(), config=config, authorize_virtual_chunk_access=auth_map
        )
        session = repo.writable_session("main")
        zarr.create_array(
            session.store, name="x", shape=(8,), chunks=(8,), dtype="uint8", compressors=None
        )
        session.store.set_virtual_ref("x/c/0", "s3://protected-data/g.nc", offset=0, length=8)
        session.commit("virtual")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.2:
            assert bytes(obstore.get_range(store, "g.nc", start=0, length=8))[:4] == b"\x89HDF"
            ro = repo.readonly_session("main")
            array = zarr.open_array(ro.store, path="x", mode="r")
            assert np.asarray(array[:]).tobytes() == b"\x89HDF\r\n\x1a\n"
            time.sleep(0.1)
        assert [r.status for r in s3.requests if r.status >= 400] == []
        assert auth.issued_count >= 2  # keys expired and were replaced during the loop
        assert datetime.now(UTC) > auth.issued[0].expires_at
