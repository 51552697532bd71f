"""An Earthdata token reaches only the hosts its store allows (issue 14).

Two real HTTP range servers on different loopback hosts: the collection's data host
(``127.0.0.1``, checks the bearer token) and a foreign host (``127.0.0.2``, serves the same
files to anyone and counts every ``Authorization`` header it receives). CMR (replay server)
lists a granule whose data link is on the foreign host: first, last, or in the middle of a
page. Across sync, retry, opening the repository and the export, verify and status, the
foreign host must see no ``Authorization`` header (and no request at all), the granule is
quarantined with a reason naming the host and how to allow it, and the granules committed
from the data host stay readable. Only Earthdata Login is out of the picture (the token
comes from ``EARTHDATA_TOKEN``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import refstore
from refstore.config import Config, load_config
from refstore.errors import ConfigError
from refstore.hosts import HostPolicy, host_of
from refstore.models import Granule
from refstore.sources import source_for
from refstore.verify import verify
from tests.conftest import run_cli
from tests.helpers import assert_same_values, direct_read
from tests.remote_env import (
    CCMP,
    EDL_TOKEN,
    bucket_name,
    ccmp_catalog,
    ccmp_item,
    files_under,
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

pytestmark = pytest.mark.usefixtures("loopback_only")

# What CMR's records say; the replay server rewrites it to the foreign loopback server.
MIRROR = "https://mirror.example.net/ccmp/"
README = Path(__file__).parents[1] / "README.md"


@dataclass
class World:
    """The servers and files of one test."""

    home: RangeHTTPServer
    foreign: RangeHTTPServer
    catalog: GranuleCatalog
    cmr: CmrReplayServer
    files: list[Path]
    folder: Path

    def config(self) -> Any:
        return load_config(self.folder / "refstore.toml", environ={})

    def write(self, **source: Any) -> None:
        write_config(
            self.folder,
            {
                "source": {
                    "short_name": CCMP,
                    "access": "external",
                    "cmr_url": self.cmr.search_url,
                    "login": "token",
                    **source,
                },
                "sync": {"executor": "serial"},
            },
        )

    def cli(self, *args: str, check: bool = True) -> Any:
        return run_cli(*args, cwd=self.folder, check=check)

    def sync(self) -> dict[str, Any]:
        proc = self.cli("sync", "--json", "--no-progress")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return result

    def add_foreign(self, path: Path, begin: str) -> str:
        """A granule CMR lists with its data link on the foreign host."""
        self.catalog.add(
            granule_item(
                native_id=path.stem,
                short_name=CCMP,
                version="3.1",
                begin=begin,
                https_url=f"{MIRROR}{path.name}",
                size_in_bytes=path.stat().st_size,
            )
        )
        return path.stem


@pytest.fixture
def world(
    tmp_path: Path, ccmp_archive: Callable[..., list[Path]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    monkeypatch.setenv("EARTHDATA_TOKEN", EDL_TOKEN)
    files = ccmp_archive(6)
    with (
        RangeHTTPServer(files[0].parent, bearer_token=EDL_TOKEN) as home,
        RangeHTTPServer(files[0].parent, host="127.0.0.2") as foreign,
    ):
        catalog = ccmp_catalog(files[:2], bucket="unused", http_base=home.base_url)
        catalog.link_rewrites[MIRROR] = foreign.base_url + "/"
        with CmrReplayServer(catalog) as cmr:
            yield World(home, foreign, catalog, cmr, files, tmp_path)


def _assert_untouched(foreign: RangeHTTPServer, step: str) -> None:
    assert foreign.authorization_headers == 0, f"{step}: the token reached the foreign host"
    assert foreign.total_requests == 0, f"{step}: {foreign.all_stats()}"


# CMR sorts granules by start date: the foreign one's start date sets where it is listed.
PLACES = {
    "listed-first": "2023-12-31T00:00:00Z",
    "mixed-into-the-page": "2024-01-03T12:00:00Z",
    "listed-last": "2024-01-28T00:00:00Z",
}


@pytest.mark.parametrize("place", list(PLACES))
def test_a_foreign_granule_is_quarantined_and_never_gets_the_token(
    world: World, place: str
) -> None:
    w = world
    w.write()
    first = w.sync()
    assert first["added"] == [f.stem for f in w.files[:2]]
    home = host_of(w.home.base_url)
    assert w.status()["hosts"] == [{"host": home, "from": "recorded"}]

    # Two new granules on the data host, and one on another host.
    for day in (3, 4):
        w.catalog.add(ccmp_item(w.files[day - 1], day, None))
    bad = w.add_foreign(w.files[4], PLACES[place])
    listed = [g.key for g in source_for(w.config()).discover()]  # CMR only
    where = {"listed-first": 0, "mixed-into-the-page": 3, "listed-last": 4}[place]
    assert len(listed) == 5 and listed.index(bad) == where, listed

    second = w.sync()
    _assert_untouched(w.foreign, "sync")
    assert second["added"] == [f.stem for f in w.files[2:4]]
    (failure,) = second["quarantined"]
    foreign = host_of(w.foreign.base_url)
    assert failure["key"] == bad
    assert foreign in failure["reason"] and "allowed_hosts" in failure["reason"]
    assert "\n" not in failure["reason"]

    retried = w.cli("retry")
    assert "queued 1 granule(s)" in retried.stdout, retried.stdout
    _assert_untouched(w.foreign, "retry")

    config = w.config()
    expected = direct_read(w.files[:4])
    assert_same_values(refstore.open_dataset(config).load(), expected)
    _assert_untouched(w.foreign, "open (repository)")
    assert_same_values(refstore.open_dataset(config, source="export").load(), expected)
    _assert_untouched(w.foreign, "open (export)")
    verified = json.loads(w.cli("verify", "--json", "--sample", "6").stdout)
    assert verified["ok"] and verified["granules"] == 4 and verified["chunks_checked"] == 6
    _assert_untouched(w.foreign, "verify")

    status = w.status()
    assert status["hosts"] == [{"host": home, "from": "recorded"}]
    (quarantined,) = status["quarantined"]
    assert quarantined["key"] == bad and foreign in quarantined["reason"]
    assert w.home.authorization_headers > 0  # the token does go where it belongs
    print(
        f"\n{place}: Authorization headers seen: data host {w.home.authorization_headers}, "
        f"foreign host {w.foreign.authorization_headers} ({w.foreign.total_requests} requests)"
    )


def test_allowing_another_host_is_deliberate_and_recorded(world: World) -> None:
    """The foreign granule lands only after its host is listed in allowed_hosts; the
    host is then recorded in the repository, and every granule still reads."""
    import icechunk

    w = world
    w.write()
    w.sync()
    bad = w.add_foreign(w.files[2], "2024-01-03T00:00:00Z")
    assert [f["key"] for f in w.sync()["quarantined"]] == [bad]
    _assert_untouched(w.foreign, "sync")

    home, foreign = host_of(w.home.base_url), host_of(w.foreign.base_url)
    w.write(allowed_hosts=[w.foreign.base_url])
    assert w.status()["hosts"] == [
        {"host": home, "from": "recorded"},
        {"host": foreign, "from": "allowed_hosts"},
    ]
    w.cli("retry")
    assert w.foreign.authorization_headers > 0
    status = w.status()
    assert status["quarantined"] == [] and status["counts"] == {"committed": 3}
    assert {h["host"]: h["from"] for h in status["hosts"]} == {
        home: "recorded",
        foreign: "recorded",
    }
    config = w.config()
    assert_same_values(refstore.open_dataset(config).load(), direct_read(w.files[:3]))
    assert_same_values(
        refstore.open_dataset(config, source="export").load(), direct_read(w.files[:3])
    )
    # Recorded as containers of the repository, without the token.
    saved = icechunk.Repository.fetch_config(icechunk.local_filesystem_storage(config.repo))
    assert saved is not None
    assert sorted(saved.virtual_chunk_containers or {}) == [f"{home}/", f"{foreign}/"]
    state = files_under(w.folder / "state", w.folder / "refstore.toml")
    assert secret_hits([EDL_TOKEN], state, [repr(saved)]) == []


def test_a_new_store_does_not_pick_a_host_from_mixed_links(world: World) -> None:
    """The first sync takes the one host all links are on; with two it asks the user."""
    w = world
    w.write()
    w.add_foreign(w.files[3], "2023-12-31T00:00:00Z")
    proc = w.cli("sync", "--no-progress", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert host_of(w.foreign.base_url) in lines[0] and host_of(w.home.base_url) in lines[0]
    assert lines[1].startswith("  hint: List the trusted ones in [source] allowed_hosts")
    assert not (w.folder / "state" / "repo").exists()

    w.write(allowed_hosts=[w.home.base_url])
    result = w.sync()
    assert result["added"] == [f.stem for f in w.files[:2]]
    assert [f["key"] for f in result["quarantined"]] == [w.files[3].stem]
    _assert_untouched(w.foreign, "sync")


def test_export_options_send_the_token_per_host(world: World, tmp_path: Path) -> None:
    """A reference file naming both hosts (as an export written before this fix could):
    the export's fsspec options give the token to the allowed host only."""
    import fsspec

    w = world
    w.write(allowed_hosts=[w.home.base_url])
    config = w.config()
    options = refstore.api._export_fs(config) or {}
    name = w.files[0].name
    refs = {
        "version": 1,
        "refs": {
            "home": [w.home.url_for(name), 0, 8],
            "foreign": [w.foreign.url_for(name), 0, 8],
        },
    }
    fs = fsspec.filesystem("reference", fo=refs, fs={"http": options["http"]})
    assert fs.cat("home") == fs.cat("foreign") == w.files[0].read_bytes()[:8]
    assert w.home.authorization_headers == 1
    assert w.foreign.authorization_headers == 0 and w.foreign.total_requests == 1


def test_readme_plain_fsspec_recipe_scopes_the_token(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's plain-fsspec recipe for an HTTPS export, run as written (with this
    store's host, over plain HTTP): it reads the export, the token going to that host only."""
    w = world
    w.write()
    w.sync()
    w.add_foreign(w.files[2], "2024-01-28T00:00:00Z")
    w.sync()
    code = _readme_recipe()
    home = host_of(w.home.base_url)
    code = re.sub(r"HOSTS = \{[^}]*\}", f"HOSTS = {{{home!r}}}", code, count=1)
    code = code.replace('remote_protocol="https"', 'remote_protocol="http"')  # loopback
    assert home in code and 'remote_protocol="http"' in code
    monkeypatch.chdir(w.folder)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert_same_values(namespace["ds"].load(), direct_read(w.files[:2]))
    assert w.home.authorization_headers > 0
    _assert_untouched(w.foreign, "README recipe")


def _readme_recipe() -> str:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (block,) = [str(b) for b in blocks if "bearer_for_hosts" in b]
    return block


def test_host_policy_rules() -> None:
    policy = HostPolicy.of(["http://127.0.0.1:9/", "file:///data/"], ["data.example.org"])
    assert policy.hosts == ("http://127.0.0.1:9", "https://data.example.org")
    assert policy.allows("https://DATA.example.org:443/x.nc")
    assert not policy.allows("http://127.0.0.1:10/x.nc")
    assert not policy.allows("https://data.example.org.evil.net/x.nc")
    assert not policy.allows("https://data.example.org@evil.net/x.nc")
    assert policy.settle(["https://elsewhere.org/a.nc"]) is policy  # decided: never grows
    fresh = HostPolicy().settle(["https://a.org/1.nc", "https://a.org/2.nc"])
    assert fresh.hosts == ("https://a.org",) and fresh.describe()[0]["from"] == "first sync"
    with pytest.raises(ConfigError, match="2 hosts"):
        HostPolicy().settle(["https://a.org/1.nc", "https://b.org/2.nc"])
    config = Config("time", "", "repo", "ledger", "export", short_name=CCMP)
    assert config.replace(allowed_hosts=("a.org/",)).allowed_hosts == ("https://a.org",)
    with pytest.raises(ConfigError, match="is not a host"):
        config.replace(allowed_hosts=("https://a.org/some/path",))


_HOSTS = st.sampled_from(
    ["https://a.org", "https://a.org:8443", "http://a.org", "https://b.org", "s3://bkt"]
)
_URLS = st.builds(lambda h, n: f"{h}/data/{n}.nc", _HOSTS, st.integers(0, 9))


@given(
    recorded=st.lists(_HOSTS, max_size=2),
    configured=st.lists(_HOSTS, max_size=2),
    urls=st.lists(_URLS, max_size=8),
)
def test_the_policy_lets_through_only_its_hosts_and_never_grows(
    recorded: list[str], configured: list[str], urls: list[str]
) -> None:
    policy = HostPolicy.of([h + "/" for h in recorded], configured)
    granules = [Granule(f"k{i}", u, "1") for i, u in enumerate(urls)]
    allowed, refused = policy.split(granules)
    assert all(host_of(g.url) in policy.hosts for g in allowed)
    assert len(allowed) + len(refused) == len(granules)
    assert all(
        host_of(g.url) in f.reason
        for g, f in zip([g for g in granules if g not in allowed], refused, strict=True)
    )
    if policy.decided:
        assert policy.settle(urls) is policy


def test_direct_access_keys_never_reach_a_foreign_bucket(
    tmp_path: Path,
    ccmp_archive: Callable[..., list[Path]],
    moto: MotoS3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``access = "direct"``: a granule CMR lists first in another bucket, naming another
    ``/s3credentials`` endpoint (a tampered record), gets neither the token nor the keys."""
    monkeypatch.setenv("EARTHDATA_TOKEN", EDL_TOKEN)
    files = ccmp_archive(4)
    podaac, other = bucket_name("podaac"), bucket_name("other")
    for bucket in (podaac, other):
        moto.make_bucket(bucket)
        for f in files:
            moto.upload_file(bucket, f"{CCMP}/{f.name}", f)
    with (
        EarthdataAuthServer(bearer_token=EDL_TOKEN) as auth,
        EarthdataAuthServer(bearer_token=EDL_TOKEN, host="127.0.0.2") as evil,
        MotoS3Server(session_token_validator=auth.is_session_token_valid) as nasa,
    ):
        catalog = ccmp_catalog(
            files[:2], bucket=podaac, http_base=None, s3credentials_url=auth.s3credentials_url
        )
        catalog.link_rewrites["s3://tampered/"] = f"s3://{other}/"
        catalog.link_rewrites["https://evil.example.net/"] = evil.base_url + "/"
        with CmrReplayServer(catalog) as cmr:
            write_config(
                tmp_path,
                {
                    "source": s3_section(
                        nasa, short_name=CCMP, access="direct", cmr_url=cmr.search_url
                    ),
                    "sync": {"executor": "serial"},
                },
            )
            config = load_config(tmp_path / "refstore.toml", environ={})
            assert len(refstore.sync(config).added) == 2
            catalog.add(ccmp_item(files[2], 3, None))
            catalog.add(
                granule_item(
                    native_id=files[3].stem,
                    short_name=CCMP,
                    version="3.1",
                    begin="2023-12-31T00:00:00Z",
                    s3_url=f"s3://tampered/{CCMP}/{files[3].name}",
                    s3_credentials_url="https://evil.example.net/s3credentials",
                )
            )
            assert next(g.key for g in source_for(config).discover()) == files[3].stem
            result = refstore.sync(config)

            def untouched() -> None:
                assert evil.request_count() == 0, "the token reached another /s3credentials"
                reads = [r.path for r in nasa.requests if r.path.startswith(f"/{other}")]
                assert reads == [], "the keys reached another bucket"

            untouched()
            assert result.added == (files[2].stem,)
            (failure,) = result.quarantined
            assert f"s3://{other}" in failure.reason and "allowed_hosts" in failure.reason
            assert_same_values(refstore.open_dataset(config).load(), direct_read(files[:3]))
            report = verify(config, sample=4)
            assert report.ok and report.granules == 3
            assert refstore.open_store(config).source.containers()[0].url_prefix == (
                f"s3://{podaac}/"
            )
            untouched()
        assert auth.request_count() >= 1
