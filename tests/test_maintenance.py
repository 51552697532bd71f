"""`refstore gc` on real Icechunk repositories: the retention policy, tags that still
open what they held, layouts kept by the ledger, a kill between every step, and
`open --at` of what was expired (exit 6)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import refstore
from refstore.api import open_store
from refstore.config import Config, load_config, render_toml
from refstore.errors import ConfigError
from refstore.ledger import Ledger
from refstore.listing import list_granules
from refstore.maintenance import (
    Policy,
    SnapshotEntry,
    gc,
    plan_expiry,
    stale_export_versions,
)
from refstore.synthetic import write_ccmp_like_series
from refstore.verify import verify
from tests.conftest import run_cli
from tests.helpers import assert_same_values, direct_read

TAGS = {2: "v2", 4: "v4"}  # sync number -> tag


def _store(tmp_path: Path, n: int = 7) -> tuple[Config, list[Path], dict[str, list[Path]]]:
    """n one-granule syncs (tags after some), then a late granule rewriting the tail."""
    files = write_ccmp_like_series(
        tmp_path / "archive", datetime(2024, 1, 1), n + 1, nlat=4, nlon=8
    )
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    text = render_toml(source_url="incoming") + '[sync]\nexecutor = "serial"\n'
    (tmp_path / "refstore.toml").write_text(text)
    config = load_config(tmp_path / "refstore.toml", environ={})
    held: dict[str, list[Path]] = {}
    order = [*files[:3], *files[4:], files[3]]  # files[3] arrives last, late
    for i, f in enumerate(order, start=1):
        (incoming / f.name).write_bytes(f.read_bytes())
        refstore.sync(config, tag=TAGS.get(i))
        if i in TAGS:
            held[TAGS[i]] = sorted(order[:i])
    return config, files, held


def _assert_tags_open(config: Config, held: dict[str, list[Path]]) -> None:
    for tag, files in held.items():
        assert_same_values(refstore.open_dataset(config, at=tag).load(), direct_read(files))


def test_plan_expiry_keeps_last_n_recent_tags_and_root() -> None:
    now = datetime(2026, 1, 31, tzinfo=UTC)
    history = [
        SnapshotEntry(f"S{i}", now - timedelta(days=i), f"c{i}", {}, is_root=(i == 9))
        for i in range(10)
    ]  # newest first, S9 the root
    bound, expire, detached = plan_expiry(history, {"S6"}, Policy(keep_last=3, keep_days=4), now)
    assert bound == now - timedelta(days=4)  # the older of "4 days" and "3rd newest"
    assert [e.snapshot for e in expire] == ["S5", "S7", "S8"]
    assert [e.snapshot for e in detached] == ["S6"]
    bound, expire, _ = plan_expiry(history, set(), Policy(keep_last=6, keep_days=0), now)
    assert bound == now - timedelta(days=5) and [e.snapshot for e in expire] == ["S6", "S7", "S8"]
    assert plan_expiry(history, set(), Policy(keep_last=9, keep_days=0), now) == (None, [], [])


def test_gc_frees_what_the_policy_allows_and_tags_still_open(tmp_path: Path) -> None:
    config, files, held = _store(tmp_path, n=5)
    store = open_store(config)
    before = [c.snapshot for c, _ in store.log()]
    policy = Policy(keep_last=2, keep_days=0)

    dry = gc(config, policy, dry_run=True)
    assert [c.snapshot for c, _ in open_store(config).log()] == before  # nothing changed
    assert dry.manifests > 0 and dry.bytes > 0 and dry.objects_before == dry.objects_after

    report = gc(config, policy)
    assert [e["snapshot"] for e in report.expired] == [e["snapshot"] for e in dry.expired]
    assert len(report.expired) == len(before) - 2 - len(TAGS) - 1  # 2 kept, tags, root
    assert sorted(report.old_tags) == sorted(TAGS.values())
    assert report.collected["snapshots_deleted"] == len(report.expired)
    assert report.objects_after is not None and report.objects_before is not None
    assert report.objects_after < report.objects_before and report.bytes > 0
    after = [c.snapshot for c, _ in open_store(config).log()]
    assert after[:2] == before[:2] and len(after) < len(before)  # the 2 newest stay
    assert not {e["snapshot"] for e in report.expired} & set(after)
    assert report.oldest_available == after[-2]  # the root is not a dataset

    _assert_tags_open(config, held)
    assert_same_values(refstore.open_dataset(config).load(), direct_read(files))
    # the layout of the head and of each tag comes back whole from the ledger's copy
    for at in (None, "v2"):
        result = verify(config, sample=3, at=at, seed=1)
        assert result.ok and result.granules == (len(files) if at is None else 2)
    for tag, held_files in held.items():  # `ls --at` lists what each tag held
        assert [r.key for r in list_granules(config, at=tag)] == [f.name for f in held_files]
    with Ledger(config.ledger) as ledger:
        rows = ledger.expired()
    assert {r["state"] for r in rows} == {"expired", "kept"}
    assert all(json.loads(r["metadata"]) for r in rows if r["message"] != "Repository initialized")

    again = gc(config, policy)  # idempotent: nothing left to expire
    assert again.expired == [] and again.collected.get("snapshots_deleted", 0) == 0

    expired_id = report.expired[0]["snapshot"]
    proc = run_cli("open", "--at", expired_id, cwd=tmp_path, check=False)
    assert proc.returncode == 6, proc.stderr
    assert f"Snapshot {expired_id} was expired" in proc.stderr
    assert f"oldest still available is {after[-2]}" in proc.stderr


def _gc_proc(cwd: Path, fault: str | None, keep: str = "2") -> subprocess.CompletedProcess[str]:
    args = ["gc", "--keep-last", keep, "--keep-days", "0", "--json"]
    return run_cli(*args, cwd=cwd, env={"REFSTORE_FAULT": fault} if fault else None, check=False)


def _assert_valid_after_rerun(
    config: Config, files: list[Path], held: dict[str, list[Path]], keep: str = "2"
) -> dict[str, Any]:
    rerun = _gc_proc(Path(config.root), None, keep)
    assert rerun.returncode == 0, rerun.stderr
    with Ledger(config.ledger) as ledger:
        rows = ledger.expired()
    assert rows and not [r for r in rows if r["state"] == "pending"]
    _assert_tags_open(config, held)
    assert_same_values(refstore.open_dataset(config).load(), direct_read(files))
    result = verify(config, sample=4, seed=2)
    assert result.ok and result.granules == len(files)
    assert refstore.sync(config).up_to_date
    report: dict[str, Any] = json.loads(rerun.stdout)
    return report


def test_gc_killed_after_record_then_after_expire_then_rerun(tmp_path: Path) -> None:
    config, files, held = _store(tmp_path, n=5)
    for fault in ("gc-after-record", "gc-after-expire"):
        killed = _gc_proc(tmp_path, fault)
        assert killed.returncode == -9, killed.stderr
    # a policy that expires nothing more still collects what the killed run left unreachable
    report = _assert_valid_after_rerun(config, files, held, keep="10")
    assert report["expired"] == [] and report["collected"]["snapshots_deleted"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["gc-after-record", "gc-after-expire", "gc-after-collect"])
def test_gc_killed_at_each_step_then_rerun(tmp_path: Path, fault: str) -> None:
    config, files, held = _store(tmp_path, n=5)
    killed = _gc_proc(tmp_path, fault)
    assert killed.returncode == -9, killed.stderr
    _assert_valid_after_rerun(config, files, held)


def test_stale_export_versions_keep_published_and_recent_previous(tmp_path: Path) -> None:
    export = tmp_path / "refs.parquet"
    now = time.time()
    names = [f".refs.parquet.v{int((now - age) * 1e9):020d}-x" for age in (9000, 7200, 600)]
    for n in names:
        (tmp_path / n).mkdir()
    (tmp_path / ".refs.parquet.link-123").symlink_to(names[0])
    export.symlink_to(names[2])
    at = datetime.fromtimestamp(now, UTC)
    stale = {p.name for p in stale_export_versions(export, 1.0, at)}
    assert stale == {names[0], ".refs.parquet.link-123"}  # the previous one is 10 min old
    stale = {p.name for p in stale_export_versions(export, 0.1, at)}
    assert stale == {names[0], names[1], ".refs.parquet.link-123"}


def test_maintenance_config_and_flags(tmp_path: Path) -> None:
    text = render_toml(source_url="incoming") + "[maintenance]\nkeep_last = 5\nkeep_days = 1.5\n"
    (tmp_path / "refstore.toml").write_text(text)
    config = load_config(tmp_path / "refstore.toml", environ={})
    assert Policy.of(config) == Policy(keep_last=5, keep_days=1.5, export_grace_hours=1.0)
    assert Policy.of(config, keep_last=7, keep_days=None).keep_last == 7
    env = {"REFSTORE_MAINTENANCE_KEEP_LAST": "0"}
    with pytest.raises(ConfigError, match="keep_last"):
        load_config(tmp_path / "refstore.toml", environ=env)
