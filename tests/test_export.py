"""The kerchunk export: pure ref fixes, and atomic publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import refstore
from refstore.errors import StoreError
from refstore.export import fix_fill_values, fix_scalar_keys, write_export
from tests.conftest import GAMSSA


def _zarray(dtype: str, fill: object, shape: list[int], chunks: list[int]) -> str:
    return json.dumps(
        {
            "shape": shape,
            "chunks": chunks,
            "dtype": dtype,
            "fill_value": fill,
            "order": "C",
            "filters": [{"id": "zlib", "level": 4}],
            "compressor": None,
            "zarr_format": 2,
        }
    )


def test_scalar_chunk_key_and_fill_value_fixes() -> None:
    refs = {
        "version": 1,
        "refs": {
            "crs/.zarray": _zarray("<i4", -2147483647, [], []),
            "crs/.zattrs": json.dumps({"grid_mapping_name": "latitude_longitude"}),
            "crs/": "base64:AQAAAA==",
            # GHRSST L4: HDF5 storage fill -32767, CF _FillValue -32768.
            "sst/.zarray": _zarray("<i2", -32767, [2, 4], [1, 4]),
            "sst/.zattrs": json.dumps({"_FillValue": -32768}),
            "sst/0.0": ["f.nc", 0, 10],
            "sst/1.0": ["f.nc", 10, 10],
        },
    }
    fixed = fix_fill_values(fix_scalar_keys(refs))["refs"]
    assert "crs/0" in fixed and "crs/" not in fixed
    assert json.loads(fixed["crs/.zarray"])["fill_value"] is None
    assert json.loads(fixed["sst/.zarray"])["fill_value"] == -32768  # the CF fill masks
    assert json.loads(fixed["sst/.zattrs"])["_FillValue"] == -32768


def test_float_cf_fill_from_base64_and_unwritten_chunks_keep_the_storage_fill() -> None:
    import base64
    import struct
    import zlib

    import numpy as np

    # GPM IMERG: HDF5 storage fill 0.0, CF _FillValue -9999.9 (base64 in zarr v3 attrs).
    cf = float(np.float32(-9999.9))
    refs = {
        "version": 1,
        "refs": {
            "p/.zarray": _zarray("<f4", 0.0, [2, 3], [1, 3]),
            "p/.zattrs": json.dumps(
                {"_FillValue": base64.b64encode(struct.pack("<d", cf)).decode()}
            ),
            "p/0.0": ["f.nc", 0, 10],  # chunk 1.0 was never written in the file
        },
    }
    fixed = fix_fill_values(refs)["refs"]
    assert json.loads(fixed["p/.zarray"])["fill_value"] == cf
    assert json.loads(fixed["p/.zattrs"])["_FillValue"] == cf
    inline = fixed["p/1.0"]
    assert inline.startswith("base64:")
    chunk = np.frombuffer(zlib.decompress(base64.b64decode(inline[7:])), "<f4")
    assert chunk.tolist() == [0.0, 0.0, 0.0]  # what the file's reader gives there
    assert fixed["p/0.0"] == ["f.nc", 0, 10]


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
