"""One contract every source kind passes (as fsspec's and xarray's backends share one).

Each kind subclasses :class:`SourceContract` and provides two fixtures: ``source`` (a source
over a few real granules) and ``change`` (replace one granule upstream, by key). Everything
runs against loopback servers: moto S3, an HTTP range server with a bearer token, CMR
replaying recorded items, and the simulated Earthdata ``/s3credentials`` endpoint.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from refstore.config import load_config
from refstore.models import Granule
from refstore.sources import Source, source_for
from refstore.sources.base import HostScoped, kind_of
from refstore.virtualize import detect_format
from tests.conftest import GAMSSA
from tests.remote_env import (
    CCMP,
    EDL_TOKEN,
    HTTP_TOKEN,
    aws_env,
    bucket_name,
    ccmp_catalog,
    s3_section,
    write_config,
)
from tests.servers import (
    CmrReplayServer,
    EarthdataAuthServer,
    MotoS3Server,
    RangeHTTPServer,
)

type Change = Callable[[Granule], None]


# Every test here runs with Python-level traffic off loopback refused and no cached
# credential leaking between tests (fixtures in conftest.py).
pytestmark = pytest.mark.usefixtures("loopback_only")


@pytest.fixture
def granule_files(tmp_path: Path, ccmp_archive: Callable[..., list[Path]]) -> list[Path]:
    """Three real NetCDF4 granules: two CCMP-like days and a GAMSSA day."""
    folder = tmp_path / "files"
    folder.mkdir()
    files = [*ccmp_archive(2), GAMSSA[0]]
    return [Path(shutil.copy2(f, folder / f.name)) for f in files]


def _rewrite(path: Path) -> None:
    """Replace a file with other bytes (another size and mtime, so another ETag)."""
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * 16)
    later = time.time_ns() + 5_000_000_000
    os.utime(path, ns=(later, later))


class SourceContract:
    """What every source kind guarantees; subclasses provide ``source`` and ``change``."""

    def test_is_a_source(self, source: Source) -> None:
        assert isinstance(source, Source)
        assert isinstance(source.incremental, bool)

    def test_discover_twice_is_stable(self, source: Source) -> None:
        first = sorted(source.discover(), key=lambda g: g.key)
        second = sorted(source.discover(), key=lambda g: g.key)
        assert first == second and len(first) >= 3

    def test_keys_are_unique(self, source: Source) -> None:
        keys = [g.key for g in source.discover()]
        assert len(keys) == len(set(keys)) and all(keys)

    def test_revision_changes_when_the_object_changes(self, source: Source, change: Change) -> None:
        before = {g.key: g for g in source.discover()}
        target = sorted(before)[0]
        change(before[target])
        after = {g.key: g for g in source.discover()}
        assert set(after) == set(before)
        assert after[target].revision != before[target].revision
        assert all(after[k].revision == before[k].revision for k in before if k != target)

    def test_registry_reads_the_first_bytes_of_every_granule(self, source: Source) -> None:
        import obstore

        registry = source.registry()
        for g in source.discover():
            store, path = registry.resolve(g.url)
            head = bytes(obstore.get_range(store, path, start=0, length=8))
            assert detect_format({0: head}) is not None, (g.key, head)

    def test_container_prefix_covers_every_url(self, source: Source) -> None:
        specs = source.containers()
        assert all(s.url_prefix.endswith("/") for s in specs)
        assert {s.kind for s in specs} <= {"local", "s3", "http"}
        for g in source.discover():
            assert any(g.url.startswith(s.url_prefix) for s in specs), g.url

    def test_pickles_without_secrets(self, source: Source) -> None:
        list(source.discover())  # credentials, if any, are in memory now
        data = pickle.dumps(source)
        for secret in (EDL_TOKEN, HTTP_TOKEN, "refstore-fake-session", "refstore-test-secret"):
            assert secret.encode() not in data
        clone = pickle.loads(data)
        assert sorted(g.key for g in clone.discover()) == sorted(g.key for g in source.discover())


class TestLocalSource(SourceContract):
    @pytest.fixture
    def source(self, granule_files: list[Path], tmp_path: Path) -> Source:
        config = write_config(tmp_path, {"source": {"url": str(granule_files[0].parent)}})
        return source_for(load_config(config, environ={}))

    @pytest.fixture
    def change(self, granule_files: list[Path]) -> Change:
        return lambda g: _rewrite(granule_files[0].parent / g.key)


class TestS3Source(SourceContract):
    @pytest.fixture
    def source(
        self,
        moto: MotoS3Server,
        granule_files: list[Path],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Source:
        aws_env(monkeypatch, moto)
        bucket = bucket_name("granules")
        moto.make_bucket(bucket)
        for f in granule_files:
            moto.upload_file(bucket, f"in/{f.name}", f)
        moto.put_bytes(bucket, "in/README.txt", b"not a granule")
        moto.put_bytes(bucket, "in/sub/deeper.nc", b"not listed: not directly under in/")
        config = write_config(tmp_path, {"source": s3_section(moto, url=f"s3://{bucket}/in/")})
        self.bucket = bucket
        return source_for(load_config(config, environ={}))

    @pytest.fixture
    def change(self, moto: MotoS3Server, granule_files: list[Path]) -> Change:
        def replace(g: Granule) -> None:
            path = granule_files[0].parent / g.key
            _rewrite(path)
            moto.upload_file(self.bucket, f"in/{g.key}", path)

        return replace

    def test_glob_selects_recursively(
        self, moto: MotoS3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        aws_env(monkeypatch, moto)
        bucket = bucket_name("glob")
        moto.make_bucket(bucket)
        for key in ("a/x.nc", "a/b/y.nc", "a/b/z.h5", "a/.partial.nc"):
            moto.put_bytes(bucket, key, b"\x89HDF\r\n\x1a\n")
        config = write_config(
            tmp_path, {"source": s3_section(moto, url=f"s3://{bucket}/a/**/*.nc")}
        )
        source = source_for(load_config(config, environ={}))
        assert sorted(g.key for g in source.discover()) == ["b/y.nc", "x.nc"]
        assert [c.url_prefix for c in source.containers()] == [f"s3://{bucket}/a/"]

    def test_anonymous_public_bucket(
        self, moto: MotoS3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Unsigned requests: no AWS keys needed (and none looked for)."""
        import obstore

        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        bucket = bucket_name("public")
        moto.make_bucket(bucket)
        moto.client.put_object(
            Bucket=bucket, Key=GAMSSA[0].name, Body=GAMSSA[0].read_bytes(), ACL="public-read"
        )
        section = s3_section(moto, url=f"s3://{bucket}/", anonymous=True)
        source = source_for(load_config(write_config(tmp_path, {"source": section}), environ={}))
        (granule,) = source.discover()
        store, path = source.registry().resolve(granule.url)
        assert bytes(obstore.get_range(store, path, start=0, length=4)) == b"\x89HDF"
        assert dict(source.containers()[0].options)["anonymous"] == "true"


class TestHttpsSource(SourceContract):
    @pytest.fixture
    def source(
        self, granule_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[Source]:
        monkeypatch.setenv("MY_HTTP_TOKEN", HTTP_TOKEN)
        with RangeHTTPServer(granule_files[0].parent, bearer_token=HTTP_TOKEN) as srv:
            urls = tmp_path / "urls.txt"
            lines = ["# granules", *(srv.url_for(f.name) for f in granule_files), ""]
            urls.write_text("\n".join(lines))
            config = write_config(
                tmp_path, {"source": {"urls_file": "urls.txt", "token_env": "MY_HTTP_TOKEN"}}
            )
            yield source_for(load_config(config, environ={}))
            assert 401 not in {s for st in srv.all_stats().values() for s in st.statuses}

    @pytest.fixture
    def change(self, granule_files: list[Path]) -> Change:
        return lambda g: _rewrite(granule_files[0].parent / g.key)


class _EarthdataContract(SourceContract):
    """CMR replays items whose links are rewritten to loopback servers."""

    access = "external"

    @pytest.fixture
    def servers(
        self, moto: MotoS3Server, granule_files: list[Path], monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[tuple[CmrReplayServer, str]]:
        monkeypatch.setenv("EARTHDATA_TOKEN", EDL_TOKEN)
        aws_env(monkeypatch, moto)
        bucket = bucket_name("podaac")
        moto.make_bucket(bucket)
        for f in granule_files:
            moto.upload_file(bucket, f"{CCMP}/{f.name}", f)
        with (
            RangeHTTPServer(granule_files[0].parent, bearer_token=EDL_TOKEN) as http,
            EarthdataAuthServer(bearer_token=EDL_TOKEN) as auth,
            MotoS3Server(session_token_validator=auth.is_session_token_valid) as nasa,
        ):
            catalog = ccmp_catalog(
                granule_files,
                bucket=bucket,
                http_base=http.base_url,
                s3credentials_url=auth.s3credentials_url,
            )
            with CmrReplayServer(catalog) as cmr:
                self.hosts = [http.base_url, f"s3://{bucket}"]
                yield cmr, nasa.endpoint_url

    @pytest.fixture
    def source(self, servers: tuple[CmrReplayServer, str], tmp_path: Path) -> Source:
        cmr, nasa_endpoint = servers
        section = {
            "short_name": CCMP,
            "version": "3.1",
            "access": self.access,
            "cmr_url": cmr.search_url,
            "region": "us-west-2",
            "endpoint_url": nasa_endpoint,
            "allow_http": True,
            "allowed_hosts": self.hosts,
        }
        config = load_config(write_config(tmp_path, {"source": section}), environ={})
        assert kind_of(config) == "earthdata"
        source = source_for(config)
        assert isinstance(source, HostScoped)
        return source.with_hosts(config.allowed_hosts)  # as refstore.access binds it

    @pytest.fixture
    def change(self, servers: tuple[CmrReplayServer, str]) -> Change:
        def revise(g: Granule) -> None:
            servers[0].catalog.revise(g.key)

        return revise

    def test_is_incremental_by_revision_date(
        self, source: Source, servers: tuple[CmrReplayServer, str]
    ) -> None:
        everything = list(source.discover())
        mark = max(g.modified for g in everything if g.modified)
        assert source.incremental
        revised = servers[0].catalog.revise(everything[1].key)
        changed = {g.key: g for g in source.discover(since=mark)}
        # The revised granule, and the one at the mark (re-listed within the overlap that
        # covers CMR's indexing delay); not the older, unchanged ones.
        assert set(changed) == {everything[1].key, everything[2].key}
        assert changed[everything[1].key].revision == str(revised["meta"]["revision-id"])
        assert servers[0].requests[-1].params["revision_date"][0].endswith(",")


class TestEarthdataExternalSource(_EarthdataContract):
    access = "external"


class TestEarthdataDirectSource(_EarthdataContract):
    access = "direct"


# -- kinds and settings ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "kind"),
    [
        ({"url": "incoming"}, "file"),
        ({"url": "s3://bucket/ccmp/"}, "s3"),
        ({"urls_file": "granules.txt"}, "https"),
        ({"short_name": CCMP}, "earthdata"),
        ({"concept_id": "C2916529935-POCLOUD", "access": "direct"}, "earthdata"),
    ],
)
def test_the_settings_name_the_kind(section: dict[str, str], kind: str, tmp_path: Path) -> None:
    assert kind_of(load_config(write_config(tmp_path, {"source": section}), environ={})) == kind


def test_remote_settings_are_validated_and_read_from_the_environment(tmp_path: Path) -> None:
    from refstore.errors import ConfigError

    path = write_config(tmp_path, {"source": {"short_name": CCMP}})
    env = {
        "REFSTORE_SOURCE_ACCESS": "direct",
        "REFSTORE_SOURCE_ALLOW_HTTP": "true",
        "REFSTORE_SOURCE_TEMPORAL": "2024-01-01,2024-12-31",
        "REFSTORE_STORE_ALLOW_HTTP": "0",
        "REFSTORE_STORE_REPO": "s3://bucket/refs",
    }
    config = load_config(path, environ=env)
    assert (config.access, config.source_allow_http, config.store_allow_http) == (
        "direct",
        True,
        False,
    )
    assert config.temporal == ("2024-01-01", "2024-12-31") and config.repo == "s3://bucket/refs"
    for bad, match in [
        ({"REFSTORE_SOURCE_ACCESS": "in-region"}, "access must be direct or external"),
        ({"REFSTORE_SOURCE_ALLOW_HTTP": "maybe"}, "must be bool"),
        ({"REFSTORE_SOURCE_LOGIN": "interactive"}, "login must be one of"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(path, environ=bad)
    https = write_config(tmp_path, {"source": {"url": "https://data.example.org/ccmp/"}})
    with pytest.raises(ConfigError, match="cannot be listed") as err:
        source_for(load_config(https, environ={}))
    assert "urls_file" in err.value.hint
