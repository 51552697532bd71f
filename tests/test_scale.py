"""Scale: batches of bounded size with one commit each, a crash loses at most one batch,
no-op syncs touch nothing, and the export grows by the new references only while
holding exactly what a full export holds."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from refstore.api import open_dataset, open_export, open_store
from refstore.export_incremental import plan_records
from refstore.ledger import Ledger
from refstore.models import Status
from refstore.sync import EXPORTED, sync
from tests.conftest import run_cli

GRID = {"nlat": 8, "nlon": 16}


def _refs(path: Path) -> dict[str, Any]:
    """Every key of a kerchunk Parquet export with its reference or metadata."""
    from fsspec.implementations.reference import LazyReferenceMapper

    mapper = LazyReferenceMapper(str(path))
    # JSON text, so that a NaN fill value compares equal to itself.
    out: dict[str, Any] = {k: json.dumps(v, sort_keys=True) for k, v in mapper.zmetadata.items()}
    for key, zarray in mapper.zmetadata.items():
        if not key.endswith("/.zarray"):
            continue
        name = key.removesuffix("/.zarray")
        grid = [math.ceil(s / c) for s, c in zip(zarray["shape"], zarray["chunks"], strict=True)]
        for idx in np.ndindex(*(grid or [1])):
            chunk = f"{name}/{'.'.join(map(str, idx)) or '0'}"
            try:
                value = mapper[chunk]
            except KeyError:
                value = None
            out[chunk] = value.tobytes() if hasattr(value, "tobytes") else value
    return out


def _full_export(config: Any, tmp_path: Path) -> Path:
    from refstore.api import open_store
    from refstore.export import build_refs, write_export
    from refstore.sources import source_for

    store = open_store(config)
    session = store.repo.readonly_session(snapshot_id=store.head_snapshot())
    refs = build_refs(session, source_for(config).registry(), store.native_chunks_prefix)
    return write_export(refs, tmp_path / "full" / "refs.parquet", "parquet")


def test_incremental_export_equals_full_export(make_config, arrive, ccmp_archive, tmp_path):
    files = ccmp_archive(7, **GRID)
    config = make_config()
    arrive(*files[:3])
    sync(config)
    first_version = os.readlink(config.export)
    arrive(*files[3:6])
    result = sync(config)
    assert len(result.added) == 3 and "export" in result.timings
    second_version = os.readlink(config.export)
    assert second_version != first_version
    # Untouched record files are hard links to the previous version, not rewritten.
    lat = Path(config.export).parent / second_version / "latitude" / "refs.0.parq"
    assert lat.stat().st_nlink == 2
    arrive(files[6])
    sync(config)
    ledger = Ledger(config.ledger)
    head = open_store(config).head_snapshot()
    assert ledger.get_meta(EXPORTED) == head
    ledger.close()
    assert _refs(Path(config.export)) == _refs(_full_export(config, tmp_path))
    exported = open_export(config.export).load()
    stored = open_dataset(config).load()
    assert exported.sizes["time"] == 28
    for name in ("time", "uwnd", "ws", "latitude"):
        np.testing.assert_array_equal(exported[name].values, stored[name].values)
    assert exported.attrs == stored.attrs


def test_export_behind_falls_back_to_full(make_config, arrive, ccmp_archive):
    files = ccmp_archive(4, **GRID)
    config = make_config()
    arrive(*files[:2])
    sync(config)
    ledger = Ledger(config.ledger)
    ledger.set_meta(EXPORTED, "SOMETHING-ELSE")  # as if the last export had crashed
    ledger.close()
    arrive(*files[2:])
    result = sync(config)
    assert result.export == config.export  # rewritten in full at the end of the run
    assert open_export(config.export).sizes["time"] == 16


def test_batches_commit_once_each_and_noop_touches_nothing(make_config, arrive, ccmp_archive):
    arrive(*ccmp_archive(5, **GRID))
    config = make_config(batch_size=2, executor="serial")
    result = sync(config)
    assert len(result.snapshots) == 3 and len(result.added) == 5
    version = os.readlink(config.export)
    mtime = (Path(config.export) / ".zmetadata").stat().st_mtime_ns
    again = sync(config)
    assert again.up_to_date and not again.snapshots and again.export is None
    assert os.readlink(config.export) == version
    assert (Path(config.export) / ".zmetadata").stat().st_mtime_ns == mtime


def test_crash_loses_at_most_one_batch_and_next_run_continues(
    make_config, arrive, ccmp_archive, tmp_path
):
    arrive(*ccmp_archive(5, **GRID))
    config = make_config(batch_size=2, executor="serial")
    # Killed right after the first batch's commit, before its ledger update.
    proc = run_cli(
        "sync", "--no-progress", cwd=tmp_path, check=False, env={"REFSTORE_FAULT": "after-commit"}
    )
    assert proc.returncode != 0
    result = sync(config)
    assert len(result.added) == 3  # the first batch survived in the repository
    ledger = Ledger(config.ledger)
    assert ledger.counts() == {str(Status.COMMITTED): 5}
    ledger.close()
    assert open_dataset(config).sizes["time"] == 20


def test_cli_batch_size_flag(make_config, arrive, ccmp_archive, tmp_path):
    arrive(*ccmp_archive(3, **GRID))
    make_config()
    proc = run_cli("sync", "--batch-size", "1", "--executor", "serial", "--json", cwd=tmp_path)
    assert len(json.loads(proc.stdout)["snapshots"]) == 3


@pytest.mark.parametrize(
    ("shape", "chunks", "old", "record", "expected"),
    [
        ((8, 2, 4), (1, 2, 4), 4, 100, (4, 8, [0])),
        ((8, 2, 4), (1, 1, 2), 4, 10, (16, 32, [1, 2, 3])),
        ((8,), (4,), 4, 1, (1, 2, [1])),
        ((8,), (4,), 6, 10, None),  # the old length splits a chunk: not a pure append
    ],
)
def test_plan_records(shape, chunks, old, record, expected) -> None:
    assert plan_records(shape, chunks, old, record) == expected
