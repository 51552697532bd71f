"""`refstore publish`: the STAC Collection, OPEN.md, UMM-C entry and index.html of a real
store (two syncs, a tag, a quarantined granule whose name is HTML), `verify` running the
published open code as a reader would, and the page as a person sees it in a real
headless Chromium (marker ``browser``; skipped when Debian's chromium is absent)."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import refstore
from refstore.config import Config, load_config, render_toml
from refstore.publish_render import Container, Facts, index_html, readme_snippet, snippets
from refstore.synthetic import write_ccmp_like_series
from tests.conftest import run_cli

CHROMIUM = "/usr/bin/chromium"
EVIL = "CCMP_<img src=x onerror=alert(1)>.nc"  # a granule name that is HTML


@pytest.fixture(scope="module")
def published_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    """A store after two syncs (the first tagged), one quarantined granule named like
    HTML, then `refstore publish --umm` through the real CLI."""
    from datetime import datetime

    root = tmp_path_factory.mktemp("published")
    incoming = root / "incoming"
    incoming.mkdir()
    files = write_ccmp_like_series(root / "archive", datetime(2024, 1, 1), 3)
    (root / "refstore.toml").write_text(
        render_toml(source_url="incoming", concat_dim="time") + '[sync]\nexecutor = "serial"\n'
    )
    config = load_config(root / "refstore.toml", environ={})
    for f in files[:2]:
        shutil.copy2(f, incoming / f.name)
    refstore.sync(config, tag="first-<b>")
    shutil.copy2(files[2], incoming / files[2].name)
    (incoming / EVIL).write_bytes(b"not a netcdf file")
    refstore.sync(config)
    run_cli("publish", "--umm", cwd=root)
    return config, root


def test_publish_writes_what_a_reader_needs(published_store: tuple[Config, Path]) -> None:
    config, root = published_store
    folder = Path(config.export).parent
    stac = json.loads((folder / "collection.json").read_text())
    log = json.loads(run_cli("log", "--json", cwd=root).stdout)
    assert stac["type"] == "Collection" and stac["stac_version"] == "1.0.0"
    assert stac["assets"]["icechunk"]["href"] == config.repo
    assert stac["assets"]["kerchunk"]["href"] == config.export
    assert stac["assets"]["coverage"]["href"] == "coverage.png"
    assert stac["extent"]["temporal"]["interval"] == [
        ["2024-01-01T00:00:00", "2024-01-03T18:00:00"]
    ]
    assert stac["refstore:last_snapshot"]["snapshot"] == log[0]["snapshot"]
    assert stac["refstore:cadence"] == "6h" and stac["refstore:steps"] == 12
    source_prefix = Path(config.source_url).as_uri() + "/"
    assert stac["assets"]["icechunk"]["refstore:authorize"] == [source_prefix]
    lat = stac["extent"]["spatial"]["bbox"][0]
    assert len(lat) == 4 and lat[0] < lat[2] and lat[1] < lat[3]
    umm = json.loads((folder / "umm-related-urls.json").read_text())
    assert [u["URL"] for u in umm["RelatedUrls"]] == [config.repo, config.export]
    text = (folder / "OPEN.md").read_text()
    assert source_prefix in text and "LocalFileSystemAccess" in text
    assert (folder / "coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = (".collection", ".OPEN", ".index", ".coverage", ".umm")
    assert not [p.name for p in folder.iterdir() if p.name.startswith(leftovers)]


def test_verify_runs_the_published_code(published_store: tuple[Config, Path]) -> None:
    config, root = published_store
    report = json.loads(run_cli("verify", "--json", "--sample", "1", cwd=root).stdout)
    assert report["ok"] is True
    assert len(report["published"]) == 2 and report["notes"] == []

    # The snippets are real code: the same code, run here, opens the store's values.
    from refstore.publish import code_blocks

    blocks = code_blocks((Path(config.export).parent / "OPEN.md").read_text())
    head = refstore.open_dataset(config)
    for _title, code in blocks:
        scope: dict[str, object] = {}
        exec(code, scope)
        ds = scope["ds"]
        np.testing.assert_array_equal(ds["time"].values, head["time"].values)  # type: ignore[index]
        np.testing.assert_array_equal(ds["ws"].values, head["ws"].values)  # type: ignore[index]


def test_verify_fails_when_the_published_code_does_not_open(
    published_store: tuple[Config, Path], tmp_path: Path
) -> None:
    config, root = published_store
    copy = tmp_path / "pub"
    shutil.copytree(
        Path(config.export).parent, copy, ignore=shutil.ignore_patterns("*.parquet", ".*")
    )
    text = (copy / "OPEN.md").read_text()
    assert f"{config.repo}'" in text
    (copy / "OPEN.md").write_text(text.replace(f"{config.repo}'", f"{config.repo}-gone'"))
    proc = run_cli(
        "verify", "--json", "--sample", "1", "--published", str(copy), cwd=root, check=False
    )
    assert proc.returncode == 8, proc.stderr
    report = json.loads(proc.stdout)
    assert any("Icechunk repository" in m and "fails" in m for m in report["mismatches"])


@pytest.mark.usefixtures("loopback_only")
def test_published_code_opens_an_s3_store_and_export(
    tmp_path: Path, moto: Any, ccmp_archive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.remote_env import s3_prefix_to_s3_store

    env, *_ = s3_prefix_to_s3_store(tmp_path, moto, monkeypatch, ccmp_archive(2))
    run_cli("sync", cwd=tmp_path, env=env)
    assert run_cli("publish", cwd=tmp_path, env=env, check=False).returncode == 2  # needs -o
    run_cli("publish", "-o", "site", cwd=tmp_path, env=env)
    text = "".join(
        (tmp_path / "site" / n).read_text() for n in ("OPEN.md", "index.html", "collection.json")
    )
    assert env["AWS_SECRET_ACCESS_KEY"] not in text and "AWS_ACCESS_KEY_ID" in text
    report = json.loads(
        run_cli(
            "verify", "--json", "--sample", "1", "--published", "site", cwd=tmp_path, env=env
        ).stdout
    )
    assert report["ok"] is True and len(report["published"]) == 2


def _facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "name": "ccmp",
        "repo": "/data/repo",
        "export": "/data/export/refs.parquet",
        "concat_dim": "time",
        "start": "2024-01-01T00:00:00",
        "end": "2024-01-02T00:00:00",
        "steps": 5,
        "cadence": "6h",
        "update_cadence": "1d",
        "last_snapshot": {"snapshot": "S1", "written_at": "t", "message": "<script>x</script>"},
        "containers": [Container("file:///data/in/", "local", "read access")],
    }
    return Facts(**{**base, **kw})  # type: ignore[arg-type]


def test_every_text_on_the_page_is_escaped() -> None:
    page = index_html(
        _facts(
            snapshots=[
                {"snapshot": "S1", "written_at": "t", "message": "<i>m</i>", "tags": ["<b>"]}
            ],
            tags=[{"name": "<b>", "snapshot": "S1"}],
            quarantined=[{"key": "<svg onload=x>", "reason": "a & <u>b</u>"}],
            name="<h1>n",
        )
    )
    assert "<script" not in page and "<svg" not in page and "<u>" not in page and "<i>" not in page
    assert "&lt;svg onload=x&gt;" in page and "a &amp; &lt;u&gt;b&lt;/u&gt;" in page


def test_the_page_lists_the_newest_tags_only() -> None:
    page = index_html(_facts(tags=[{"name": f"t{i}", "snapshot": "S"} for i in range(30)]))
    assert page.count("<td>t") == 20 and "<td>t19</td>" in page and "<td>t20</td>" not in page
    assert "and 10 older tag(s)" in page


def test_snippets_name_credentials_never_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_DATA_TOKEN", "s3cr3t-value")
    facts = _facts(
        containers=[
            Container(
                "https://data.example.org/",
                "http",
                "a bearer token in $MY_DATA_TOKEN",
                token_env="MY_DATA_TOKEN",
            ),
            Container("s3://bucket/ccmp/", "s3", "AWS keys"),
        ],
        repo="s3://store-bucket/refs/ccmp",
        repo_options={"region": "us-west-2"},
    )
    text = readme_snippet(facts) + index_html(facts)
    assert "s3cr3t-value" not in text
    repo_code = snippets(facts)[0].code
    assert "os.environ['MY_DATA_TOKEN']" in repo_code
    assert (
        "icechunk.s3_storage(bucket='store-bucket', prefix='refs/ccmp', "
        "region='us-west-2', from_env=True)" in repo_code
    )
    compile(repo_code, "repo", "exec")
    compile(snippets(facts)[1].code, "export", "exec")


class _Visible(HTMLParser):
    """Text a person sees (not inside <style>/<head> elements), and the elements."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("style", "title", "script"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title", "script"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.text.append(data.strip())


def _chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.browser
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)",
)
def test_the_page_in_a_real_browser(published_store: tuple[Config, Path], tmp_path: Path) -> None:
    config, root = published_store
    page = Path(config.export).parent / "index.html"
    dom = _chromium(page, tmp_path, "--dump-dom").stdout
    seen = _Visible()
    seen.feed(dom)
    text = "\n".join(seen.text)
    log = json.loads(run_cli("log", "--json", cwd=root).stdout)
    assert log[0]["snapshot"] in text and "first-<b>" in text  # last update, the tag
    assert EVIL in text  # the quarantined granule, shown as text ...
    assert not [a for t, a in seen.tags if t == "img" and a.get("src") == "x"]  # ... not run
    assert [a["src"] for t, a in seen.tags if t == "img"] == ["coverage.png"]
    assert "import icechunk" in text and "fsspec.filesystem" in text
    assert not [t for t, _ in seen.tags if t == "script"]

    shot = tmp_path / "page.png"
    _chromium(
        page, tmp_path, f"--screenshot={shot}", "--window-size=1280,1400", "--hide-scrollbars"
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    teal = np.all(np.abs(pixels - [0x2A, 0x9D, 0x8F]) < 12, axis=1).sum()  # the 'present' lane
    assert teal > 2000, f"the coverage picture is not visible ({teal} teal pixels)"
    assert html.escape(EVIL) not in text  # escaped once, not twice
