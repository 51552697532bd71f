"""A one-granule commit costs what it changed, not the store's size (issue 12).

Measured with Icechunk 2.3 (docs/benchmarks.md): the per-manifest zstd URL dictionary
Icechunk trains for any manifest of 1,000 references or more made each +1 commit on a
1,000-granule store 12x slower, for no smaller manifest. The settings refstore opens
every repository with turn it off and fetch the changed manifests concurrently.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

import refstore
import refstore.export
from refstore.api import open_store
from refstore.storage import COMMIT_MANIFEST_FETCHES, PRELOAD_REFS, URL_DICTIONARY_MIN_REFS
from refstore.synthetic import write_ccmp_like_series
from tests.conftest import MakeConfig
from tests.helpers import assert_same_values, direct_read


def test_every_repository_is_opened_with_the_commit_cost_settings(
    make_config: MakeConfig, incoming: Path
) -> None:
    write_ccmp_like_series(incoming, datetime(2024, 1, 1), 2, nlat=8, nlon=16)
    config = make_config().replace(coord_chunk=8)
    refstore.sync(config)
    write_ccmp_like_series(incoming, datetime(2024, 1, 3), 1, nlat=8, nlon=16)
    assert len(refstore.sync(config).added) == 1  # an append through the same settings
    manifest = open_store(config).repo.config.manifest
    compression = manifest.virtual_chunk_location_compression
    assert compression is not None and compression.min_num_chunks == URL_DICTIONARY_MIN_REFS
    assert manifest.max_concurrent_manifest_fetches_during_commit == COMMIT_MANIFEST_FETCHES
    assert manifest.preload is not None and manifest.preload.max_total_refs == PRELOAD_REFS
    # The saved splitting (one manifest per 8 steps, fixed at creation) is kept.
    assert manifest.splitting is not None and "8" in repr(manifest.splitting.split_sizes)


def test_appends_across_parquet_record_files_read_back_equal(
    make_config: MakeConfig, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's record files are bounded (an append rewrites one, not a growing
    one); appends that cross from one record file into the next read back exact."""
    monkeypatch.setattr(refstore.export, "RECORD_SIZE", 6)  # 1.5 granules of 4 steps
    files = write_ccmp_like_series(incoming, datetime(2024, 1, 1), 2, nlat=8, nlon=16)
    config = make_config()
    refstore.sync(config)
    for day in (3, 4, 5):  # each +1 takes the incremental path (timed as "export")
        files += write_ccmp_like_series(incoming, datetime(2024, 1, day), 1, nlat=8, nlon=16)
        result = refstore.sync(config)
        assert len(result.added) == 1 and "export" in result.timings
        exported = refstore.open_dataset(config, source="export").load()
        assert_same_values(exported, direct_read(files))
    folder = Path(config.export).resolve()
    records = {p.name for p in folder.glob("uwnd/refs.*.parq")}
    assert len(records) >= 3, records
    # Incremental, not a full rewrite: the untouched first record is a hard link.
    assert (folder / "uwnd" / "refs.0.parq").stat().st_nlink >= 2
