"""Whole hierarchies (issue 10): ``[dataset] group = "*"`` (or a list) keeps every group
of the files as one Zarr hierarchy in one store, ordered by the root's coordinate.

Real netCDF4 granules written by h5netcdf (tests/granule_factory.tempo_like_granule with
``static=True``: root ``mirror_step``, ``product/``, ``geolocation/``, ``support_data/``
along it, ``instrument/`` without it), real Icechunk repositories and ledgers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import refstore
from refstore.config import load_config, render_toml
from refstore.errors import ConfigError, LayoutError
from refstore.hierarchy import flatten, parse_groups, split
from refstore.verify import verify
from tests.conftest import run_cli
from tests.granule_factory import tempo_like_granule
from tests.helpers import group_read

ALONG = ("product", "geolocation", "support_data")


def test_group_setting_accepts_a_star_or_a_list(tmp_path: Path) -> None:
    assert parse_groups("product") == "product"
    assert parse_groups(("/product/", "geolocation")) == ("product", "geolocation")
    for bad in ((), ("product", "product"), ("*",), ("",)):
        with pytest.raises(ConfigError):
            parse_groups(bad)
    path = tmp_path / "refstore.toml"
    keys = set()
    for group in ("*", ("product", "geolocation"), "product", ""):
        path.write_text(render_toml(source_url="in", concat_dim="mirror_step", group=group))
        config = load_config(path, environ={})
        assert config.group == group
        keys.add(config.group_key)
    assert len(keys) == 4  # each in the settings' fingerprint, apart
    star = load_config(path, environ={"REFSTORE_DATASET_GROUP": "*"})
    assert star.hierarchy == ("*",) and star.single_group == ""
    listed = load_config(path, environ={"REFSTORE_DATASET_GROUP": "product,geolocation"})
    assert listed.hierarchy == ("product", "geolocation")


def test_concat_from_var_needs_a_name() -> None:
    from refstore.concat_from import parse_concat_from

    assert parse_concat_from("var:time").order_by("mirror_step") == "time"
    assert parse_concat_from("auto").order_by("mirror_step") == "mirror_step"
    for bad in ("var", "var:", "var: "):
        with pytest.raises(ConfigError, match="needs a name"):
            parse_concat_from(bad)


def test_flatten_and_split_are_inverse() -> None:
    step = xr.Variable(("t",), np.arange(3))
    root = xr.Dataset({"t": step}, attrs={"a": 1})
    product = xr.Dataset({"x": (("t", "k"), np.ones((3, 2)))}, coords={"t": step})
    static = xr.Dataset({"w": (("band",), np.arange(2.0))})
    flat = flatten({"": root, "product": product, "instrument": static}, "t", "g.nc")
    assert sorted(map(str, flat.variables)) == ["instrument/w", "product/x", "t"]
    parts = split(flat, "t")
    assert parts["product"].identical(product)
    assert parts["instrument"].identical(static)
    assert parts[""].identical(root)
    other = product.assign_coords(t=step + 1)  # a group's own, different coordinate
    with pytest.raises(refstore.GranuleError, match="its own 't'"):
        flatten({"": root, "product": other}, "t", "g.nc")


def _assert_groups_served(config: Any, paths: list[Path], at: str | None = None) -> None:
    """Every group reads back as the files' groups: decoded and raw values, NaN mask,
    dtype (the fidelity rule, group by group)."""
    for group in ALONG:
        for kwargs in ({}, {"mask_and_scale": False, "decode_times": False}):
            served = refstore.open_dataset(config, at=at, group=group, **kwargs).load()
            expected = group_read(paths, group, **kwargs)
            assert served.sizes == expected.sizes, group
            for name in expected.variables:
                a, e = served[name], expected[name]
                assert a.dims == e.dims and a.dtype == e.dtype, (group, name)
                np.testing.assert_array_equal(a.values, e.values, err_msg=f"{group}/{name}")
    with xr.open_dataset(paths[0], engine="h5netcdf", group="instrument") as static:
        served = refstore.open_dataset(config, at=at, group="instrument").load()
        xr.testing.assert_identical(served.wavelength, static.wavelength.load())


def test_three_groups_land_as_one_hierarchy_sorted_from_shuffled_arrival(  # type: ignore[no-untyped-def]
    make_config,
) -> None:
    config = make_config(concat_dim="mirror_step", group="*")
    incoming = Path(config.source_url)
    # Key order is not time order, and the middle scan arrives last.
    late = tempo_like_granule(incoming / "tempo_a.nc", 600, static=True)
    early = tempo_like_granule(incoming / "tempo_c.nc", 0, static=True)
    first = refstore.sync(config)
    assert sorted(first.added) == ["tempo_a.nc", "tempo_c.nc"], [
        f.reason for f in first.quarantined
    ]
    assert first.export is None  # a hierarchy has no kerchunk export (below)
    middle = tempo_like_granule(incoming / "tempo_b.nc", 300, static=True)
    second = refstore.sync(config)
    assert second.added == ("tempo_b.nc",), [f.reason for f in second.quarantined]
    assert len(second.snapshots) == 1  # every group of the granule in one commit

    files = [early, middle, late]
    _assert_groups_served(config, files)
    tree = refstore.open_datatree(config)
    assert sorted(tree.children) == ["geolocation", "instrument", "product", "support_data"]
    steps = tree["product"].to_dataset().mirror_step.values  # inherited from the root
    assert steps.size == 9 and np.all(steps[1:] > steps[:-1])
    assert tree.attrs["platform"] == "TEMPO-like"
    # Group attributes: kept where every granule agrees, dropped where they differ
    # (title names the file), as for the root's; never left in the root.
    assert tree["product"].attrs == {"summary": "the product group"}, tree["product"].attrs
    assert refstore.open_dataset(config, group="geolocation").attrs == {
        "summary": "the geolocation group"
    }
    assert not any("summary" in k or "title" in k for k in tree.attrs), tree.attrs
    # Time travel: the first commit, before the middle scan.
    _assert_groups_served(config, [early, late], at=first.snapshots[-1])

    report = verify(config, sample=12, seed=4)
    assert report.ok and report.chunks_checked == 12, report.to_dict()
    with pytest.raises(LayoutError, match="hierarchy of groups"):
        refstore.open_dataset(config, source="export")
    with pytest.raises(refstore.NotFoundError, match="no group 'nope'"):
        refstore.open_dataset(config, group="nope")


def test_a_revised_granule_is_replaced_in_every_group(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(concat_dim="mirror_step", group=["product", "instrument"])
    incoming = Path(config.source_url)
    files = [tempo_like_granule(incoming / f"t{s:04d}.nc", s, static=True) for s in (0, 300, 600)]
    before = refstore.sync(config).snapshots[-1]
    old = refstore.open_dataset(config, group="product").no2.load()
    tempo_like_granule(files[1], 300, static=True, seed=99)  # new values, same scan times
    result = refstore.sync(config)
    assert result.added == (files[1].name,), [f.reason for f in result.quarantined]
    tree = refstore.open_datatree(config)
    assert sorted(tree.children) == ["instrument", "product"]  # the listed groups only
    for group in ("product",):
        served = refstore.open_dataset(config, group=group).load()
        expected = group_read(files, group)
        np.testing.assert_array_equal(served.no2.values, expected.no2.values)
    assert not np.array_equal(served.no2.values[3:6], old.values[3:6], equal_nan=True)
    # Time travel: the snapshot before the revision, its unrevised granules (the revised
    # file was rewritten in place: its old bytes are gone).
    then = refstore.open_dataset(config, at=before, group="product").no2
    xr.testing.assert_identical(
        then.isel(mirror_step=[0, 1, 2, 6, 7, 8]).load(), old[[0, 1, 2, 6, 7, 8]]
    )
    report = verify(config, sample=6, seed=1)
    assert report.ok, report.to_dict()


def test_a_changed_static_group_or_a_missing_group_is_quarantined(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(concat_dim="mirror_step", group=["product", "instrument"])
    incoming = Path(config.source_url)
    tempo_like_granule(incoming / "t0.nc", 0, static=True)
    refstore.sync(config)
    shifted = tempo_like_granule(incoming / "t300.nc", 300, static=True)
    import h5py

    with h5py.File(shifted, "r+") as f:
        f["instrument/wavelength"][0] = 291.0
    tempo_like_granule(incoming / "t600.nc", 600)  # no instrument/ group
    result = refstore.sync(config)
    reasons = {f.key: f.reason for f in result.quarantined}
    assert result.added == (), reasons
    assert "instrument/wavelength" in reasons["t300.nc"], reasons
    assert "has no group 'instrument'" in reasons["t600.nc"], reasons
    assert refstore.open_dataset(config, group="product").sizes["mirror_step"] == 3


def test_hierarchy_through_the_cli(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (tmp_path / "refstore.toml").write_text(
        render_toml(source_url="incoming", concat_dim="mirror_step", group="*")
    )
    for s in (600, 0):
        tempo_like_granule(incoming / f"t{s}.nc", s, static=True)
    synced = run_cli("sync", cwd=tmp_path)
    assert "export skipped" in synced.stderr + synced.stdout
    export = run_cli("export", "-o", str(tmp_path / "x.parquet"), cwd=tmp_path, check=False)
    assert export.returncode == 5, export.stderr
    assert "hierarchy of groups" in export.stderr and "open_datatree" in export.stderr
    assert not (tmp_path / "x.parquet").exists()  # never a wrong export
    published = run_cli("publish", cwd=tmp_path, check=False)
    assert published.returncode == 5 and "open_datatree" in published.stderr, published.stderr
    run_cli("verify", cwd=tmp_path)  # the store checks out, nothing half-published
    shutil.rmtree(incoming)


def test_init_writes_a_list_of_groups(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    args = ("--source", "incoming", "--concat-dim", "mirror_step", "--concat-from", "var:time")
    run_cli("init", *args, "--group", "product, geolocation", cwd=tmp_path)
    text = (tmp_path / "refstore.toml").read_text()
    assert 'group = ["product", "geolocation"]' in text and 'concat_from = "var:time"' in text
    config = load_config(tmp_path / "refstore.toml", environ={})
    assert config.hierarchy == ("product", "geolocation")


class _Local:
    def registry(self) -> Any:
        from obspec_utils.registry import ObjectStoreRegistry
        from obstore.store import LocalStore

        return ObjectStoreRegistry({"file://": LocalStore()})


def test_readback_checks_each_group_against_the_files_group(tmp_path: Path) -> None:
    """References of a group that read back wrong (here ``product/no2`` pointing at
    ``support_data/sza``'s chunks) quarantine the granule, naming group and variable."""
    from dataclasses import replace

    from refstore.models import Granule
    from refstore.readback import readback
    from refstore.virtualize import DatasetSpec, VirtualGranule, virtualize_granule

    path = tempo_like_granule(tmp_path / "t.nc", 0, static=True)
    granule = Granule("t.nc", f"file://{path}", "r", size=path.stat().st_size)
    spec = DatasetSpec("mirror_step", groups=("*",))
    vg = virtualize_granule(granule, spec, _Local())
    assert isinstance(vg, VirtualGranule), vg
    assert readback(vg, _Local().registry(), "hdf5", "", "mirror_step") is None
    ds = vg.dataset.copy()
    ds["product/no2"] = ds["support_data/sza"].copy()
    ds["product/no2"].attrs = vg.dataset["product/no2"].attrs
    problem = readback(replace(vg, dataset=ds), _Local().registry(), "hdf5", "", "mirror_step")
    assert problem is not None and problem.startswith("group 'product': no2:"), problem


def test_a_hierarchy_is_built_from_the_file_even_with_a_sidecar(make_config) -> None:  # type: ignore[no-untyped-def]
    """A DMR++ sidecar describes what its writer chose (here the root only): a hierarchy
    is parsed from the file, every group present. Settings it cannot honour are refused."""
    from tests.dmrpp_writer import write_dmrpp

    config = make_config(concat_dim="mirror_step", group="*")
    assert config.dmrpp == "auto"
    incoming = Path(config.source_url)
    files = [tempo_like_granule(incoming / f"t{s}.nc", s, static=True) for s in (0, 300)]
    for f in files:
        write_dmrpp(f)
    result = refstore.sync(config)
    assert len(result.added) == 2, [f.reason for f in result.quarantined]
    assert sorted(refstore.open_datatree(config).children) == [
        "geolocation",
        "instrument",
        "product",
        "support_data",
    ]
    # Virtualized alone (no cross-check with the file behind it): from the file.
    from refstore.models import Granule
    from refstore.virtualize import DatasetSpec, VirtualGranule, virtualize_granule

    granule = Granule("t0.nc", f"file://{files[0]}", "r", size=files[0].stat().st_size)
    spec = DatasetSpec("mirror_step", groups=("*",), dmrpp="auto")
    vg = virtualize_granule(granule, spec, _Local())
    assert isinstance(vg, VirtualGranule) and vg.origin == "file", vg
    assert "product/no2" in vg.dataset.variables
    for bad in ({"dmrpp": "always"}, {"concat_from": "attr:time_coverage_start"}):
        with pytest.raises(ConfigError, match="a whole hierarchy"):
            config.replace(**bad)


def _time_ordered(paths: list[Path], group: str, **kwargs: Any) -> xr.Dataset:
    """Each file's group (with the root's ``mirror_step`` index and ``time``),
    concatenated in time order."""
    parts = []
    for p in paths:
        with xr.open_dataset(p, engine="h5netcdf", **kwargs) as root:
            scoped = {"mirror_step": root["mirror_step"].load(), "time": root["time"].load()}
        with xr.open_dataset(p, engine="h5netcdf", group=group, **kwargs) as ds:
            parts.append(ds.load().assign_coords(mirror_step=scoped["mirror_step"]))
            parts[-1]["time"] = scoped["time"]
    parts.sort(key=lambda d: float(np.asarray(d["time"].values[0], dtype="f8")))
    return xr.concat(parts, dim="mirror_step", data_vars="minimal", coords="minimal")


@pytest.mark.parametrize("group", ["product", "*"])
def test_tempo_granules_ordered_by_time_along_a_repeating_index(  # type: ignore[no-untyped-def]
    make_config, group
) -> None:
    """Real TEMPO: ``mirror_step`` is 0..131 in every granule, ``time(mirror_step)`` the
    time. ``concat_from = "var:time"`` orders and places granules by ``time``; the index
    reads back as each file holds it (repeating), never renumbered."""
    incoming = Path(make_config().source_url)
    made = {}
    # Scans of 132, 132 and 131 steps; keys in reverse time order, the middle one last.
    for name, start, steps in (("tempo_c.nc", 1e9, 132), ("tempo_a.nc", 1e9 + 2000, 131)):
        made[name] = tempo_like_granule(incoming / name, int(start), steps, index=True)
    # Without the setting the repeating index collides: refused, never mis-stacked.
    plain = make_config(concat_dim="mirror_step", group=group)
    refused = refstore.sync(plain)
    assert len(refused.added) == 1 and len(refused.quarantined) == 1, refused
    shutil.rmtree(Path(plain.repo))
    Path(plain.ledger).unlink()

    config = make_config(concat_dim="mirror_step", group=group, concat_from="var:time")
    first = refstore.sync(config)
    assert sorted(first.added) == ["tempo_a.nc", "tempo_c.nc"], [
        f.reason for f in first.quarantined
    ]
    made["tempo_b.nc"] = tempo_like_granule(
        incoming / "tempo_b.nc", int(1e9 + 1000), 132, index=True
    )
    second = refstore.sync(config)
    assert second.added == ("tempo_b.nc",), [f.reason for f in second.quarantined]
    files = list(made.values())
    for g in ["product", "geolocation"] if group == "*" else ["product"]:
        for kwargs in ({}, {"mask_and_scale": False, "decode_times": False}):
            if group == "*":
                served = refstore.open_dataset(config, group=g, **kwargs).load()
                served["time"] = refstore.open_dataset(config, **kwargs)["time"].load()
            else:
                served = refstore.open_dataset(config, **kwargs).load()
            expected = _time_ordered(files, g, **kwargs)
            assert served.sizes["mirror_step"] == 395
            for name in expected.variables:
                a, e = served[name], expected[name]
                assert a.dims == e.dims and a.dtype == e.dtype, (g, name)
                np.testing.assert_array_equal(a.values, e.values, err_msg=f"{g}/{name}")
    if group == "*":  # the root's time is the root's: not copied into each group
        assert "time" not in refstore.open_dataset(config, group="product").variables
    served = refstore.open_dataset(config)
    assert list(served.mirror_step.values[:3]) == [0, 1, 2]
    assert served.mirror_step.values[132] == 0 and served.mirror_step.values[-1] == 130
    times = served.time.values
    assert np.all(times[1:] > times[:-1])
    # A renamed copy of a committed granule carries the same times: a duplicate.
    shutil.copy2(made["tempo_b.nc"], incoming / "tempo_copy.nc")
    dup = refstore.sync(config)
    assert dup.added == () and "duplicate" in dup.quarantined[0].reason, dup
    report = verify(config, sample=8, seed=5)
    assert report.ok, report.to_dict()


def _tree_sidecar(path: Path, group: str) -> None:
    """``<path>.dmrpp`` of the root and ``group`` (as build_dmrpp writes a netCDF4 tree:
    the group's variables name the root's dims by their full path)."""
    from tests.dmrpp_writer import dmrpp_text

    root, inner = dmrpp_text(path), dmrpp_text(path, group)
    element = inner[inner.index("<Group") : inner.rindex("</Group>") + len("</Group>")]
    element = element.replace(f'"/{group}/', '"/')
    Path(f"{path}.dmrpp").write_text(root.replace("</Dataset>", element + "</Dataset>"))


def test_sidecar_built_group_takes_the_parents_coordinate(make_config, caplog) -> None:  # type: ignore[no-untyped-def]
    """``dmrpp = "always"``: the group's sidecar-built granules get the root's coordinate
    from the same sidecar, and land in time order as the file-built ones do."""
    import logging

    config = make_config(concat_dim="mirror_step", group="product").replace(dmrpp="always")
    incoming = Path(config.source_url)
    files = []
    for name, start in (("tempo_b.nc", 300), ("tempo_a.nc", 600), ("tempo_c.nc", 0)):
        files.append(tempo_like_granule(incoming / name, start))
        _tree_sidecar(files[-1], "product")
    with caplog.at_level(logging.INFO, logger="refstore"):
        result = refstore.sync(config)
    assert len(result.added) == 3, [f.reason for f in result.quarantined]
    assert "disagrees" not in caplog.text  # built from the sidecars, not the files
    served = refstore.open_dataset(config).load()
    expected = group_read(sorted(files, reverse=True), "product")  # c (0 s), b, a
    for name in expected.variables:
        np.testing.assert_array_equal(served[name].values, expected[name].values, err_msg=name)


def test_real_s6a_coordinate_below_the_root_is_refused_for_a_hierarchy() -> None:
    """S6A keeps ``time`` in ``data_01``, not in the root: a hierarchy refuses the granule
    naming the group and the one-group setting that works (tests/test_groups.py)."""
    from refstore.models import Failure, Granule
    from refstore.virtualize import DatasetSpec, virtualize_granule
    from tests.conftest import GRANULES

    path = sorted((GRANULES / "s6a_groups").glob("*.nc"))[0]
    granule = Granule(path.name, f"file://{path}", "r", size=path.stat().st_size)
    for groups, named in ((("*",), "data_01"), (("data_01/ku",), "data_01/ku")):
        out = virtualize_granule(granule, DatasetSpec("time", groups=groups), _Local())
        assert isinstance(out, Failure), out
        assert f"group {named!r} has the coordinate 'time'" in out.reason, out.reason
        assert "the root group has none" in out.reason
