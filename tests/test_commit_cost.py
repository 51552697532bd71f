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


def test_commit_metadata_is_fixed_size_and_an_empty_ledger_rebuilds_from_details(
    make_config: MakeConfig, incoming: Path, tmp_path: Path
) -> None:
    """Icechunk 2 keeps every snapshot's metadata in the one object each commit and each
    open reads and rewrites: per-granule lists there made a +1 commit at 100,000 granules
    decode 26 MB. They go to the commit's detail element (refstore.details) instead; the
    history stays the source of truth a new ledger is rebuilt from."""
    import json

    from refstore.ledger import Ledger
    from refstore.store import METADATA_KEY

    files = write_ccmp_like_series(incoming, datetime(2024, 1, 1), 1, nlat=4, nlon=8)
    config = make_config()
    refstore.sync(config)
    files += write_ccmp_like_series(incoming, datetime(2024, 1, 2), 60, nlat=4, nlon=8)
    assert len(refstore.sync(config).added) == 60
    files += write_ccmp_like_series(incoming, datetime(2024, 3, 2), 1, nlat=4, nlon=8)
    assert len(refstore.sync(config).added) == 1
    store = open_store(config)
    sizes = [
        len(json.dumps(info.metadata[METADATA_KEY]))
        for info in store.repo.ancestry(branch="main")
        if METADATA_KEY in (info.metadata or {})
    ]
    assert len(sizes) == 3
    # The 60-granule commit's metadata is the size of the 1-granule ones (a fixed summary;
    # its keys, urls and revisions alone are over 10 KB).
    assert max(sizes) - min(sizes) < 200, sizes
    commits = store.commits()
    assert [c.count for c in commits] == [1, 60, 1]
    assert [len(c.placements) for c in commits] == [1, 60, 1]
    assert [p.key for c in commits for p in c.placements] == [f.name for f in files]
    # A second machine: an empty ledger, the same repository. It learns every placement
    # from the history's details and has nothing to add.
    other = config.replace(ledger=str(tmp_path / "other.db"))
    result = refstore.sync(other)
    assert not result.added and not result.quarantined
    with Ledger(other.ledger, readonly=True) as ledger:
        rows = {k: r for k, r in ledger.rows().items() if r.in_store}
    assert sorted(rows) == sorted(f.name for f in files)
    offsets = sorted(r.offset or 0 for r in rows.values())
    assert offsets == [4 * i for i in range(len(files))]
    assert_same_values(refstore.open_dataset(other).load(), direct_read(files))
