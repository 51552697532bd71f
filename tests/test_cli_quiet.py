"""A fast and quiet CLI: light imports, no third-party noise by default, `-v` shows it,
`--log-json` writes one JSON object per line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import GAMSSA, run_cli

HEAVY = ("numpy", "xarray", "zarr", "icechunk", "virtualizarr", "sqlite_utils", "pandas")


def test_importing_the_cli_imports_nothing_heavy() -> None:
    code = f"import sys, refstore.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_sqlite_utils_without_pandas_then_pandas_still_imports(tmp_path: Path) -> None:
    code = (
        "import sys; from refstore.clilog import import_sqlite_utils_lightly as f; f(); "
        "assert 'pandas' not in sys.modules and 'sqlite_utils.db' in sys.modules; "
        "from refstore.ledger import Ledger; "
        f"Ledger({str(tmp_path / 'l.db')!r}).set_meta('k', 'v'); "
        "assert 'pandas' not in sys.modules; import pandas, xarray; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_opening_the_ledger_scans_no_plugin_entry_points(tmp_path: Path) -> None:
    # sqlite-utils looks up plugins through every installed package's entry points
    # unless told not to: a fixed cost of each command that opens the ledger.
    code = (
        "import sys; from refstore.ledger import Ledger; "
        f"Ledger({str(tmp_path / 'l.db')!r}).close(); "
        f"Ledger({str(tmp_path / 'l.db')!r}, readonly=True).close(); "
        "import sqlite_utils.plugins as p; print(p._plugins_loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_known_warnings_are_filtered_unless_verbose() -> None:
    code = (
        "import warnings; from refstore.clilog import configure; "
        "configure(verbose={v}, log_json=False); "
        "warnings.warn('The data type (|S1) does not have a Zarr V3 specification. x', "
        "FutureWarning); warnings.warn('something else', UserWarning)"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", code.format(v=False)], capture_output=True, text=True, check=True
    )
    assert "Zarr V3" not in quiet.stderr and "something else" in quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-c", code.format(v=True)], capture_output=True, text=True, check=True
    )
    assert "Zarr V3" in loud.stderr


def test_a_normal_sync_prints_no_third_party_warning(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    shutil.copy2(GAMSSA[0], tmp_path / "incoming")
    run_cli("init", "--source", "incoming", cwd=tmp_path)
    quiet = run_cli("sync", cwd=tmp_path)
    assert quiet.stderr == ""
    shutil.copy2(GAMSSA[1], tmp_path / "incoming")
    loud = run_cli("-v", "sync", cwd=tmp_path)
    assert "LocalFileSystem storage is not safe" in loud.stderr  # -v shows what was hidden
    events = run_cli("--log-json", "sync", cwd=tmp_path).stderr.splitlines()
    parsed = [json.loads(line) for line in events]
    assert [e["event"] for e in parsed] == ["sync finished"] and parsed[0]["up_to_date"]
    proc = run_cli("--log-json", "open", "--at", "nope", cwd=tmp_path, check=False)
    error = json.loads(proc.stderr)
    assert proc.returncode == 6 and error["exit_code"] == 6 and error["hint"]
