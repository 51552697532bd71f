"""Executors: serial, a forkserver pool and a real dask cluster on 127.0.0.1 give the same
results, in order, with one progress call per granule; only the main process writes."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from refstore.errors import ConfigError
from refstore.executors import (
    DaskExecutor,
    PoolExecutor,
    choose_executor,
    open_executor,
    virtualize_all,
)
from refstore.models import Failure, Granule
from refstore.sources.local import LocalSource
from refstore.synthetic import write_ccmp_like_series
from refstore.virtualize import DatasetSpec, VirtualGranule

SPEC = DatasetSpec(concat_dim="time")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five tiny CCMP-like granules and one file that is not HDF5."""
    path = tmp_path_factory.mktemp("granules")
    write_ccmp_like_series(path, datetime(2024, 1, 1), 5, nlat=8, nlon=16)
    (path / "CCMP_Wind_Analysis_20240106_V03.1_L4.nc").write_bytes(b"not a netcdf file at all")
    return path


@pytest.fixture(scope="module")
def granules(folder: Path) -> list[Granule]:
    return list(LocalSource(str(folder)).discover())


@pytest.fixture(scope="module")
def serial(folder: Path, granules: list[Granule]) -> list[object]:
    return list(virtualize_all(granules, SPEC, LocalSource(str(folder)), executor="serial"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        host="127.0.0.1",
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    ) as c:
        yield str(c.scheduler_address)


def _summary(results: list[object]) -> list[tuple[str, str, str | None, str | None]]:
    out = []
    for r in results:
        if isinstance(r, VirtualGranule):
            out.append((r.granule.key, "ok", r.start, r.end))
        else:
            assert isinstance(r, Failure)
            out.append((r.key, "failed", r.reason.split(":")[0], None))
    return out


def test_serial_results_in_order_with_a_failure_as_value(
    granules: list[Granule], serial: list[object]
) -> None:
    assert [s[0] for s in _summary(serial)] == [g.key for g in granules]
    kinds = [s[1] for s in _summary(serial)]
    assert kinds == ["ok"] * 5 + ["failed"]
    assert _summary(serial)[0][2:] == ("2024-01-01T00:00:00", "2024-01-01T18:00:00")


def test_pool_equals_serial_and_reports_each_granule(
    folder: Path, granules: list[Granule], serial: list[object]
) -> None:
    seen: list[str] = []
    with open_executor("processes", len(granules), workers=2) as ex:
        assert isinstance(ex, PoolExecutor)
        first = ex.map(
            granules,
            SPEC,
            LocalSource(str(folder)),
            lambda r: seen.append(r.key if isinstance(r, Failure) else r.granule.key),
        )
        pool = ex._pool
        # The pool lives across batches: a second batch reuses the same workers.
        second = ex.map(granules[:2], SPEC, LocalSource(str(folder)), lambda _r: None)
        assert ex._pool is pool
    assert _summary(first) == _summary(serial)
    assert _summary(second) == _summary(serial)[:2]
    assert sorted(seen) == sorted(g.key for g in granules)
    ok = [r for r in first if isinstance(r, VirtualGranule)]
    ref = [r for r in serial if isinstance(r, VirtualGranule)]
    assert [r.signature for r in ok] == [r.signature for r in ref]
    assert ok[0].dataset["uwnd"].data.manifest == ref[0].dataset["uwnd"].data.manifest


def test_dask_cluster_on_loopback_equals_serial(
    cluster: str, folder: Path, granules: list[Granule], serial: list[object]
) -> None:
    assert cluster.startswith("tcp://127.0.0.1:")
    seen: list[object] = []
    with open_executor("auto", len(granules), dask_address=cluster) as ex:
        assert isinstance(ex, DaskExecutor)
        results = ex.map(granules, SPEC, LocalSource(str(folder)), seen.append)
    assert _summary(results) == _summary(serial)
    assert len(seen) == len(granules)


def test_sync_through_dask_address_commits_everything(
    cluster: str, make_config, arrive, ccmp_archive
) -> None:
    from refstore.api import open_dataset
    from refstore.sync import sync

    arrive(*ccmp_archive(6, nlat=8, nlon=16))
    config = make_config().replace(executor="dask", dask_address=cluster, batch_size=4)
    ticks: list[object] = []
    result = sync(config, progress=lambda total, label: ticks.append)
    assert len(result.added) == 6
    assert len(result.snapshots) == 2  # batches of 4 + 2: one commit each
    assert len(ticks) == 6
    assert open_dataset(config).sizes["time"] == 24


def test_unreachable_scheduler_is_a_config_error_with_hint(
    folder: Path, granules: list[Granule]
) -> None:
    with socket.socket() as s:  # a port on loopback that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = DaskExecutor(f"tcp://127.0.0.1:{port}", None, timeout="1s")
    with pytest.raises(ConfigError) as info, ex:
        ex.map(granules[:1], SPEC, LocalSource(str(folder)), lambda _r: None)
    assert "dask scheduler" in info.value.message
    assert "--dask-address" in info.value.hint


def test_choose_executor() -> None:
    assert choose_executor("auto", 2, None) == "serial"
    assert choose_executor("auto", 100, 1) == "serial"
    assert choose_executor("auto", 100, 2) == "processes"
    assert choose_executor("auto", 2, None, "tcp://127.0.0.1:8786") == "dask"
    assert choose_executor("serial", 100, 2, "tcp://127.0.0.1:8786") == "serial"
    with pytest.raises(ConfigError):
        open_executor("threads", 10)


class _PoisonRegistry:
    """Kills the worker process (as an OOM or a crash in libhdf5 would) on one URL."""

    def __init__(self, inner: Any, poison: str) -> None:
        self.inner, self.poison = inner, poison

    def resolve(self, url: str) -> Any:
        if self.poison in url:
            os._exit(3)
        return self.inner.resolve(url)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass(frozen=True, slots=True)
class _PoisonSource(LocalSource):
    poison: str = ""

    def registry(self) -> Any:
        return _PoisonRegistry(LocalSource.registry(self), self.poison)


def test_a_dying_worker_fails_its_granule_and_the_pool_recovers(
    folder: Path, granules: list[Granule], serial: list[object]
) -> None:
    poison = granules[2].key
    source = _PoisonSource(str(folder), poison=poison)
    with open_executor("processes", len(granules), workers=2) as pool:
        first = virtualize_all(granules, SPEC, source, executor=pool)
        # the next batch on the same executor runs on a fresh pool
        second = virtualize_all(granules[:2], SPEC, LocalSource(str(folder)), executor=pool)
    dead = first[2]
    assert isinstance(dead, Failure) and "worker process died reading it alone" in dead.reason
    assert dead.reason.startswith(poison)
    # Every innocent granule lands, however many were in flight when the pool broke
    # (twice: the poison is resubmitted once with them, then each suspect is read alone).
    innocent = [r for i, r in enumerate(first) if i != 2]
    assert _summary(innocent) == _summary([r for i, r in enumerate(serial) if i != 2])
    assert _summary(second) == _summary(serial[:2])


_UNGUARDED = """
import refstore
from refstore.config import load_config

# No `if __name__ == "__main__":` guard: Python re-runs this in every pool worker.
config = load_config("refstore.toml", overrides={"executor": "processes", "workers": 2})
print("added", len(refstore.sync(config).added))
"""


def _run_script(path: Path) -> Any:
    """Run a Python script as a user would (its own interpreter, cwd its folder)."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    return subprocess.run(
        [sys.executable, path.name],
        cwd=path.parent,
        env=cli_env(),
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )


def test_a_script_without_a_main_guard_gets_the_cause_not_a_quarantine(
    make_config, arrive, ccmp_archive, tmp_path: Path
) -> None:
    from refstore.ledger import Ledger

    config = make_config()
    arrive(*ccmp_archive(3))
    (tmp_path / "unguarded.py").write_text(_UNGUARDED)
    proc = _run_script(tmp_path / "unguarded.py")
    assert proc.returncode != 0
    assert "worker processes could not start" in proc.stderr
    assert '__name__ == "__main__"' in proc.stderr
    # Nothing was blamed on the granules: they are all still to do.
    ledger = Ledger(config.ledger, readonly=True)
    try:
        assert not [r for r in ledger.iter_rows() if str(r.status) == "quarantined"]
    finally:
        ledger.close()
    # The guarded script lands them all.
    guarded = "def main():\n" + "".join(f"    {line}\n" for line in _UNGUARDED.splitlines())
    (tmp_path / "guarded.py").write_text(guarded + 'if __name__ == "__main__":\n    main()\n')
    proc = _run_script(tmp_path / "guarded.py")
    assert proc.returncode == 0, proc.stderr
    assert "added 3" in proc.stdout
