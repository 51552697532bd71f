"""Shared fixtures: real granules (tests/data and the synthetic CCMP-like writer), real
Icechunk repos and SQLite ledgers in tmp_path, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from refstore.config import Config, load_config, render_toml

DATA = Path(__file__).parent / "data"
GRANULES = DATA / "granules"
GAMSSA = sorted((GRANULES / "gamssa").glob("*.nc"))
ASCAT = sorted((GRANULES / "ascat_nc3").glob("*.nc"))


@pytest.fixture(autouse=True)
def _quiet_icechunk() -> Iterator[None]:
    import icechunk

    icechunk.set_logs_filter("error")
    yield


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    """An empty folder granules 'arrive' in."""
    path = tmp_path / "incoming"
    path.mkdir()
    return path


type MakeConfig = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path, incoming: Path) -> MakeConfig:
    """Write a refstore.toml in tmp_path (relative store paths) and load it."""

    def make(source: str | None = None, concat_dim: str = "time", **extra: Any) -> Config:
        text = render_toml(
            source_url=source or "incoming",
            concat_dim=concat_dim,
            **{
                k: v
                for k, v in extra.items()
                if k in {"group", "drop_variables", "loadable_variables", "concat_from"}
            },
        )
        sync_keys = {k: v for k, v in extra.items() if k in {"batch_size", "executor", "workers"}}
        if sync_keys:
            text += "[sync]\n" + "".join(
                f"{k} = {v!r}\n".replace("'", '"') for k, v in sync_keys.items()
            )
        path = tmp_path / "refstore.toml"
        path.write_text(text)
        return load_config(path, environ={})

    return make


@pytest.fixture
def arrive(incoming: Path) -> Callable[..., list[Path]]:
    """Copy granules into the incoming folder."""

    def copy(*paths: Path) -> list[Path]:
        out = []
        for p in paths:
            dest = incoming / p.name
            shutil.copy2(p, dest)
            out.append(dest)
        return out

    return copy


@pytest.fixture
def ccmp_archive(tmp_path: Path) -> Callable[..., list[Path]]:
    """Write CCMP-like daily granules (4 six-hourly steps) to an archive folder."""
    from refstore.synthetic import write_ccmp_like_series

    def write(n: int, start: datetime = datetime(2024, 1, 1), **kwargs: Any) -> list[Path]:
        folder = tmp_path / "archive" / f"{start:%Y%m%d%H}-{n}-{len(kwargs)}"
        return write_ccmp_like_series(folder, start, n, **kwargs)

    return write


@pytest.fixture
def loopback_only() -> Iterator[None]:
    """Refuse Python-level traffic off 127.0.0.1 and forget cached credentials."""
    from refstore.credentials import _MEMORY
    from tests.servers import no_external_network

    _MEMORY.forget()
    with no_external_network() as blocked:
        yield
    _MEMORY.forget()
    assert blocked == [], f"traffic tried to leave 127.0.0.1: {blocked}"


@pytest.fixture(scope="module")
def moto() -> Iterator[Any]:
    """A moto S3 server on 127.0.0.1, shared by a test module."""
    from tests.servers import MotoS3Server

    with MotoS3Server() as s3:
        yield s3


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a CLI subprocess: no REFSTORE_* setting of the
    calling shell, only those in ``extra``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("REFSTORE_")}
    return {**inherited, **(extra or {})}


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (as a user runs it); no REFSTORE_* setting of the
    calling shell reaches it, only those in ``env``."""
    proc = subprocess.run(
        [sys.executable, "-m", "refstore", *args],
        cwd=cwd,
        env=cli_env(env),
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"refstore {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
