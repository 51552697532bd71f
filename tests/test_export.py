"""The kerchunk export: pure ref fixes, and atomic publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import refstore
from refstore.errors import StoreError
from refstore.export import fix_fill_values, fix_scalar_keys, write_export
from tests.conftest import GAMSSA


def test_scalar_chunk_key_and_fill_value_fixes() -> None:
    refs = {
        "version": 1,
        "refs": {
            "crs/.zarray": json.dumps({"fill_value": -2147483647, "shape": []}),
            "crs/.zattrs": json.dumps({"grid_mapping_name": "latitude_longitude"}),
            "crs/": "base64:AQAAAA==",
            "sst/.zarray": json.dumps({"fill_value": -32768}),
            "sst/.zattrs": json.dumps({"_FillValue": -32768}),
        },
    }
    fixed = fix_fill_values(fix_scalar_keys(refs))["refs"]
    assert "crs/0" in fixed and "crs/" not in fixed
    assert json.loads(fixed["crs/.zarray"])["fill_value"] is None
    assert json.loads(fixed["sst/.zarray"])["fill_value"] == -32768


def test_failed_export_leaves_previous_one(make_config, arrive) -> None:
    config = make_config()
    arrive(GAMSSA[0])
    refstore.sync(config)
    before = refstore.open_dataset(config, source="export").load()
    with pytest.raises(Exception):  # noqa: B017 - any failure of the writer will do
        write_export({"version": 1, "refs": {"x/0": ["f", 0]}}, config.export)
    after = refstore.open_dataset(config, source="export").load()
    assert before.identical(after)
    assert not list(Path(config.export).parent.glob(".refs.parquet.link-*"))


def test_unknown_format_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="Unknown export format"):
        write_export({"version": 1, "refs": {}}, tmp_path / "x", "zip")
