"""DMR++ sidecars: real ones parse; sidecar-built granules equal the file's own parse and
pass the fidelity rule; a wrong sidecar never lands wrong values (issue 13).

End-to-end tests serve real granules of ``tests/data`` with sidecars written by
``tests/dmrpp_writer.py`` from the loopback Range HTTP server (or a local folder) and
sync them into a real Icechunk repository with a real SQLite ledger.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

import refstore
from refstore.config import load_config
from refstore.dmrpp import SidecarError, disagreement, manifest_group
from refstore.models import Granule
from refstore.virtualize import DatasetSpec, VirtualGranule, virtualize_granule
from tests.conftest import GRANULES
from tests.dmrpp_writer import dmrpp_text, write_dmrpp
from tests.helpers import assert_same_values, direct_read
from tests.remote_env import write_config
from tests.servers import RangeHTTPServer

DMRPP = Path(__file__).parent / "data" / "dmrpp"
GAMSSA = sorted((GRANULES / "gamssa").glob("*.nc"))
REAL = [
    ("gamssa/20241011120000-ABOM-L4_GHRSST-SSTfnd-GAMSSA_28km-GLOB-v02.0-fv01.0.nc", ""),
    ("misc/20181231090000-JPL-L4_GHRSST-SSTfnd-MUR25-GLOB-v02.0-fv04.2.nc", ""),
    ("rssmif16d/f16_ssmis_20200102v7.nc", ""),
    ("imerg/GPM_3IMERGHH_bounds.nc4", "Grid"),
    ("misc/OBP_2017_01.nc", ""),  # contiguous datasets, int64 coordinates
]


class _Local:
    def registry(self) -> Any:
        from obspec_utils.registry import ObjectStoreRegistry
        from obstore.store import LocalStore

        return ObjectStoreRegistry({"file://": LocalStore()})


def _granule(path: Path) -> Granule:
    return Granule(path.name, path.resolve().as_uri(), "r1", size=path.stat().st_size)


# -- real sidecars (their granules are not here): parsing only ------------------------------------
def _real(name: str) -> Any:
    text = (DMRPP / name).read_bytes()
    return manifest_group(text, "https://daac.example/" + name.removesuffix(".dmrpp"))


def test_real_mur_sidecar_parses_in_pipeline_order_with_typed_attributes() -> None:
    group = _real("20210715090000-JPL-L4_GHRSST-SSTfnd-MUR-GLOB-v02.0-fv04.1.nc.dmrpp")
    assert set(group.arrays) >= {"analysed_sst", "lat", "lon", "time", "mask"}
    sst = group.arrays["analysed_sst"]
    # The sidecar says compressionType="deflate shuffle"; HDF5 shuffles before deflating.
    names = [c.to_dict()["name"] for c in sst.metadata.codecs]
    assert names == ["bytes", "numcodecs.shuffle", "numcodecs.zlib"]
    assert sst.metadata.shape == (1, 17999, 36000)
    assert sst.manifest.dict()["0.0.0"] == {
        "path": "https://daac.example/20210715090000-JPL-L4_GHRSST-SSTfnd-MUR-GLOB-v02.0-fv04.1.nc",
        "offset": 46696,
        "length": 4083,
    }
    # Typed as the XML says (Float64 here; int16 _FillValue)
    dtypes = sst.metadata.attributes["_refstore_attr_dtypes"]
    assert '"_FillValue": "int16"' in dtypes and '"scale_factor": "float64"' in dtypes


def test_real_modis_and_ssmis_sidecars_parse() -> None:
    modis = _real("20200911000001-JPL-L2P_GHRSST-SSTskin-MODIS_A-N-v02.0-fv01.0.nc.dmrpp")
    wind = modis.arrays["wind_speed"]
    assert wind.manifest.dict()["0.0.0"]["offset"] == 27358005
    assert len(wind.manifest.dict()) == 4
    ssmis = _real("f16_ssmis_20051022v7.nc.dmrpp")
    assert ssmis.arrays["latitude"].manifest.dict()["0"]["length"] == 2880
    assert len(ssmis.arrays) == 8


def test_real_imerg_sidecar_with_an_unreadable_variable_is_refused() -> None:
    # build_dmrpp wrote 'latv' in a form VirtualiZarr cannot read: the parser drops it with
    # a warning; refstore refuses the whole sidecar (the granule falls back to its file).
    with pytest.raises(SidecarError, match="latv"):
        _real("3B-HHR.MS.MRG.3IMERG.20051022-S000000-E002959.0000.V06B.HDF5.dmrpp")


def test_a_group_the_sidecar_lacks_is_refused() -> None:
    text = (DMRPP / "f16_ssmis_20051022v7.nc.dmrpp").read_bytes()
    with pytest.raises(SidecarError, match="No groups"):
        manifest_group(text, "https://daac.example/f.nc", group="Grid")


# -- the writer fixture and the normalization: sidecar == the file's own parse ----------------
@pytest.mark.parametrize(("rel", "group"), REAL, ids=[Path(r).name[:24] for r, _ in REAL])
def test_sidecar_built_granule_equals_the_files_own_parse(
    tmp_path: Path, rel: str, group: str
) -> None:
    path = tmp_path / Path(rel).name
    shutil.copy(GRANULES / rel, path)
    write_dmrpp(path, group)
    spec = DatasetSpec("time", group=group)
    from_sidecar = virtualize_granule(
        _granule(path), DatasetSpec("time", group=group, dmrpp="always"), _Local()
    )
    from_file = virtualize_granule(_granule(path), spec, _Local())
    assert isinstance(from_sidecar, VirtualGranule) and isinstance(from_file, VirtualGranule)
    assert (from_sidecar.origin, from_file.origin) == ("dmrpp", "file")
    assert disagreement(from_sidecar.dataset, from_file.dataset) is None
    assert from_sidecar.signature == from_file.signature


def test_big_endian_values_and_stored_scalars_come_back_through_a_sidecar(
    tmp_path: Path, make_config: Any, incoming: Path
) -> None:
    import h5netcdf
    import numpy as np

    for day in (1, 2):
        with h5netcdf.File(incoming / f"be_{day}.nc", "w") as f:
            f.dimensions = {"time": 2, "x": 3}
            t = f.create_variable("time", ("time",), "i4")
            t[:] = [2 * day, 2 * day + 1]
            t.attrs["units"] = "days since 2000-01-01"
            v = f.create_variable(
                "v", ("time", "x"), np.dtype(">f4"), chunks=(1, 3), compression="gzip"
            )
            v[:] = np.arange(6, dtype=">f4").reshape(2, 3) * day + 0.25
            crs = f.create_variable("crs", (), "i4")  # a stored scalar, as grid mappings are
            crs[()] = 7
        text = write_dmrpp(incoming / f"be_{day}.nc").read_text()
        assert 'byteOrder="BE"' in text
    spec = DatasetSpec("time", dmrpp="always")
    from_sidecar = virtualize_granule(_granule(incoming / "be_1.nc"), spec, _Local())
    from_file = virtualize_granule(_granule(incoming / "be_1.nc"), DatasetSpec("time"), _Local())
    assert isinstance(from_sidecar, VirtualGranule) and isinstance(from_file, VirtualGranule)
    assert disagreement(from_sidecar.dataset, from_file.dataset) is None
    assert int(from_sidecar.dataset["crs"].values) == 7
    config = make_config(executor="serial")
    result = refstore.sync(config)
    assert len(result.added) == 2 and not result.quarantined
    expected = direct_read(sorted(incoming.glob("*.nc")))
    assert_same_values(refstore.open_dataset(config).load(), expected)


def test_writer_lists_every_stored_chunk_with_h5py_offsets(tmp_path: Path) -> None:
    import h5py

    text = dmrpp_text(GAMSSA[0])
    with h5py.File(GAMSSA[0]) as f:
        info = f["analysed_sst"].id.get_chunk_info(0)
    assert (
        f'offset="{info.byte_offset}" nBytes="{info.size}" chunkPositionInArray="[0,0,0]"' in text
    )
    assert 'compressionType="deflate shuffle" deflateLevel="3"' in text
    assert text.count("chunkPositionInArray") == 7  # 7 chunked datasets of one chunk each
    # ... and crs, contiguous: one chunk element without a position
    assert text.count("<dmrpp:chunk offset=") == 8


# -- end to end: granule + sidecar over HTTP, request budget ----------------------------------
def _http_config(folder: Path, urls: list[str], **source: Any) -> Any:
    (folder / "granules.txt").write_text("".join(u + "\n" for u in urls))
    write_config(
        folder, {"source": {"urls_file": "granules.txt", **source}, "sync": {"executor": "serial"}}
    )
    return load_config(folder / "refstore.toml", environ={})


def test_http_sync_from_sidecars_one_sidecar_get_and_no_granule_byte_once_proved(
    tmp_path: Path,
) -> None:
    served = tmp_path / "daac"
    served.mkdir()
    for f in GAMSSA:
        shutil.copy(f, served / f.name)
        write_dmrpp(served / f.name)
    with RangeHTTPServer(served) as srv:
        config = _http_config(tmp_path, [srv.url_for(GAMSSA[0].name)])
        first = refstore.sync(config)
        assert first.added == (GAMSSA[0].name,) and not first.quarantined
        # Day 2 has a known (verified) signature: what does its sync cost the DAAC?
        with (tmp_path / "granules.txt").open("a") as f:
            f.write(srv.url_for(GAMSSA[1].name) + "\n")
        srv.reset_stats()
        second = refstore.sync(config)
        assert second.added == (GAMSSA[1].name,) and not second.quarantined
        sidecar = srv.stats(GAMSSA[1].name + ".dmrpp")
        granule = srv.stats(GAMSSA[1].name)
        assert (sidecar.gets, sidecar.statuses[200]) == (1, 1)
        # Discovery's HEAD and nothing else: day 1 proved (kept in the ledger) that time
        # is the midpoint of the sidecar's coverage and lat/lon what day 1 held when the
        # sidecar describes them alike (refstore.derive).
        assert (granule.heads, granule.gets, granule.bytes_sent) == (1, 0, 0), granule
        expected = direct_read([served / f.name for f in GAMSSA])
        assert_same_values(refstore.open_dataset(config).load(), expected)
        assert_same_values(refstore.open_dataset(config, source="export").load(), expected)


def test_http_without_sidecar_falls_back_in_few_requests(tmp_path: Path) -> None:
    with RangeHTTPServer(GAMSSA[0].parent) as srv:
        config = _http_config(tmp_path, [srv.url_for(f.name) for f in GAMSSA])
        result = refstore.sync(config)
        assert len(result.added) == 2
        day2 = srv.stats(GAMSSA[1].name)
        assert srv.stats(GAMSSA[1].name + ".dmrpp").statuses[404] == 1
        # HEAD at discovery + one 128 KiB head read that holds metadata and coordinates.
        assert (day2.heads, day2.gets) == (1, 1)


def test_always_without_a_sidecar_quarantines(tmp_path: Path) -> None:
    with RangeHTTPServer(GAMSSA[0].parent) as srv:
        config = _http_config(tmp_path, [srv.url_for(GAMSSA[0].name)], dmrpp="always")
        result = refstore.sync(config)
        (failure,) = result.quarantined
        assert "no sidecar at" in failure.reason and failure.reason.endswith(".nc.dmrpp")


# -- planted disagreements: each caught, with the reason -------------------------------------
def _wrong_offset(text: str) -> str:
    # The first chunk of analysed_sst moved by 8 bytes (inside the file: only the
    # cross-check against the file's own parse can see it).
    def shift(m: re.Match[str]) -> str:
        return f'offset="{int(m.group(1)) + 8}"'

    head, rest = text.split('<Int16 name="analysed_sst">', 1)
    return head + '<Int16 name="analysed_sst">' + re.sub(r'offset="(\d+)"', shift, rest, count=1)


def _missing_variable(text: str) -> str:
    return re.sub(r'<Int8 name="mask">.*?</Int8>', "", text, flags=re.S)


def _projection_variable(text: str) -> str:
    # earthaccess #1225: a grid-mapping variable with no stored data and no chunks element.
    projection = (
        '<Int32 name="Projection"><Attribute name="grid_mapping_name" type="String">'
        "<Value>latitude_longitude</Value></Attribute></Int32>"
    )
    return text.replace("</Dataset>", projection + "</Dataset>")


def _past_the_end(text: str) -> str:
    return re.sub(r'offset="(\d+)" nBytes', 'offset="99999999" nBytes', text, count=1)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_wrong_offset, "analysed_sst: chunk 0.0.0 at offset"),
        (_missing_variable, "variable(s) mask missing from the sidecar"),
        (_projection_variable, "variable Projection that could not be parsed"),
        (_past_the_end, "past the end of the file"),
    ],
    ids=["wrong-offset", "missing-variable", "projection-variable", "past-the-end"],
)
def test_a_wrong_sidecar_falls_back_to_the_file_with_the_reason(
    tmp_path: Path,
    make_config: Any,
    incoming: Path,
    caplog: pytest.LogCaptureFixture,
    edit: Any,
    reason: str,
) -> None:
    for f in GAMSSA:
        shutil.copy(f, incoming / f.name)
    write_dmrpp(incoming / GAMSSA[0].name, edit=edit)
    config = make_config(executor="serial")
    with caplog.at_level(logging.INFO, logger="refstore"):
        result = refstore.sync(config)
    assert len(result.added) == 2 and not result.quarantined
    assert reason in caplog.text
    expected = direct_read([incoming / f.name for f in GAMSSA])
    assert_same_values(refstore.open_dataset(config).load(), expected)


def test_a_wrong_offset_in_a_later_granule_of_a_verified_signature_past_the_end_is_caught(
    tmp_path: Path, make_config: Any, incoming: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for f in GAMSSA:
        shutil.copy(f, incoming / f.name)
    write_dmrpp(incoming / GAMSSA[0].name)
    write_dmrpp(incoming / GAMSSA[1].name, edit=_past_the_end)
    config = make_config(executor="serial")
    with caplog.at_level(logging.INFO, logger="refstore"):
        result = refstore.sync(config)
    assert len(result.added) == 2
    assert f"{GAMSSA[1].name}: from its own metadata: " in caplog.text
    assert "past the end of the file" in caplog.text
    expected = direct_read([incoming / f.name for f in GAMSSA])
    assert_same_values(refstore.open_dataset(config).load(), expected)
