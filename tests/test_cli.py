"""The real CLI in a subprocess, end to end, and its error contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import GAMSSA, run_cli


def test_cli_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    shutil.copy2(GAMSSA[0], tmp_path / "incoming")
    run_cli("init", "--source", "incoming", cwd=tmp_path)
    assert (tmp_path / "refstore.toml").read_text().startswith("[dataset]")

    first = json.loads(run_cli("sync", "--json", "--tag", "day1", cwd=tmp_path).stdout)
    assert first["added"] == [GAMSSA[0].name] and not first["up_to_date"]
    shutil.copy2(GAMSSA[1], tmp_path / "incoming")
    out = run_cli("sync", cwd=tmp_path).stdout
    assert "added 1 granule(s) 2024-10-12T12:00:00" in out
    assert "up to date (2 granule(s)" in run_cli("sync", cwd=tmp_path).stdout

    log = json.loads(run_cli("log", "--json", cwd=tmp_path).stdout)
    assert [e["tags"] for e in log] == [[], ["day1"], []]
    assert [e["granules"] for e in log] == [1, 1, 0]
    keyed = json.loads(run_cli("log", "--json", "--keys", cwd=tmp_path).stdout)
    assert [e["keys"] for e in keyed] == [[GAMSSA[1].name], [GAMSSA[0].name], []]

    status = json.loads(run_cli("status", "--json", cwd=tmp_path).stdout)
    assert status["counts"] == {"committed": 2} and status["length"] == 2
    assert status["start"] == "2024-10-11T12:00:00" and status["end"] == "2024-10-12T12:00:00"

    opened = json.loads(run_cli("open", "--at", "day1", "--json", cwd=tmp_path).stdout)
    assert opened["dims"]["time"] == 1
    assert (
        json.loads(run_cli("open", "--export", "--json", cwd=tmp_path).stdout)["dims"]["time"] == 2
    )

    run_cli("export", "--at", "day1", "--format", "json", "-o", "day1.json", cwd=tmp_path)
    refs = json.loads((tmp_path / "day1.json").read_text())
    assert "analysed_sst/0.0.0" in refs["refs"] and "analysed_sst/1.0.0" not in refs["refs"]
    # the config can also come before the command, from another folder
    other = tmp_path / "elsewhere"
    other.mkdir()
    run_cli("--config", str(tmp_path / "refstore.toml"), "status", cwd=other)


def test_errors_are_one_line_with_hint_and_exit_code(tmp_path: Path) -> None:
    (tmp_path / "refstore.toml").write_text('[dataset]\nconcat_dim = "time"\nbogus = 1\n')
    proc = run_cli("sync", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("refstore: error: ") and "bogus" in lines[0]
    assert lines[1].startswith("  hint: ") and "Traceback" not in proc.stderr

    (tmp_path / "refstore.toml").write_text(
        '[dataset]\nconcat_dim = "time"\n[source]\nurl = "nowhere"\n'
    )
    proc = run_cli("sync", cwd=tmp_path, check=False)
    assert proc.returncode == 3 and "Source folder" in proc.stderr

    proc = run_cli("open", "--at", "2020-01-01", cwd=tmp_path, check=False)
    assert proc.returncode == 6 and "No Icechunk repository" in proc.stderr


def test_bad_ref_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    shutil.copy2(GAMSSA[0], tmp_path / "incoming")
    run_cli("init", "--source", "incoming", cwd=tmp_path)
    run_cli("sync", cwd=tmp_path)
    proc = run_cli("open", "--at", "not-a-ref", cwd=tmp_path, check=False)
    assert proc.returncode == 6
    assert "No snapshot, tag or date matches 'not-a-ref'" in proc.stderr
    assert "refstore log" in proc.stderr


def test_concurrent_sync_is_refused_clearly(tmp_path: Path) -> None:
    from filelock import FileLock

    (tmp_path / "incoming").mkdir()
    shutil.copy2(GAMSSA[0], tmp_path / "incoming")
    run_cli("init", "--source", "incoming", cwd=tmp_path)
    with FileLock(str(tmp_path / "state" / "ledger.db.lock")):
        proc = run_cli("sync", cwd=tmp_path, check=False)
    assert proc.returncode == 7 and "Another refstore process" in proc.stderr
    assert not (tmp_path / "state" / "repo").exists()
