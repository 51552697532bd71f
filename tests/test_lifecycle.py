"""A granule's whole life through the real CLI (subprocess), on real NetCDF4 granules, a
real Icechunk repository and a real SQLite ledger: revised, broken, fixed, killed
mid-way, deleted, restored; reads that never need the data; clear outcomes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import refstore
from refstore.api import open_store
from refstore.config import load_config, render_toml
from refstore.ledger import Ledger
from refstore.lifecycle import markdown_table
from refstore.models import Status
from refstore.synthetic import write_ccmp_like_series
from tests.conftest import cli_env, run_cli
from tests.helpers import assert_same_values, direct_read

DOCS = Path(__file__).parent.parent / "docs" / "states.md"


def _setup(tmp_path: Path, n: int = 3) -> tuple[list[Path], Path]:
    files = write_ccmp_like_series(tmp_path / "archive", datetime(2024, 1, 1), n, nlat=8, nlon=16)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    text = render_toml(source_url="incoming") + '[sync]\nexecutor = "serial"\n'
    (tmp_path / "refstore.toml").write_text(text)
    for f in files:
        shutil.copy2(f, incoming / f.name)
    run_cli("sync", cwd=tmp_path)
    return files, incoming


def _revision(tmp_path: Path, day: int, seed: int) -> Path:
    (path,) = write_ccmp_like_series(
        tmp_path / f"rev{seed}", datetime(2024, 1, day), 1, nlat=8, nlon=16, seed=seed
    )
    return path


def _replace(dest: Path, data: bytes, mtime: int) -> None:
    """New bytes under the same name; ``mtime`` (seconds before now) makes the revision
    distinct even within one clock tick. In the past: Icechunk takes a reference's
    checksum as its parse time and a later modification time as "changed"."""
    dest.write_bytes(data)
    when = time.time() - mtime
    os.utime(dest, (when, when))


def _head_equals(tmp_path: Path, files: list[Path]) -> None:
    config = load_config(tmp_path / "refstore.toml", environ={})
    expected = direct_read(files)
    head = refstore.open_dataset(config).load()
    assert_same_values(head, expected)
    assert_same_values(refstore.open_dataset(config, source="export").load(), head)


def _reads_answer(tmp_path: Path, verify_ok: bool) -> str:
    """status, log and verify answer without reading the data: 0, 0 and 0/8."""
    status = run_cli("status", cwd=tmp_path, check=False)
    assert status.returncode == 0, status.stderr
    assert run_cli("log", cwd=tmp_path, check=False).returncode == 0
    verify = run_cli("verify", "--sample", "6", "--seed", "1", cwd=tmp_path, check=False)
    assert verify.returncode == (0 if verify_ok else 8), verify.stdout + verify.stderr
    assert "unexpected error" not in status.stderr + verify.stderr
    return status.stdout


def test_broken_then_fixed_revision_lands_in_place(tmp_path: Path) -> None:
    files, incoming = _setup(tmp_path)
    day2 = incoming / files[1].name
    first = open_store(load_config(tmp_path / "refstore.toml", environ={})).head_snapshot()
    _replace(day2, files[1].read_bytes()[:5000], 3000)  # a truncated upload
    proc = run_cli("sync", cwd=tmp_path)
    assert f"quarantined {files[1].name}" in proc.stderr
    out = _reads_answer(tmp_path, verify_ok=False)
    assert f"unavailable steps 4..7 ({files[1].name})" in out and "source changed" in out
    # another broken revision, then the fixed one
    _replace(day2, files[1].read_bytes()[:9000], 2000)
    run_cli("sync", cwd=tmp_path)
    fixed = _revision(tmp_path, 2, seed=7)
    _replace(day2, fixed.read_bytes(), 1000)
    proc = run_cli("sync", "--json", cwd=tmp_path)
    result = json.loads(proc.stdout)
    assert result["added"] == [files[1].name] and result["quarantined"] == []
    _head_equals(tmp_path, [files[0], fixed, files[2]])
    out = _reads_answer(tmp_path, verify_ok=True)
    assert "3 committed" in out and "unavailable" not in out
    # the earlier snapshot still opens what it held (its day-2 bytes are gone upstream)
    config = load_config(tmp_path / "refstore.toml", environ={})
    old = refstore.open_dataset(config, at=first)
    assert old.sizes["time"] == 12
    assert_same_values(old.isel(time=slice(8, 12)).load(), direct_read([files[2]]))
    with Ledger(config.ledger) as ledger:
        events = [h["event"] for h in ledger.history(files[1].name)]
    assert events.count("quarantined") == 2 and events[-2:] == ["superseded", "committed"]


def test_kill_after_virtualization_during_a_replacement(tmp_path: Path) -> None:
    files, incoming = _setup(tmp_path)
    revised = _revision(tmp_path, 2, seed=9)
    _replace(incoming / files[1].name, revised.read_bytes(), 3000)
    killed = run_cli(
        "sync", cwd=tmp_path, env={"REFSTORE_FAULT": "after-virtualization"}, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    proc = run_cli("sync", cwd=tmp_path)
    assert "quarantined" not in proc.stderr and "added 1 granule(s)" in proc.stdout
    _head_equals(tmp_path, [files[0], revised, files[2]])
    assert "up to date" in run_cli("sync", cwd=tmp_path).stdout


def test_deleted_then_restored_unchanged_then_changed(tmp_path: Path) -> None:
    files, incoming = _setup(tmp_path)
    config = load_config(tmp_path / "refstore.toml", environ={})
    day3 = incoming / files[2].name
    day3.unlink()
    proc = run_cli("sync", cwd=tmp_path)
    assert f"missing     {files[2].name}" in proc.stderr
    out = _reads_answer(tmp_path, verify_ok=False)
    assert f"missing     {files[2].name}: gone from the source since" in out
    assert f"unavailable steps 8..11 ({files[2].name}): its source is gone" in out
    head = open_store(config).head_snapshot()
    # restored unchanged: back in the store's view, no new snapshot
    shutil.copy2(files[2], day3)
    assert "up to date" in run_cli("sync", cwd=tmp_path).stdout
    assert open_store(config).head_snapshot() == head
    out = _reads_answer(tmp_path, verify_ok=True)
    assert "missing" not in out and "3 committed" in out
    # deleted again, restored changed: a revision, replaced in place
    day3.unlink()
    run_cli("sync", cwd=tmp_path)
    changed = _revision(tmp_path, 3, seed=11)
    _replace(day3, changed.read_bytes(), 3000)
    assert "added 1 granule(s)" in run_cli("sync", cwd=tmp_path).stdout
    _head_equals(tmp_path, [files[0], files[1], changed])
    with Ledger(config.ledger) as ledger:
        events = [h["event"] for h in ledger.history(files[2].name)]
    assert events.count("missing") == 2 and events.count("returned") == 2


def test_reads_answer_when_the_source_is_unreachable(tmp_path: Path) -> None:
    _setup(tmp_path)
    (tmp_path / "incoming").rename(tmp_path / "gone")
    out = _reads_answer(tmp_path, verify_ok=False)
    assert "3 committed" in out
    proc = run_cli("open", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr


def _need_unshare(why: str) -> None:
    """Skip unless this machine lets us make a private mount namespace (as root)."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip(f"needs `unshare -m` {why}")


def _read_only(tmp_path: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with ``folder`` mounted read-only (a private mount namespace)."""
    script = (
        f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} && "
        f"exec {sys.executable} -m refstore {' '.join(args)}"
    )
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_read_only_state_folder(tmp_path: Path) -> None:
    _need_unshare("to mount a folder read-only")
    _, incoming = _setup(tmp_path, n=2)
    state = tmp_path / "state"
    for args in (("status",), ("log",), ("verify", "--sample", "2")):
        proc = _read_only(tmp_path, state, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    extra = write_ccmp_like_series(tmp_path / "more", datetime(2024, 1, 3), 1, nlat=8, nlon=16)
    shutil.copy2(extra[0], incoming / extra[0].name)
    proc = _read_only(tmp_path, state, "sync")
    assert proc.returncode == 5, proc.stderr
    assert str(state) in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr


def test_taken_tag_is_its_own_error_and_the_data_still_lands(tmp_path: Path) -> None:
    files, incoming = _setup(tmp_path, n=1)
    more = write_ccmp_like_series(tmp_path / "more", datetime(2024, 1, 2), 2, nlat=8, nlon=16)
    shutil.copy2(more[0], incoming / more[0].name)
    run_cli("sync", "--tag", "v1", cwd=tmp_path)
    shutil.copy2(more[1], incoming / more[1].name)
    proc = run_cli("sync", "--tag", "v1", cwd=tmp_path, check=False)
    assert proc.returncode == 9, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and errors[0].startswith("refstore: error: Tag 'v1' exists")
    assert errors[1].startswith("  hint:")
    assert "added 1 granule(s)" in proc.stdout
    _head_equals(tmp_path, [files[0], *more])
    config = load_config(tmp_path / "refstore.toml", environ={})
    with Ledger(config.ledger) as ledger:
        run = ledger.runs()[0]
    assert run["status"] == "ok" and "exists already" in run["error"]
    assert refstore.open_dataset(config, at="v1").sizes["time"] == 8


def test_config_level_problem_then_the_fix_requeues(tmp_path: Path) -> None:
    files = write_ccmp_like_series(tmp_path / "archive", datetime(2024, 1, 1), 3, nlat=8, nlon=16)
    (tmp_path / "incoming").mkdir()
    for f in files:
        shutil.copy2(f, tmp_path / "incoming" / f.name)
    toml = tmp_path / "refstore.toml"
    toml.write_text(render_toml(source_url="incoming", concat_dim="tiem"))
    proc = run_cli("sync", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Every granule of this run (3) was quarantined for the same reason" in proc.stderr
    assert "has no dimension 'tiem'" in proc.stderr
    toml.write_text(render_toml(source_url="incoming", concat_dim="time"))
    proc = run_cli("sync", cwd=tmp_path)
    assert "added 3 granule(s)" in proc.stdout  # no `retry` needed
    _head_equals(tmp_path, files)


def test_no_config_and_init_validates(tmp_path: Path) -> None:
    proc = run_cli("status", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "No refstore.toml here" in proc.stderr
    assert "refstore init" in proc.stderr
    proc = run_cli("init", "--source", "nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "refstore.toml").exists()
    assert not list(tmp_path.glob(".refstore.toml*"))
    (tmp_path / "incoming").mkdir()
    run_cli("init", "--source", "incoming/*.nc", cwd=tmp_path)
    assert (tmp_path / "refstore.toml").exists()


def test_exports_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)  # inherited by the CLI subprocesses
    try:
        _, incoming = _setup(tmp_path, n=1)
        more = write_ccmp_like_series(tmp_path / "more", datetime(2024, 1, 2), 1, nlat=8, nlon=16)
        shutil.copy2(more[0], incoming / more[0].name)
        run_cli("sync", cwd=tmp_path)  # an append: the incremental export
        export = (tmp_path / "state" / "export" / "refs.parquet").resolve()
        assert export.stat().st_mode & 0o777 == 0o755
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in export.rglob("*") if p.is_file())
        run_cli("export", "--format", "json", "-o", "v.json", cwd=tmp_path)
        assert (tmp_path / "v.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_docs_show_the_state_table_of_the_code() -> None:
    assert markdown_table() in DOCS.read_text()
    assert {s.value for s in Status} <= set(DOCS.read_text().split("`"))


def test_status_json_lists_unavailable_steps(tmp_path: Path) -> None:
    files, incoming = _setup(tmp_path, n=2)
    (incoming / files[0].name).unlink()
    run_cli("sync", cwd=tmp_path)
    info = json.loads(run_cli("status", "--json", cwd=tmp_path).stdout)
    assert info["unavailable"][0]["key"] == files[0].name
    assert info["unavailable"][0]["steps"] == [0, 4]
    assert np.isclose(info["length"], 8)


@pytest.mark.parametrize("free_kib", [0, 16, 96])
def test_full_state_folder_is_exit_5_and_loses_nothing(tmp_path: Path, free_kib: int) -> None:
    """The state folder fills up (a 24 MiB tmpfs in a private mount namespace, filled
    up to ``free_kib``: 0 fails at the ledger's open, 16 at its first write, 96 after
    the Icechunk commit): exit 5 naming the folder and "full", no traceback; once space
    is freed the next sync lands (or reconciles) the granule and the store verifies."""
    _need_unshare("to mount a small tmpfs")
    _, incoming = _setup(tmp_path, n=2)
    extra = write_ccmp_like_series(tmp_path / "more", datetime(2024, 1, 3), 1, nlat=8, nlon=16)
    shutil.copy2(extra[0], incoming / extra[0].name)
    state, disk = tmp_path / "state", tmp_path / "disk"
    disk.mkdir()
    cli = f"{sys.executable} -m refstore"
    size = f"{sys.executable} -c 'import refstore; print(refstore.open_dataset().sizes[\"time\"])'"
    script = f"""
        mount -t tmpfs -o size=24m tmpfs {disk} && cp -a {state}/. {disk}/ &&
        mount --bind {disk} {state} || exit 99
        dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null
        [ {free_kib} -gt 0 ] && truncate -s -{free_kib}K {state}/filler
        {cli} sync >{tmp_path}/out1 2>{tmp_path}/err1; echo "full=$?"
        rm {state}/filler
        {cli} sync >{tmp_path}/out2 2>{tmp_path}/err2; echo "freed=$?"
        {cli} verify --sample 3 >{tmp_path}/out3 2>{tmp_path}/err3; echo "verify=$?"
        echo "steps=$({size} 2>/dev/null)"
    """
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    codes = dict(line.split("=") for line in proc.stdout.split())
    err1 = (tmp_path / "err1").read_text()
    assert codes["full"] == "5", err1
    assert str(state) in err1 and "full" in err1 and "hint:" in err1
    assert "Traceback" not in err1 and "unexpected" not in err1 and "deleted" not in err1
    assert codes["freed"] == "0", (tmp_path / "err2").read_text()
    assert codes["verify"] == "0", (tmp_path / "out3").read_text()
    assert codes["steps"] == "12"  # all three granules, none twice
